"""TorchSim (``torch-sim-atomistic``) runs forcefield models: ForceFieldModel.

One batched call on 16 different systems (3BPA molecules in vacuum boxes, small periodic
boxes of packed molecules, one triclinic) gives each system's energy, forces and stress of
the ASE calculator to 1e-10 (float64), for GauntMACE (trained) and GauntEquiformerV2;
TorchSim molecules (``pbc=False``) too.  50 steps of TorchSim's batched NVE equal 16
separate ASE VelocityVerlet runs to 1e-8 A; TorchSim's FIRE relaxes a batch below fmax; a
``.pt2`` package (one call per system) gives the calculator's numbers; unknown elements and
direct-force models are one sentence each.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from helpers import trained_tiny_model

from forcefield import ForceFieldCalculator, ops
from forcefield.export import save_model

ts = pytest.importorskip("torch_sim", reason="TorchSim is not installed "
                         "(pip install torch-sim-atomistic)")

from forcefield.integrations.torch_sim import (  # noqa: E402
    ForceFieldModel,
    TorchSimInputError,
)

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

# TorchSim 0.3 warns about its own deprecated names when it reads them itself
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A trained tiny GauntMACE (3BPA elements), float64."""
    return save_model(tmp_path_factory.mktemp("ts") / "model.pt", trained_tiny_model())


@pytest.fixture(scope="module")
def calc(model_file) -> ForceFieldCalculator:
    return ForceFieldCalculator(model_file, dtype="float64")


def _packed_box(**kwargs) -> Atoms:
    return runpy.run_path(str(ROOT / "scripts" / "bench_md.py"))["packed_box"](**kwargs)


@pytest.fixture(scope="module")
def frames() -> list[Atoms]:
    return ase.io.read(ROOT / "data" / "3bpa" / "train_300K.xyz", ":8")


@pytest.fixture(scope="module")
def systems(frames) -> list[Atoms]:
    """16 different systems, all periodic (TorchSim's pbc is one value per state): seven
    3BPA molecules and a fragment in vacuum boxes of different sizes, seven boxes of 1-4
    packed molecules (most neighbours are periodic images), one triclinic box; 14 to 108
    atoms."""
    out = []
    for k, atoms in enumerate(frames):
        atoms = atoms[:14] if k == 7 else atoms.copy()  # and a 14-atom fragment
        atoms.cell = np.diag([17.0 + k, 18.0 + 0.5 * k, 19.0])
        atoms.pbc = True
        atoms.center()
        out.append(atoms)
    for seed, grid in enumerate([(1, 1, 1), (1, 1, 1), (1, 1, 2), (2, 1, 1), (1, 2, 1),
                                 (2, 2, 1), (3, 1, 1)]):
        out.append(_packed_box(grid=grid, seed=seed))
    triclinic = _packed_box(grid=(1, 1, 1), seed=9)
    triclinic.set_cell([[7.3, 0.0, 0.0], [1.1, 7.5, 0.0], [0.6, -0.8, 7.8]], scale_atoms=True)
    out.append(triclinic)
    assert len(out) == 16 and len({len(a) for a in out}) > 3
    return out


def reference(calc: ForceFieldCalculator, atoms: Atoms) -> dict[str, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
           "energies": atoms.get_potential_energies()}
    if atoms.pbc.any():
        out["stress"] = atoms.get_stress(voigt=False)
    return out


def assert_matches_calculator(out: dict, systems: list[Atoms], calc, tol: float) -> None:
    start = 0
    for b, atoms in enumerate(systems):
        want = reference(calc, atoms)
        stop = start + len(atoms)
        np.testing.assert_allclose(out["energy"][b].item(), want["energy"], rtol=0, atol=tol)
        np.testing.assert_allclose(out["forces"][start:stop].numpy(), want["forces"], rtol=0,
                                   atol=tol)
        if "energies" in out:
            np.testing.assert_allclose(out["energies"][start:stop].numpy(), want["energies"],
                                       rtol=0, atol=tol)
        if "stress" in want:
            np.testing.assert_allclose(out["stress"][b].numpy(), want["stress"], rtol=0,
                                       atol=tol)
        else:
            assert not out["stress"][b].any()
        start = stop


# ----------------------------------------------------------------------------- one call
def test_batch_of_16_equals_the_calculator(model_file, calc, systems):
    model = ForceFieldModel(model_file, per_atom_energies=True)
    state = ts.io.atoms_to_state(systems, CPU, torch.float64)
    out = model(state)
    n_atoms = sum(len(a) for a in systems)
    assert out["energy"].shape == (16,) and out["forces"].shape == (n_atoms, 3)
    assert out["stress"].shape == (16, 3, 3) and out["energies"].shape == (n_atoms,)
    assert all(v.dtype == torch.float64 for v in out.values())
    assert_matches_calculator(out, systems, calc, 1e-10)
    # the state is not changed, and one system alone gives its share of the batch
    single = model(ts.io.atoms_to_state(systems[9], CPU, torch.float64))
    np.testing.assert_allclose(single["energy"].item(), out["energy"][9].item(), atol=1e-10)


def test_molecules_without_periodicity(model_file, calc, frames):
    """TorchSim molecules (pbc False, ASE's zero cell): the calculator's energies and
    forces, zero stress."""
    molecules = [a.copy() for a in frames[:4]]
    for atoms in molecules:
        atoms.cell = np.zeros((3, 3))
    state = ts.io.atoms_to_state(molecules, CPU, torch.float64)
    assert not bool(torch.as_tensor(state.pbc).any())
    out = ForceFieldModel(model_file)(state)
    assert_matches_calculator(out, molecules, calc, 1e-10)


def test_float32(model_file, systems):
    float64 = ForceFieldModel(model_file)(ts.io.atoms_to_state(systems[6:10], CPU,
                                                                torch.float64))
    model = ForceFieldModel(model_file, dtype="float32")
    out = model(ts.io.atoms_to_state(systems[6:10], CPU, torch.float32))
    assert model.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out.values())
    np.testing.assert_allclose(out["energy"].double(), float64["energy"], rtol=1e-6)
    np.testing.assert_allclose(out["forces"].double(), float64["forces"], atol=2e-4)
    np.testing.assert_allclose(out["stress"].double(), float64["stress"], atol=2e-5)


def test_equiformer_v2(systems, calc, tmp_path):
    from test_equiformer import make_eqv2

    e0s = {1: -13.6, 6: -1029.5, 7: -1484.9, 8: -2042.0}
    path = save_model(tmp_path / "eqv2.pt", make_eqv2(species=[1, 6, 7, 8], e0s=e0s))
    batch = [systems[0], systems[8], systems[11], systems[15]]
    out = ForceFieldModel(path)(ts.io.atoms_to_state(batch, CPU, torch.float64))
    assert_matches_calculator(out, batch, ForceFieldCalculator(path, dtype="float64"), 1e-10)


def test_system_index_of_older_releases(model_file, systems):
    """TorchSim 0.2 called the system index ``batch``; a mapping state works too."""
    state = ts.io.atoms_to_state(systems[6:9], CPU, torch.float64)
    fields = {"positions": state.positions, "cell": state.cell, "pbc": state.pbc,
              "atomic_numbers": state.atomic_numbers}
    model = ForceFieldModel(model_file)
    want = model(state)
    got = model({**fields, "batch": state.system_idx})
    np.testing.assert_array_equal(got["energy"], want["energy"])
    np.testing.assert_array_equal(got["forces"], want["forces"])


def test_periodic_in_two_axes(model_file, calc, systems):
    """A slab (periodic along a and b): the state of TorchSim >= 0.5 carries pbc per axis."""
    slab = systems[11].copy()
    slab.pbc = [True, True, False]
    state = ts.io.atoms_to_state([slab], CPU, torch.float64)
    fields = {"positions": state.positions, "cell": state.cell, "system_idx": state.system_idx,
              "atomic_numbers": state.atomic_numbers, "pbc": torch.tensor([True, True, False])}
    assert_matches_calculator(ForceFieldModel(model_file)(fields), [slab], calc, 1e-10)


def test_energy_only(model_file, systems):
    """compute_forces and compute_stress off (and switched back on, as TorchSim's cell
    filters do): the same energies."""
    state = ts.io.atoms_to_state(systems[6:9], CPU, torch.float64)
    model = ForceFieldModel(model_file, compute_stress=False, compute_forces=False)
    energy_only = model(state)
    assert set(energy_only) == {"energy"}
    model.compute_forces = model.compute_stress = True
    full = model(state)
    assert set(full) == {"energy", "forces", "stress"}
    np.testing.assert_allclose(energy_only["energy"], full["energy"], rtol=0, atol=1e-10)


def test_torch_sim_validator(tmp_path):
    """TorchSim's own interface check (Si and Fe cells in 0.3, Si, Mg and Fe in 0.6; one
    and several systems)."""
    from torch_sim.models.interface import validate_model_outputs

    species = (1, 6, 7, 8, 12, 14, 26)
    path = save_model(tmp_path / "metals.pt", trained_tiny_model(species, steps=5))
    validate_model_outputs(ForceFieldModel(path), CPU, torch.float64)


# ----------------------------------------------------------------------------- errors
def test_unknown_element_is_one_sentence(model_file, systems):
    iron = systems[6].copy()
    iron.numbers[[3, 5]] = [26, 14]
    state = ts.io.atoms_to_state([systems[0], iron], CPU, torch.float64)
    with pytest.raises(TorchSimInputError) as err:
        ForceFieldModel(model_file)(state)
    message = str(err.value)
    assert "Si (Z=14), Fe (Z=26)" in message and "system 1" in message
    assert "H, C, N, O" in message and "\n" not in message


def test_direct_force_model_is_refused(tmp_path):
    from test_equiformer import make_eqv2

    from forcefield.direct_forces import DirectForcesError, DirectForcesWarning

    path = save_model(tmp_path / "direct.pt", make_eqv2(forces="direct"))
    with pytest.raises(DirectForcesError, match="model.forces=gradient"):
        ForceFieldModel(path)
    with pytest.warns(DirectForcesWarning):
        assert ForceFieldModel(path, allow_direct_forces=True).direct_forces


# ----------------------------------------------------------------------------- dynamics
def _nve(model: ForceFieldModel, dt: float):
    """TorchSim's NVE (velocity Verlet) as (init, step), in the API of the installed
    release: ``nve_init`` / ``nve_step`` functions (>= 0.4) or the ``nve`` factory."""
    dt_, kt = torch.tensor(dt, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    if hasattr(ts, "nve_init"):
        return (lambda state: ts.nve_init(state, model, kT=kt),
                lambda state: ts.nve_step(state, model, dt=dt_))
    init, step = ts.integrators.nve(model, dt=dt_, kT=kt)
    return init, step


def test_nve_batch_equals_separate_ase_runs(model_file, calc, systems):
    from ase import units
    from ase.md import velocitydistribution

    # ASE 3.29 renamed MaxwellBoltzmannDistribution (same arguments)
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or \
        velocitydistribution.MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    # TorchSim's metal units are ASE's (dt in ASE time); a float64 dt: torch.tensor(dt)
    # alone is float32 and puts the trajectories 1e-8 A apart after 50 steps
    steps, dt = 50, 0.5 * units.fs
    starts = []
    for k, atoms in enumerate(systems):
        atoms = atoms.copy()
        thermalize(atoms, temperature_K=300, rng=np.random.default_rng(k))
        starts.append(atoms)
    initial = [a.positions.copy() for a in starts]
    init, step = _nve(ForceFieldModel(model_file), dt)
    state = init(ts.io.atoms_to_state(starts, CPU, torch.float64))
    state.momenta = torch.as_tensor(np.concatenate([a.get_momenta() for a in starts]))
    for _ in range(steps):
        state = step(state)
    final = state.positions.numpy()
    start = 0
    for atoms, before in zip(starts, initial, strict=True):
        atoms.calc = calc
        VelocityVerlet(atoms, timestep=dt).run(steps)
        stop = start + len(atoms)
        # TorchSim wraps periodic positions back into the cell; ASE does not
        delta = final[start:stop] - atoms.positions
        frac = np.linalg.solve(atoms.cell.array.T, delta.T).T
        delta -= np.round(frac) @ atoms.cell.array
        assert np.abs(delta).max() < 1e-8
        assert np.abs(atoms.positions - before).max() > 1e-3  # it moved
        start = stop
    np.testing.assert_allclose(state.momenta[: len(starts[0])].numpy(),
                               starts[0].get_momenta(), rtol=0, atol=1e-8)


def test_nvt_langevin_runs_a_batch(model_file, frames):
    """TorchSim's Langevin NVT through its high-level runner (temperature in K, timestep in
    ps): finite energies, the molecules moved, a kinetic temperature near 300 K."""
    model = ForceFieldModel(model_file, compute_stress=False)
    nvt = ts.Integrator.nvt_langevin if hasattr(ts, "Integrator") else ts.nvt_langevin
    final = ts.integrate(frames[:4], model, integrator=nvt, n_steps=20, temperature=300,
                         timestep=0.0005)
    assert final.n_systems == 4 and bool(torch.isfinite(final.energy).all())
    start = torch.as_tensor(np.concatenate([a.positions for a in frames[:4]]))
    assert float((final.positions - start).abs().max()) > 1e-3
    kinetic = 0.5 * (final.momenta**2 / final.masses[:, None]).sum()
    temperature = 2 * float(kinetic) / (3 * final.n_atoms * 8.617333262e-5)
    assert 100 < temperature < 600


def test_fire_relaxes_a_batch_below_fmax(model_file, frames):
    fmax = 0.05
    rng = np.random.default_rng(0)
    batch = []
    for atoms in frames[:4]:
        atoms = atoms.copy()
        atoms.cell = np.zeros((3, 3))
        atoms.positions += 0.05 * rng.normal(size=atoms.positions.shape)
        batch.append(atoms)
    model = ForceFieldModel(model_file, compute_stress=False)
    state = ts.io.atoms_to_state(batch, CPU, torch.float64)
    if hasattr(ts, "fire_init"):  # TorchSim >= 0.4
        state = ts.fire_init(state, model)

        def step(s):
            return ts.fire_step(s, model)
    else:
        init, step = ts.optimizers.fire(model)
        state = init(state)
    start = [float(torch.linalg.vector_norm(state.forces[state.system_idx == b], dim=1).max())
             for b in range(4)]
    for _ in range(1000):
        state = step(state)
        norms = torch.linalg.vector_norm(state.forces, dim=1)
        worst = torch.zeros(4, dtype=norms.dtype).scatter_reduce(
            0, state.system_idx, norms, reduce="amax")
        if bool((worst < fmax).all()):
            break
    assert min(start) > 10 * fmax and bool((worst < fmax).all()), worst
    # the relaxed forces are the model's at the relaxed positions
    check = ForceFieldModel(model_file, compute_stress=False)(state)
    np.testing.assert_allclose(check["forces"], state.forces, atol=1e-12)


def test_cell_relaxation_follows_the_stress_sign(model_file):
    """TorchSim's Frechet cell filter reads ``virial = -volume * (stress + pressure)``: with
    the model's stress (ASE's sign) a box under positive pressure expands and its pressure
    falls towards zero; the opposite sign would shrink it and raise the pressure."""
    box = _packed_box(grid=(1, 1, 2), seed=2)
    model = ForceFieldModel(model_file)
    state = ts.io.atoms_to_state([box], CPU, torch.float64)
    if hasattr(ts, "fire_init"):  # TorchSim >= 0.4
        state = ts.fire_init(state, model, cell_filter=ts.CellFilter.frechet)

        def step(s):
            return ts.fire_step(s, model)
    else:
        init, step = ts.optimizers.frechet_cell_fire(model)
        state = init(state)

    def pressure(s) -> float:
        return -float(torch.diagonal(s.stress[0]).mean())

    energy, p_start, volume = float(state.energy[0]), pressure(state), float(box.get_volume())
    for _ in range(100):
        state = step(state)
    assert p_start > 5e-3  # about 2 GPa
    assert abs(pressure(state)) < 0.1 * p_start
    assert float(torch.det(state.cell[0])) > volume + 1.0
    assert float(state.energy[0]) < energy


# ----------------------------------------------------------------------------- .pt2
@pytest.mark.slow
@pytest.mark.skipif(not ops.available(), reason="operator library not built")
def test_pt2_package_called_once_per_system(slab_model, slab_package, systems):
    """A .pt2 package (the session's shared build) takes one structure per call; the batch
    gives the calculator's energies, forces and stress."""
    calc = ForceFieldCalculator(slab_model)
    model = ForceFieldModel(slab_package, dtype=None)
    assert model.one_structure_per_call and model.dtype == torch.float64
    batch = [systems[1], systems[7], systems[10], systems[15]]
    out = model(ts.io.atoms_to_state(batch, CPU, torch.float64))
    assert_matches_calculator(out, batch, calc, 1e-10)
