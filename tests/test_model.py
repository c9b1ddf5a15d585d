"""GauntMACE physics tests (float64, tiny models): symmetry, gradients, smoothness, batching."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from torch_geometric.data import Batch, Data

from forcefield.models import PRESETS, GauntMACE, build_model

R_MAX = 3.0
E0S = {1: -13.6, 6: -1029.5, 8: -2042.0, 29: -3.7}


def make_data(atoms: Atoms, r_max: float = R_MAX) -> Data:
    """The AtomicData contract's fields, from ASE's neighbour list ("ijS")."""
    i, j, shifts = neighbor_list("ijS", atoms, r_max)
    cell = np.array(atoms.cell) if atoms.cell.rank == 3 else np.zeros((3, 3))
    return Data(
        pos=torch.tensor(atoms.positions, dtype=torch.float64),
        atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.long),
        cell=torch.tensor(cell, dtype=torch.float64).reshape(1, 3, 3),
        pbc=torch.tensor(atoms.pbc).reshape(1, 3),
        natoms=torch.tensor([len(atoms)]),
        edge_index=torch.tensor(np.stack([i, j]), dtype=torch.long),
        cell_shifts=torch.tensor(shifts, dtype=torch.long),
    )


def batch_of(*atoms_list: Atoms) -> Batch:
    return Batch.from_data_list([make_data(a) for a in atoms_list])


def make_model(seed: int = 0, **overrides) -> GauntMACE:
    torch.manual_seed(seed)
    cfg = dict(
        species=[1, 6, 8, 29], r_max=R_MAX, channels=8, lmax=2, lmax_sh=2, correlation=3,
        num_interactions=2, num_radial=6, radial_mlp=[16, 16], readout_mlp=8,
        avg_num_neighbors=4.0, e0s=E0S, energy_shift=-0.7, energy_scale=1.3,
    )
    cfg.update(overrides)
    model = GauntMACE(**cfg).double()
    # make every learnable weight generic (not the structured initial values)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.0 + 0.3 * torch.randn_like(p))
        for readout in model.readouts:  # zero-initialised: give them generic values
            for p in readout.parameters():
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
        model.head.element_shift.copy_(0.1 * torch.randn_like(model.head.element_shift))
    return model


def random_molecule(seed: int = 1, n: int = 6) -> Atoms:
    rng = np.random.default_rng(seed)
    numbers = rng.choice([1, 6, 8], size=n)
    pos = rng.uniform(0, 2.6, size=(n, 3))
    return Atoms(numbers=numbers, positions=pos)


def periodic_cell(seed: int = 2) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 1)
    atoms.numbers[1] = 8
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0, 0.1, size=atoms.positions.shape)
    atoms.cell = np.array(atoms.cell) @ (np.eye(3) + rng.normal(0, 0.03, (3, 3)))
    return atoms


def random_orthogonal(seed: int, reflect: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if reflect else q


@pytest.fixture(scope="module")
def model() -> GauntMACE:
    return make_model()


def predict(model, atoms, **kw):
    out = model(batch_of(atoms), **kw)
    return {k: v.detach() for k, v in out.items()}


@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_reflection_invariance(model, reflect):
    atoms = random_molecule()
    ref = predict(model, atoms)
    q = random_orthogonal(3, reflect)
    moved = atoms.copy()
    moved.positions = atoms.positions @ q.T + np.array([0.3, -1.2, 5.0])
    out = predict(model, moved)
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=0, atol=1e-10)
    torch.testing.assert_close(
        out["forces"], ref["forces"] @ torch.tensor(q.T), rtol=0, atol=1e-10
    )


def test_periodic_rotation_and_stress_equivariance(model):
    atoms = periodic_cell()
    ref = predict(model, atoms, compute_stress=True)
    q = random_orthogonal(5, reflect=True)
    moved = atoms.copy()
    moved.set_cell(np.array(atoms.cell) @ q.T, scale_atoms=True)
    out = predict(model, moved, compute_stress=True)
    qt = torch.tensor(q)
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=0, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref["forces"] @ qt.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(out["stress"][0], qt @ ref["stress"][0] @ qt.T, rtol=0, atol=1e-10)


def test_permutation_equivariance(model):
    atoms = random_molecule(seed=4, n=7)
    ref = predict(model, atoms)
    perm = np.random.default_rng(0).permutation(len(atoms))
    out = predict(model, atoms[perm])
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=0, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref["forces"][perm], rtol=0, atol=1e-10)
    torch.testing.assert_close(out["node_energy"], ref["node_energy"][perm], rtol=0, atol=1e-10)


def energy_of(model, atoms) -> float:
    return float(model(batch_of(atoms), compute_forces=False)["energy"][0])


def test_forces_match_finite_differences(model):
    atoms = random_molecule(seed=6)
    forces = predict(model, atoms)["forces"].numpy()
    h = 1e-5
    fd = np.zeros_like(forces)
    for a in range(len(atoms)):
        for d in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, d] += h
            minus.positions[a, d] -= h
            fd[a, d] = -(energy_of(model, plus) - energy_of(model, minus)) / (2 * h)
    np.testing.assert_allclose(forces, fd, atol=1e-6, rtol=1e-6)


def test_periodic_forces_and_stress_match_finite_differences(model):
    atoms = periodic_cell()
    out = predict(model, atoms, compute_stress=True)
    h = 1e-5
    fd_stress = np.zeros((3, 3))
    volume = atoms.get_volume()
    cell0 = np.array(atoms.cell)
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] += sign * h / 2
                eps[b, a] += sign * h / 2
                strained = atoms.copy()
                strained.set_cell(cell0 @ (np.eye(3) + eps), scale_atoms=True)
                energies.append(energy_of(model, strained))
            fd_stress[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    np.testing.assert_allclose(out["stress"][0].numpy(), fd_stress, atol=1e-7)
    np.testing.assert_allclose(out["virial"][0].numpy(), -fd_stress * volume, atol=1e-6)
    assert np.abs(fd_stress).max() > 1e-4  # the check is not vacuous
    fd = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for d in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, d] += h
            minus.positions[i, d] -= h
            fd[i, d] = -(energy_of(model, plus) - energy_of(model, minus)) / (2 * h)
    np.testing.assert_allclose(out["forces"].numpy(), fd, atol=1e-6)


def test_no_stress_for_molecule(model):
    out = predict(model, random_molecule(), compute_stress=True)
    assert torch.all(out["stress"] == 0)


def test_smooth_across_cutoff(model):
    def at(distance: float):
        # O-H pair; a C atom on -x at `distance` from O (its distance to H is larger)
        atoms = Atoms(
            "OHC", positions=[[0.0, 0.0, 0.0], [0.0, 0.96, 0.0], [-distance, 0.0, 0.0]]
        )
        return predict(model, atoms)

    inside, outside = at(R_MAX - 1e-6), at(R_MAX + 1e-6)
    assert abs(float(inside["energy"][0] - outside["energy"][0])) < 1e-12
    torch.testing.assert_close(inside["forces"], outside["forces"], rtol=0, atol=1e-9)
    # and the interaction does something inside
    near = at(R_MAX - 0.5)
    assert abs(float(near["energy"][0] - outside["energy"][0])) > 1e-6
    assert float((near["forces"] - outside["forces"]).abs().max()) > 1e-6


def test_batch_equals_each_alone(model):
    structures = [random_molecule(seed=s, n=4 + s) for s in range(3)] + [periodic_cell()]
    batched = model(batch_of(*structures), compute_stress=True)
    offset = 0
    for k, atoms in enumerate(structures):
        alone = predict(model, atoms, compute_stress=True)
        n = len(atoms)
        torch.testing.assert_close(batched["energy"][k], alone["energy"][0], rtol=0, atol=1e-10)
        torch.testing.assert_close(
            batched["forces"][offset : offset + n], alone["forces"], rtol=0, atol=1e-10
        )
        torch.testing.assert_close(batched["stress"][k], alone["stress"][0], rtol=0, atol=1e-10)
        offset += n


def test_far_apart_copies_double_the_energy(model):
    atoms = random_molecule(seed=7)
    two = atoms + atoms.copy()
    two.positions[len(atoms) :] += np.array([20.0, 0.0, 0.0])
    e1 = predict(model, atoms)["energy"][0]
    e2 = predict(model, two)["energy"][0]
    torch.testing.assert_close(e2, 2 * e1, rtol=0, atol=1e-9)


@pytest.mark.parametrize("z", [1, 6, 8, 29])
def test_isolated_atom_gives_e0(model, z):
    out = predict(model, Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]))
    assert float(out["energy"][0]) == pytest.approx(E0S[z], abs=1e-12)
    assert torch.all(out["forces"] == 0)


def test_element_shift_moves_bonded_energies_only(model):
    """The head's learnable per-element shift b: dE/db[z] = scale * (bonded atoms of z),
    no force, and no effect on an isolated atom (which stays at its E0)."""
    mol = random_molecule(seed=4, n=7)
    lone = Atoms(numbers=[6], positions=[[0.0, 0.0, 0.0]])
    species = model.species
    original = model.head.element_shift.detach().clone()
    before = predict(model, mol)
    before_lone = predict(model, lone)
    b = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
    with torch.no_grad():
        model.head.element_shift.add_(b)
    try:
        after = predict(model, mol)
        after_lone = predict(model, lone)
    finally:
        with torch.no_grad():
            model.head.element_shift.copy_(original)
    counts = torch.tensor([float((mol.numbers == z).sum()) for z in species],
                          dtype=torch.float64)
    expected = model.config["energy_scale"] * float((b * counts).sum())
    assert float(after["energy"][0] - before["energy"][0]) == pytest.approx(expected, abs=1e-10)
    torch.testing.assert_close(after["forces"], before["forces"], rtol=0, atol=1e-12)
    assert float(after_lone["energy"][0]) == float(before_lone["energy"][0]) == E0S[6]


def test_float32_agrees_with_float64():
    m64 = make_model(seed=3)
    m32 = make_model(seed=3).float()
    m32.load_state_dict(m64.state_dict())
    m32.float()
    atoms = random_molecule(seed=8, n=8)
    o64 = predict(m64, atoms)
    o32 = predict(m32, atoms)
    assert o32["energy"].dtype == torch.float64  # energies accumulate in float64
    interaction = (o64["energy"] - sum(E0S[int(z)] for z in atoms.numbers)).abs()
    assert float((o32["energy"] - o64["energy"]).abs()) < 1e-5 * max(1.0, float(interaction))
    scale = float(o64["forces"].abs().max())
    torch.testing.assert_close(o32["forces"], o64["forces"], rtol=0, atol=1e-5 * max(scale, 1))


def test_training_keeps_graph_and_inference_does_not(model):
    data = batch_of(random_molecule())
    out = model(data, training=True)
    assert out["forces"].requires_grad
    loss = (out["forces"] ** 2).sum() + out["energy"].sum() ** 2 * 1e-6
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    model.zero_grad()
    plain = model(data)
    assert not plain["forces"].requires_grad and not plain["energy"].requires_grad
    no_forces = model(data, compute_forces=False)
    assert set(no_forces) == {"energy", "node_energy"}


def test_config_round_trip_and_unknown_species(model):
    cfg = json.loads(json.dumps(model.config))
    clone = GauntMACE(**cfg).double()
    clone.load_state_dict(model.state_dict())
    atoms = random_molecule()
    torch.testing.assert_close(predict(clone, atoms)["energy"], predict(model, atoms)["energy"])
    with pytest.raises(ValueError, match="Zn"):
        model(batch_of(Atoms("Zn", positions=[[0, 0, 0]])))
    with pytest.raises(ValueError, match="unknown model config key"):
        GauntMACE(**{**cfg, "chanels": 3})


def test_build_model_fills_statistics():
    stats = {
        "species": [1, 6, 8],
        "e0s": {1: -1.0, 6: -2.0, 8: -3.0},
        "avg_num_neighbors": 12.5,
        "mean_interaction_energy_per_atom": -0.25,
        "force_rms": 0.8,
    }
    m = build_model({"name": "gaunt_mace_small", "channels": 8}, stats)
    assert m.config["species"] == [1, 6, 8]
    assert m.config["channels"] == 8
    assert m.config["lmax"] == PRESETS["gaunt_mace_small"]["lmax"]
    assert m.config["avg_num_neighbors"] == 12.5
    assert m.config["energy_shift"] == -0.25 and m.config["energy_scale"] == 0.8
    assert m.config["e0s"] == {1: -1.0, 6: -2.0, 8: -3.0}
    json.dumps(m.config)
    assert set(PRESETS) == {"gaunt_mace", "gaunt_mace_small"}
    assert PRESETS["gaunt_mace"]["channels"] == 256 and PRESETS["gaunt_mace"]["correlation"] == 3


def test_no_e3nn_at_runtime():
    code = (
        "import sys, torch\n"
        "from ase import Atoms\n"
        "sys.path.insert(0, {!r})\n"
        "from test_model import make_model, batch_of, random_molecule\n"
        "m = make_model()\n"
        "out = m(batch_of(random_molecule()), compute_stress=True, training=True)\n"
        "out['forces'].sum().backward()\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('e3nn', 'mace'))\n"
        "print('BAD', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    ).format(str(__import__("pathlib").Path(__file__).parent))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
