"""GauntEquiformerV2 and its nn blocks (float64, tiny models): Wigner-D, SO(2) convolution,
Gaunt selfmix, block equivariance, and the whole model's physics contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from test_model import batch_of, random_molecule, random_orthogonal

from forcefield import so3
from forcefield.models import GauntEquiformerV2, build_model
from forcefield.models.gaunt_equiformer_v2 import nearest_neighbours
from forcefield.nn import (
    EdgeRotation,
    EquivariantLayerNorm,
    GauntSelfmix,
    GraphAttention,
    GridFeedForward,
    SO2Convolution,
    WignerD,
    edge_frame,
)

R_MAX = 3.0
E0S = {1: -13.6, 6: -1029.5, 8: -2042.0, 29: -3.7}
#: S2 grids this fine make the pointwise activations equivariant to ~1e-9 at lmax 2
#: (measured 1e-10 energy / 1e-9 force errors; aliasing falls fast with the degree),
#: so the whole-model tests can use tight tolerances; exact parts are tested at 1e-12.
FINE_GRID = 40
TOL = 1e-7


def make_eqv2(seed: int = 0, **overrides) -> GauntEquiformerV2:
    """A tiny float64 model with every weight made generic (no zero-initialised parts)."""
    torch.manual_seed(seed)
    cfg = dict(architecture="gaunt_equiformer_v2", species=[1, 6, 8, 29], r_max=R_MAX,
               num_layers=2, channels=8, lmax=2, mmax=1, heads=2, attn_hidden=8,
               alpha_channels=4, value_channels=4, ffn_hidden=8, edge_channels=8,
               num_radial=8, grid_degree=FINE_GRID, forces="gradient", alpha_drop=0.0,
               drop_path=0.0, avg_num_neighbors=4.0, e0s=E0S, energy_shift=-0.5,
               energy_scale=1.3)
    cfg.update(overrides)
    model = build_model(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def rotation(seed: int) -> torch.Tensor:
    return torch.tensor(random_orthogonal(seed, reflect=False))


def wigner(lmax: int, q: torch.Tensor) -> torch.Tensor:
    return WignerD(lmax)(q[None])[0]


# ----------------------------------------------------------------------------- Wigner-D
def test_wigner_d_is_an_orthogonal_representation_acting_on_spherical_harmonics():
    lmax = 4
    q1, q2 = rotation(1), rotation(2)
    d1, d2, d12 = wigner(lmax, q1), wigner(lmax, q2), wigner(lmax, q1 @ q2)
    torch.testing.assert_close(d12, d1 @ d2, rtol=0, atol=1e-12)
    eye = torch.eye((lmax + 1) ** 2, dtype=torch.float64)
    torch.testing.assert_close(d1 @ d1.T, eye, rtol=0, atol=1e-12)
    r = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(so3.spherical_harmonics(lmax, r @ q1.T),
                               so3.spherical_harmonics(lmax, r) @ d1.T, rtol=0, atol=1e-12)
    # inversion: (-1)^l on each degree (features have spherical-harmonic parity)
    parity = (-1.0) ** so3.degree_index(lmax).to(torch.float64)
    torch.testing.assert_close(wigner(lmax, -eye[:3, :3]), torch.diag(parity), rtol=0,
                               atol=1e-12)


def test_wigner_d_matches_e3nn():
    o3 = pytest.importorskip("e3nn.o3")
    lmax = 6
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds its J matrices in the default dtype
    try:
        for seed in range(3):
            q = rotation(seed)
            expected = o3.Irreps.spherical_harmonics(lmax).D_from_matrix(q)
            torch.testing.assert_close(wigner(lmax, q), expected, rtol=0, atol=1e-11)
    finally:
        torch.set_default_dtype(default)


def test_edge_frame_maps_edges_to_the_polar_axis_with_finite_gradients():
    axis = torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [1e-9, -2.0, 0.0],
                         [0.0, 1.5, -1e-12], [1.0, 0.0, 0.0], [0.3, -0.2, 0.9]],
                        dtype=torch.float64, requires_grad=True)
    frame = edge_frame(axis)
    unit = axis / axis.norm(dim=-1, keepdim=True)
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(len(axis), 3)
    torch.testing.assert_close((frame @ unit.unsqueeze(-1)).squeeze(-1), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(frame @ frame.transpose(1, 2),
                               torch.eye(3, dtype=torch.float64).expand(len(axis), 3, 3),
                               rtol=0, atol=1e-12)
    assert torch.allclose(torch.linalg.det(frame), torch.ones(len(axis), dtype=torch.float64))
    d = EdgeRotation(4, 2)(axis)
    (grad,) = torch.autograd.grad(d.pow(3).sum(), axis, create_graph=True)
    (grad2,) = torch.autograd.grad(grad.pow(2).sum(), axis)
    assert torch.isfinite(grad).all() and torch.isfinite(grad2).all()
    generic = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: EdgeRotation(2, 1)(v), (generic,))


@pytest.mark.parametrize("parity", [True, False])
def test_so2_convolution_is_invariant_to_rolls_about_the_edge(parity):
    lmax, mmax = 3, 2
    torch.manual_seed(0)
    rot = EdgeRotation(lmax, mmax)
    conv = SO2Convolution(3, 4, lmax, mmax, extra_scalars=5, radial=True, parity=parity).double()
    vec = torch.randn(6, 3, dtype=torch.float64)
    x = torch.randn(6, 3, (lmax + 1) ** 2, dtype=torch.float64)
    radial = torch.randn(6, conv.num_radial_weights, dtype=torch.float64)
    frame = edge_frame(vec)
    outs = []
    for angle in (0.0, 0.7, 2.9):
        c, s = math.cos(angle), math.sin(angle)
        roll = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
        d = WignerD(lmax, rot.index)(roll @ frame)
        y, extra = conv(rot.rotate(x, d), radial)
        outs.append((rot.rotate_back(y, d), extra))
    for y, extra in outs[1:]:
        torch.testing.assert_close(y, outs[0][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(extra, outs[0][1], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- selfmix
def test_selfmix_equals_a_dense_gaunt_contraction_and_is_equivariant():
    lmax, c = 3, 4
    torch.manual_seed(1)
    mix = GauntSelfmix(c, lmax).double()
    with torch.no_grad():
        mix.linear_out.weight.normal_()
    h = torch.randn(5, c, (lmax + 1) ** 2, dtype=torch.float64)
    g = torch.as_tensor(so3.gaunt_coefficients(lmax, lmax, lmax))
    u, v = mix.linear_a(h), mix.linear_b(h)
    dense = torch.einsum("nci,ncj,ijk->nck", u, v, g) * mix._tables.get(u)["norm"]
    torch.testing.assert_close(mix(h), mix.linear_out(dense), rtol=0, atol=1e-12)
    for reflect in (False, True):
        q = torch.tensor(random_orthogonal(4, reflect))
        d = wigner(lmax, q)
        torch.testing.assert_close(mix(h @ d.T), mix(h) @ d.T, rtol=0, atol=1e-12)


def test_zero_initialised_selfmix_gives_the_plain_equiformer():
    atoms = random_molecule()
    with_mix = make_eqv2(selfmix=True)
    with torch.no_grad():
        for block in with_mix.blocks:  # as initialised: a zero output linear
            block.selfmix.linear_out.weight.zero_()
    plain = build_model(dict(with_mix.config, selfmix=False)).double().eval()
    missing = plain.load_state_dict(with_mix.state_dict(), strict=False)
    assert missing.missing_keys == []
    assert missing.unexpected_keys and all("selfmix" in k for k in missing.unexpected_keys)
    a, b = with_mix(batch_of(atoms)), plain(batch_of(atoms))
    torch.testing.assert_close(a["energy"], b["energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(a["forces"], b["forces"], rtol=0, atol=1e-12)
    # and the selfmix does change the model once its output linear is trained
    with torch.no_grad():
        for block in with_mix.blocks:
            block.selfmix.linear_out.weight.normal_()
    assert (with_mix(batch_of(atoms))["energy"] - b["energy"]).abs().item() > 1e-4


# ----------------------------------------------------------------------------- blocks
def test_node_blocks_are_equivariant():
    lmax, c = 3, 4
    torch.manual_seed(2)
    h = torch.randn(6, c, (lmax + 1) ** 2, dtype=torch.float64)
    q = torch.tensor(random_orthogonal(7, reflect=True))
    d = wigner(lmax, q)
    norm = EquivariantLayerNorm(c, lmax).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    torch.testing.assert_close(norm(h @ d.T), norm(h) @ d.T, rtol=0, atol=1e-12)
    # grid MLP: exact linear parts, pointwise SiLU on a degree-48 quadrature: measured
    # aliasing 1e-10 relative at lmax 3, so 1e-8 is a bound with margin; on a coarse grid
    # (degree 11 = 3 lmax + 2, the default) the error is visible (~1e-3)
    fine = GridFeedForward(c, 8, c, lmax, grid_degree=48).double()
    out = fine(h)
    bound = 1e-8 * float(out.abs().max())
    torch.testing.assert_close(fine(h @ d.T), out @ d.T, rtol=0, atol=bound)
    coarse = GridFeedForward(c, 8, c, lmax, grid_degree=3 * lmax + 2).double()
    coarse.load_state_dict(fine.state_dict())
    err = (coarse(h @ d.T) - coarse(h) @ d.T).abs().max()
    assert 1e-8 < err < 0.1 * coarse(h).abs().max()


def test_graph_attention_is_equivariant():
    lmax, mmax, c = 2, 2, 4
    torch.manual_seed(5)
    att = GraphAttention(channels=c, channels_out=3, lmax=lmax, mmax=mmax, hidden=6, heads=2,
                         alpha_channels=3, value_channels=2, edge_features=5,
                         radial_hidden=[8], grid_degree=FINE_GRID).double()
    rot = EdgeRotation(lmax, mmax)
    n, sender = 5, torch.tensor([0, 1, 2, 3, 4, 0, 2])
    receiver = torch.tensor([1, 0, 0, 0, 0, 3, 4])
    pos = torch.randn(n, 3, dtype=torch.float64)
    h = torch.randn(n, c, (lmax + 1) ** 2, dtype=torch.float64)
    feats = torch.randn(len(sender), 5, dtype=torch.float64)
    env = torch.rand(len(sender), dtype=torch.float64)

    def run(p, x):
        vec = p[sender] - p[receiver]
        return att(x, feats, rot, rot(vec), env, sender, receiver)

    q = torch.tensor(random_orthogonal(8, reflect=True))
    d = wigner(lmax, q)
    out = run(pos, h)
    torch.testing.assert_close(run(pos @ q.T, h @ d.T), out @ d.T, rtol=0,
                               atol=TOL * float(out.abs().max()))


# ----------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def gradient_model() -> GauntEquiformerV2:
    return make_eqv2(forces="gradient")


@pytest.fixture(scope="module")
def direct_model() -> GauntEquiformerV2:
    return make_eqv2(forces="direct")


def predict(model, *atoms, **kw):
    return {k: v.detach() for k, v in model(batch_of(*atoms), **kw).items()}


@pytest.mark.parametrize("forces", ["gradient", "direct"])
@pytest.mark.parametrize("reflect", [False, True])
def test_energy_invariant_and_forces_equivariant(gradient_model, direct_model, forces, reflect):
    model = gradient_model if forces == "gradient" else direct_model
    atoms = random_molecule()
    ref = predict(model, atoms)
    q = random_orthogonal(3, reflect)
    moved = atoms.copy()
    moved.positions = atoms.positions @ q.T + np.array([0.3, -1.2, 5.0])
    out = predict(model, moved)
    assert ref["forces"].abs().max() > 0.1  # not trivially zero
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=0, atol=TOL)
    torch.testing.assert_close(out["forces"], ref["forces"] @ torch.tensor(q.T), rtol=0,
                               atol=TOL)


def test_permutation_and_batching(gradient_model, direct_model):
    a, b = random_molecule(1, 6), random_molecule(4, 5)
    for model in (gradient_model, direct_model):
        together = predict(model, a, b)
        alone = [predict(model, a), predict(model, b)]
        torch.testing.assert_close(together["energy"],
                                   torch.cat([alone[0]["energy"], alone[1]["energy"]]),
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(together["forces"],
                                   torch.cat([alone[0]["forces"], alone[1]["forces"]]),
                                   rtol=0, atol=1e-10)
        perm = np.random.default_rng(0).permutation(len(a))
        shuffled = predict(model, a[perm])
        torch.testing.assert_close(shuffled["energy"], alone[0]["energy"], rtol=0, atol=1e-10)
        torch.testing.assert_close(shuffled["forces"], alone[0]["forces"][perm], rtol=0,
                                   atol=1e-10)


def periodic_cell(seed: int = 2) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[1] = 8
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0, 0.1, size=atoms.positions.shape)
    atoms.cell = np.array(atoms.cell) @ (np.eye(3) + rng.normal(0, 0.03, (3, 3)))
    return atoms


def test_periodic_images_and_supercell(gradient_model):
    atoms = periodic_cell()
    one = predict(gradient_model, atoms, compute_stress=True)
    shifted = atoms.copy()
    shifted.positions[2] += shifted.cell[0] - shifted.cell[2]  # the same crystal
    torch.testing.assert_close(predict(gradient_model, shifted)["energy"], one["energy"],
                               rtol=0, atol=1e-10)
    two = predict(gradient_model, atoms * (2, 1, 1), compute_stress=True)
    torch.testing.assert_close(two["energy"], 2 * one["energy"], rtol=0, atol=1e-9)
    torch.testing.assert_close(two["forces"], one["forces"].repeat(2, 1), rtol=0, atol=1e-9)
    torch.testing.assert_close(two["stress"], one["stress"], rtol=0, atol=1e-10)


def test_gradient_forces_and_stress_equal_finite_differences(gradient_model):
    atoms = periodic_cell(5)
    out = predict(gradient_model, atoms, compute_stress=True)
    h = 1e-5

    def energy(a):
        return float(predict(gradient_model, a, compute_forces=False)["energy"][0])

    for i, k in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        fd = -(energy(plus) - energy(minus)) / (2 * h)
        assert abs(fd - float(out["forces"][i, k])) < 1e-7
    volume = atoms.get_volume()
    for a, b in [(0, 0), (0, 1), (2, 1)]:
        strained = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] += sign * h / 2
            eps[b, a] += sign * h / 2
            s = atoms.copy()
            s.set_cell(np.array(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
            strained.append(energy(s))
        fd = (strained[0] - strained[1]) / (2 * h) / volume
        assert abs(fd - float(out["stress"][0, a, b])) < 1e-7


def test_energy_is_smooth_as_an_atom_crosses_the_cutoff(gradient_model):
    def pair(r):
        return Atoms("CO", positions=[[0, 0, 0], [0.3 * r, 0.4 * r, math.sqrt(0.75) * r]])

    eps = 1e-5
    inside, outside = predict(gradient_model, pair(R_MAX - eps)), predict(
        gradient_model, pair(R_MAX + eps))
    # the O atom leaves C's neighbourhood: energy and forces continuous (envelope ~ d^3)
    assert abs(float(inside["energy"] - outside["energy"])) < 1e-9
    assert float((inside["forces"] - outside["forces"]).abs().max()) < 1e-7
    # the same with a third atom that stays: attention weights renormalise smoothly
    three = [Atoms("CHO", positions=[[0, 0, 0], [1.1, 0, 0], [0, 0, r]])
             for r in (R_MAX - eps, R_MAX + eps)]
    a, b = (predict(gradient_model, t) for t in three)
    assert abs(float(a["energy"] - b["energy"])) < 1e-9
    assert float((a["forces"] - b["forces"]).abs().max()) < 1e-7


def test_energy_is_continuous_where_the_edge_frame_switches_hemisphere():
    """The frame of an edge switches branch (a roll about the edge) at y = 0: invisible to
    the exact parts, and below 1e-8 eV for the S2 activation on the default grid."""
    model = make_eqv2(grid_degree=None, mmax=2)
    out = [predict(model, Atoms("COH", positions=[[0, 0, 0], [1.2, y, 0.3], [-0.5, 0.8, 0.9]]))
           for y in (-1e-9, 1e-9)]
    assert abs(float(out[0]["energy"] - out[1]["energy"])) < 1e-8
    assert float((out[0]["forces"] - out[1]["forces"]).abs().max()) < 1e-6


def test_edges_along_the_polar_axis_give_finite_forces(gradient_model):
    atoms = Atoms("COH", positions=[[0, 0, 0], [0, 1.2, 0], [0, -1.0, 0]])  # all along y
    out = gradient_model(batch_of(atoms), compute_forces=True, training=True)
    (second,) = torch.autograd.grad(out["forces"].pow(2).sum(),
                                    list(gradient_model.parameters())[0], allow_unused=True)
    assert torch.isfinite(out["forces"]).all() and torch.isfinite(second).all()
    # and they equal the finite differences of the energy
    h = 1e-5
    for i, k in [(1, 1), (2, 0)]:
        p, m = atoms.copy(), atoms.copy()
        p.positions[i, k] += h
        m.positions[i, k] -= h
        fd = -(float(predict(gradient_model, p, compute_forces=False)["energy"][0])
               - float(predict(gradient_model, m, compute_forces=False)["energy"][0])) / (2 * h)
        assert abs(fd - float(out["forces"][i, k])) < 1e-7


def test_neighbour_cap_keeps_the_nearest():
    r = torch.tensor([3.0, 1.0, 2.0, 5.0, 0.5, 4.0, 1.5])
    receiver = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    keep = nearest_neighbours(r, receiver, 2, 2)
    assert keep.tolist() == [False, True, True, False, True, False, True]
    model = make_eqv2(max_neighbors=2)
    atoms = random_molecule(n=7)
    capped = predict(model, atoms)
    plain = predict(make_eqv2(), atoms)
    assert abs(float(capped["energy"] - plain["energy"])) > 1e-6


def test_direct_weights_load_into_a_gradient_model(direct_model):
    gradient = build_model(dict(direct_model.config, forces="gradient")).double().eval()
    gradient.load_state_dict(direct_model.state_dict())  # strict: the force head is dropped
    assert gradient.force_head is None
    atoms = random_molecule()
    torch.testing.assert_close(predict(gradient, atoms)["energy"],
                               predict(direct_model, atoms)["energy"], rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="force_head"):
        direct_model.load_state_dict(gradient.state_dict())


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="model.forces"):
        make_eqv2(forces="both")
    with pytest.raises(ValueError, match="mmax"):
        make_eqv2(mmax=3)
    with pytest.raises(ValueError, match="unknown model config key"):
        make_eqv2(correlation=3)
    with pytest.raises(ValueError, match="species"):
        GauntEquiformerV2(species=None)


@pytest.mark.slow
def test_nve_energy_is_conserved():
    """500 velocity-Verlet steps of 0.5 fs (default S2 grid): the total energy stays within
    1 meV/atom while the potential energy swings by tens of meV."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from forcefield.calculator import ForceFieldCalculator

    model = make_eqv2(seed=1, grid_degree=None, channels=4, num_layers=1, energy_scale=0.3)
    atoms = Atoms("CCOO", positions=[[0, 0, 0], [1.4, 0.1, 0], [-1.2, 0.9, 0.1],
                                     [1.9, 1.2, 0.8]])
    atoms.calc = ForceFieldCalculator(model, dtype="float64")
    rng = np.random.default_rng(0)
    momenta = rng.normal(size=(4, 3)) * np.sqrt(atoms.get_masses() * units.kB * 300)[:, None]
    atoms.set_momenta(momenta - momenta.mean(0))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    total, potential = [], []
    for _ in range(500):
        dyn.run(1)
        total.append(atoms.get_total_energy())
        potential.append(atoms.get_potential_energy())
    assert np.ptp(potential) > 0.02  # the dynamics exchange energy
    assert np.ptp(total) / len(atoms) < 1e-3


@pytest.mark.parametrize("forces", ["direct", "gradient"])
def test_bf16_autocast_trains(forces):
    """trainer.precision=bf16-mixed: matmuls in bf16, norms / Gaunt product / energy sums
    wide; the result stays within bf16 round-off of float32 and backward runs."""
    model = make_eqv2(forces=forces).float().train()
    batch = batch_of(random_molecule(), random_molecule(4, 5))
    ref = model(batch, compute_forces=True, training=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch, compute_forces=True, training=True)
    assert out["energy"].dtype == torch.float64  # energies accumulate in float64
    scale = float(ref["forces"].abs().max())
    assert float((out["forces"] - ref["forces"]).abs().max()) < 0.05 * scale
    assert float((out["energy"] - ref["energy"]).abs().max()) < 0.05
    (out["energy"].sum() + out["forces"].pow(2).sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_oc20_recipe_exempts_norms_biases_and_embeddings_from_weight_decay():
    from omegaconf import OmegaConf

    from forcefield.cli.compose import compose_config
    from forcefield.training.optim import parameter_groups

    cfg = compose_config("train", ["experiment=oc20_s2ef_eqv2"])
    groups = parameter_groups(make_eqv2(), OmegaConf.to_container(cfg.training.optimizer))
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    assert decayed and all(g["weight_decay"] in (0.0, 1e-3) for g in groups)
    assert not any("norm" in n or "embedding" in n or n.endswith("bias") for n in decayed)
    assert "blocks.0.attention.conv1.m0.weight" in decayed
