"""GauntMACE on the fused CPU kernels and on the torch route: same numbers, same physics.

tests/test_model.py runs the physics tests on the default route (the fused kernels where
built); here the same tests run on the torch route (``grid_kernel.disabled()``, the route
of GPUs and installs without a compiler), and both routes are compared directly: energies,
forces and stress to 1e-12 in float64 for both presets' shapes, and a few training steps
(loss through the forces, so second derivatives) give the same losses.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import test_model as physics
import torch
from ase import Atoms
from torch_geometric.data import Batch

from forcefield.so3 import conv_kernel, grid_kernel

needs_kernel = pytest.mark.skipif(not conv_kernel.available(), reason="kernel not built")

# both presets' shapes (small: lmax_sh 2, radial MLP 2 layers; paper size: lmax_sh 3, 3
# layers), tiny channels
PRESET_SHAPES = {
    "gaunt_mace_small": dict(lmax=2, lmax_sh=2, correlation=3, radial_mlp=[16, 16]),
    "gaunt_mace": dict(lmax=2, lmax_sh=3, correlation=3, radial_mlp=[16, 16, 16]),
}


def structures() -> dict[str, Atoms]:
    lone = Atoms("C", positions=[[0.0, 0.0, 0.0]])
    far = physics.random_molecule(seed=5, n=5)
    far.positions[0] += 30.0  # an atom with no neighbour inside a molecule's batch
    return {"molecule": physics.random_molecule(seed=9, n=7), "periodic": physics.periodic_cell(),
            "isolated atom": lone, "molecule with a far atom": far}


@needs_kernel
@pytest.mark.parametrize("preset", list(PRESET_SHAPES))
def test_routes_agree(preset: str) -> None:
    model = physics.make_model(seed=1, **PRESET_SHAPES[preset])
    batch = physics.batch_of(*structures().values())
    fused = model(batch, compute_stress=True)
    with grid_kernel.disabled():
        reference = model(batch, compute_stress=True)
    for key in ("energy", "forces", "stress", "node_energy"):
        scale = max(1.0, float(reference[key].abs().max()))
        torch.testing.assert_close(fused[key], reference[key], atol=1e-12 * scale, rtol=0)
    assert float(reference["forces"].abs().max()) > 1e-3  # not vacuous

    model32 = copy.deepcopy(model).float()
    out32 = model32(batch, compute_stress=True)
    with grid_kernel.disabled():
        ref32 = model32(batch, compute_stress=True)
    force_scale = float(reference["forces"].abs().max())
    for out in (out32, ref32):
        torch.testing.assert_close(out["forces"], reference["forces"], rtol=0,
                                   atol=1e-5 * max(1.0, force_scale))


@needs_kernel
def test_training_steps_give_the_same_losses() -> None:
    """Adam on energy + force loss (backward through the forces) for a few steps."""
    batch = physics.batch_of(physics.random_molecule(seed=2, n=6), physics.periodic_cell())
    target_forces = torch.randn(batch.pos.shape, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64)

    def train(disabled: bool) -> list[float]:
        model = physics.make_model(seed=4, **PRESET_SHAPES["gaunt_mace_small"])
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(3):
            optimiser.zero_grad()
            if disabled:
                with grid_kernel.disabled():
                    out = model(batch, training=True)
            else:
                out = model(batch, training=True)
            loss = ((out["forces"] - target_forces) ** 2).mean() + 1e-6 * out["energy"].var()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        return losses

    fused, reference = train(False), train(True)
    np.testing.assert_allclose(fused, reference, rtol=1e-11, atol=0)
    assert fused[-1] < fused[0]


@pytest.fixture(scope="module")
def model():
    return physics.make_model()


@pytest.fixture
def torch_route():
    with grid_kernel.disabled():
        yield


@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_reflection_invariance_torch_route(model, torch_route, reflect):
    physics.test_rotation_reflection_invariance(model, reflect)


def test_periodic_rotation_and_stress_torch_route(model, torch_route):
    physics.test_periodic_rotation_and_stress_equivariance(model)


def test_forces_match_finite_differences_torch_route(model, torch_route):
    physics.test_forces_match_finite_differences(model)


@pytest.mark.slow
def test_periodic_forces_and_stress_finite_differences_torch_route(model, torch_route):
    physics.test_periodic_forces_and_stress_match_finite_differences(model)


def test_extensive_and_isolated_atoms_torch_route(model, torch_route):
    physics.test_far_apart_copies_double_the_energy(model)
    physics.test_isolated_atom_gives_e0(model, 8)


def test_environment_variable_selects_the_torch_route() -> None:
    """FORCEFIELD_NO_CPU_KERNEL=1 (or no compiler): no fused kernel, same model numbers."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_model as physics\n"
        "from forcefield.so3 import conv_kernel\n"
        "assert not conv_kernel.available()\n"
        "model = physics.make_model(seed=1)\n"
        "conv = model.interactions[1].conv\n"
        "h = torch.zeros(1, conv.channels, 9, dtype=torch.float64)\n"
        "assert not conv.use_kernel(h) and not model.interactions[0].product.use_kernel(h)\n"
        "out = model(physics.batch_of(physics.periodic_cell()), compute_stress=True)\n"
        "print(repr(float(out['energy'][0])), repr(float(out['forces'].abs().sum())))\n"
    )
    env = {**__import__("os").environ, "FORCEFIELD_NO_CPU_KERNEL": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    energy, forces = (float(v) for v in res.stdout.split())
    model = physics.make_model(seed=1)
    out = model(physics.batch_of(physics.periodic_cell()), compute_stress=True)
    assert abs(float(out["energy"][0]) - energy) < 1e-10
    assert abs(float(out["forces"].abs().sum()) - forces) < 1e-9


@needs_kernel
def test_batches_without_edges_or_atoms(model) -> None:
    """Only isolated atoms (no edge at all: E0s exactly, zero forces) and an empty
    structure, on both routes, with a training graph."""
    lone = physics.batch_of(Atoms("C", positions=[[0.0, 0.0, 0.0]]),
                            Atoms("O", positions=[[0.0, 0.0, 0.0]]))
    for disabled in (False, True):
        if disabled:
            with grid_kernel.disabled():
                out = model(lone, compute_stress=True, training=True)
        else:
            out = model(lone, compute_stress=True, training=True)
        assert out["energy"].tolist() == [physics.E0S[6], physics.E0S[8]]
        assert not out["forces"].detach().any()
        out["energy"].sum().backward()
    empty = physics.make_data(Atoms("C", positions=[[0.0, 0.0, 0.0]]))
    empty.pos, empty.atomic_numbers = empty.pos[:0], empty.atomic_numbers[:0]
    empty.natoms = torch.tensor([0])
    out = model(Batch.from_data_list([empty]), compute_stress=True)
    assert out["energy"].tolist() == [0.0] and out["forces"].shape == (0, 3)
