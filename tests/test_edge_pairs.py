"""Neighbour pairs (forcefield.nn.edge_pairs): each pair's two directions found exactly, and
GauntMACE with its radial MLP once per pair gives the numbers of once per edge."""

from __future__ import annotations

import numpy as np
import pytest
import test_model as physics
import torch
from ase import Atoms
from ase.build import bulk

import forcefield.models.gaunt_mace as gaunt_mace
from forcefield.data.neighbours import neighbour_list
from forcefield.nn.edge_pairs import edge_pairs
from forcefield.so3 import grid_kernel


def self_image_cell() -> Atoms:
    """One Cu atom in the primitive fcc cell (2.55 A vectors): every neighbour within 3 A
    is an image of the atom itself."""
    return bulk("Cu", "fcc", a=3.6)


def edges_of(atoms: Atoms, r_max: float = physics.R_MAX, **kw):
    i, j, s = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, r_max, **kw)
    return torch.as_tensor(j), torch.as_tensor(i), torch.as_tensor(s)  # sender, receiver


def check_pairs(sender, receiver, shifts, pairs) -> tuple[int, int]:
    """Every group is an edge alone or an edge with its exact reverse; ``first`` is the
    group's first edge. Returns (pairs of two, edges alone)."""
    groups: dict[int, list[int]] = {}
    for e, k in enumerate(pairs.slot.tolist()):
        groups.setdefault(k, []).append(e)
    assert sorted(groups) == list(range(len(pairs.first)))
    doubles = singles = 0
    for k, edges in groups.items():
        assert int(pairs.first[k]) == edges[0]
        if len(edges) == 1:
            singles += 1
            continue
        assert len(edges) == 2
        a, b = edges
        assert int(sender[a]) == int(receiver[b]) and int(receiver[a]) == int(sender[b])
        assert torch.equal(shifts[a], -shifts[b])
        doubles += 1
    return doubles, singles


@pytest.mark.parametrize("name", ["molecule", "periodic", "self images"])
def test_full_list_pairs_every_edge_with_its_reverse(name: str) -> None:
    atoms = {"molecule": physics.random_molecule(seed=3, n=8),
             "periodic": physics.periodic_cell(), "self images": self_image_cell()}[name]
    sender, receiver, shifts = edges_of(atoms)
    pairs = edge_pairs(sender, receiver, shifts, len(atoms))
    assert pairs is not None
    doubles, singles = check_pairs(sender, receiver, shifts, pairs)
    assert singles == 0 and 2 * doubles == len(sender) > 0
    if name == "self images":  # i <- i with S and with -S are the two directions
        assert bool((sender == receiver).all())


def test_capped_list_keeps_edges_without_reverse_alone() -> None:
    atoms = physics.random_molecule(seed=4, n=10)
    sender, receiver, shifts = edges_of(atoms, r_max=6.0, max_neighbors=3)
    pairs = edge_pairs(sender, receiver, shifts, len(atoms))
    doubles, singles = check_pairs(sender, receiver, shifts, pairs)
    assert doubles > 0 and singles > 0 and 2 * doubles + singles == len(sender)


def test_nothing_to_share_and_wide_keys() -> None:
    sender, receiver, shifts = edges_of(physics.periodic_cell())
    one_way = receiver < sender
    assert edge_pairs(sender[one_way], receiver[one_way], shifts[one_way], 4) is None
    empty = torch.zeros(0, dtype=torch.long)
    assert edge_pairs(empty, empty, torch.zeros(0, 3), 0) is None
    # float shifts (as models cast them) and a node count too large for one int64 key
    narrow = edge_pairs(sender, receiver, shifts, 4)
    wide = edge_pairs(sender, receiver, shifts.double(), 2**40)
    assert torch.equal(narrow.slot, wide.slot) and torch.equal(narrow.first, wide.first)


def _without_pairs(monkeypatch) -> None:
    monkeypatch.setattr(gaunt_mace, "edge_pairs", lambda *args: None)


@pytest.mark.parametrize("route", ["kernels", "torch"])
@pytest.mark.parametrize("preset", list(physics.PRESETS))
def test_model_numbers_do_not_change(monkeypatch, route: str, preset: str) -> None:
    shapes = {"gaunt_mace_small": dict(lmax_sh=2, radial_mlp=[16, 16]),
              "gaunt_mace": dict(lmax_sh=3, radial_mlp=[16, 16, 16])}[preset]
    model = physics.make_model(seed=3, **shapes)
    far = physics.random_molecule(seed=5, n=5)
    far.positions[0] += 30.0
    batch = physics.batch_of(physics.random_molecule(seed=9, n=7), physics.periodic_cell(),
                             self_image_cell(), Atoms("C", positions=[[0, 0, 0]]), far)

    def run():
        if route == "torch":
            with grid_kernel.disabled():
                return model(batch, compute_stress=True)
        return model(batch, compute_stress=True)

    shared = run()
    with monkeypatch.context() as m:
        _without_pairs(m)
        per_edge = run()
    for key in ("energy", "node_energy", "forces", "stress"):
        scale = max(1.0, float(per_edge[key].abs().max()))
        torch.testing.assert_close(shared[key], per_edge[key], rtol=0, atol=1e-12 * scale)
    assert float(per_edge["stress"].abs().max()) > 1e-4  # not vacuous


def test_training_gradients_do_not_change(monkeypatch) -> None:
    """Parameter gradients of an energy + force loss (through the forces) agree."""
    batch = physics.batch_of(physics.random_molecule(seed=2, n=6), physics.periodic_cell())
    target = torch.as_tensor(np.random.default_rng(0).normal(size=tuple(batch.pos.shape)))

    def gradients() -> list[torch.Tensor]:
        model = physics.make_model(seed=4)
        out = model(batch, training=True)
        loss = (out["energy"] ** 2).sum() + ((out["forces"] - target) ** 2).sum()
        return list(torch.autograd.grad(loss, list(model.parameters())))

    shared = gradients()
    with monkeypatch.context() as m:
        _without_pairs(m)
        per_edge = gradients()
    for a, b in zip(shared, per_edge, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11 * max(1.0, float(b.abs().max())))
    assert max(float(g.abs().max()) for g in shared) > 1e-3
