"""Neighbour lists (vesin) against ase.neighborlist.neighbor_list on every geometry case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_nl

from forcefield.data import AtomicData, DataError, batch_edge_vectors, neighbour_list


def _edge_set(i, j, s):
    shifts = map(tuple, np.asarray(s).tolist())
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), shifts, strict=True))


def _cases():
    rng = np.random.default_rng(0)
    mol = molecule("CH3CH2OH")  # no cell at all
    boxed = molecule("C6H6")
    boxed.center(vacuum=4.0)  # a cell but no PBC
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)  # pbc T T F
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab_periodic = slab.copy()
    slab_periodic.pbc = True
    tiny = bulk("Cu", "fcc", a=3.6)  # 1 atom, cell << cutoff: many images
    tiny_mixed = tiny.copy()
    tiny_mixed.pbc = [True, False, True]
    slab2d = Atoms("Cu12", positions=rng.uniform(-3, 9, (12, 3)),
                   cell=[[3.0, 0, 0], [1.0, 3.0, 0], [0, 0, 0]], pbc=[True, True, False])
    triclinic = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2))
    triclinic.rattle(0.1, seed=1)
    outside = Atoms("Cu10", positions=rng.uniform(-6, 12, (10, 3)), cell=[3, 3.5, 4], pbc=True)
    lonely = Atoms("H2", positions=[[0, 0, 0], [20, 0, 0]])
    return {
        "molecule_no_cell": (mol, 5.0), "molecule_box_no_pbc": (boxed, 5.0),
        "slab_mixed_pbc": (slab, 6.0), "slab_full_pbc": (slab_periodic, 12.0),
        "tiny_cell": (tiny, 8.0), "tiny_cell_mixed": (tiny_mixed, 6.0),
        "slab_zero_c_vector": (slab2d, 4.0), "triclinic_rattled": (triclinic, 5.5),
        "atoms_outside_cell": (outside, 4.0), "isolated_atoms": (lonely, 5.0),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("backend", ["vesin", "ase"])
def test_edges_match_ase(name, backend):
    atoms, r_max = CASES[name]
    i, j, s = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, r_max, backend=backend)
    ri, rj, rs = ase_nl("ijS", atoms, r_max)
    assert _edge_set(i, j, s) == _edge_set(ri, rj, rs)
    assert len(i) == len(ri)  # no duplicates
    assert i.dtype == np.int64 and s.dtype == np.int64
    assert np.all(np.diff(i) >= 0)  # sorted by centre
    assert not np.any((i == j) & np.all(s == 0, axis=1))  # no self-edges


def test_from_ase_graph_fields_and_edge_vectors():
    atoms, r_max = CASES["slab_mixed_pbc"]
    data = AtomicData.from_ase(atoms, r_max)
    n = len(atoms)
    assert data.pos.dtype == torch.float64 and data.pos.shape == (n, 3)
    assert data.atomic_numbers.dtype == torch.long
    assert data.cell.shape == (1, 3, 3) and data.cell.dtype == torch.float64
    assert data.pbc.shape == (1, 3) and data.pbc.dtype == torch.bool
    assert data.natoms.tolist() == [n]
    assert data.edge_index.dtype == torch.long and data.cell_shifts.dtype == torch.long
    assert "energy" not in data and "forces" not in data  # no labels -> keys absent
    vec = data.edge_vectors()
    _, _, d_ref = ase_nl("ijd", atoms, r_max)
    assert np.allclose(np.sort(vec.norm(dim=1).numpy()), np.sort(d_ref))
    assert float(vec.norm(dim=1).max()) <= r_max


def test_molecule_without_cell_and_isolated_atom_are_valid():
    data = AtomicData.from_ase(CASES["molecule_no_cell"][0], 5.0)
    assert torch.all(data.cell == 0) and not data.pbc.any()
    lonely = AtomicData.from_ase(CASES["isolated_atoms"][0], 5.0)
    assert lonely.edge_index.shape == (2, 0) and lonely.cell_shifts.shape == (0, 3)
    single = AtomicData.from_ase(Atoms("O"), 5.0)
    assert single.num_nodes == 1 and single.edge_index.shape[1] == 0


def test_pbc_with_zero_cell_is_an_error():
    with pytest.raises(DataError, match="periodic along a, b, c"):
        AtomicData.from_ase(Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], pbc=True), 5.0)
    with pytest.raises(DataError, match="periodic along c"):
        neighbour_list(np.zeros((1, 3)), [[3, 0, 0], [0, 3, 0], [0, 0, 0]], True, 4.0)


def test_batched_edge_vectors_use_each_graphs_cell():
    from torch_geometric.loader import DataLoader

    graphs = [AtomicData.from_ase(CASES[k][0], 5.0) for k in
              ("tiny_cell", "molecule_no_cell", "triclinic_rattled")]
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    assert batch.num_graphs == 3 and batch.cell.shape == (3, 3, 3)
    vec = batch_edge_vectors(batch)
    ref = torch.cat([g.edge_vectors() for g in graphs])
    assert torch.allclose(vec, ref)


def test_edge_vectors_give_forces_by_autograd():
    """Positions -> edge vectors stay differentiable (what the model relies on)."""
    atoms, r_max = CASES["tiny_cell"]
    data = AtomicData.from_ase(atoms, r_max)
    data.pos.requires_grad_(True)
    energy = (data.edge_vectors().norm(dim=1) ** 2).sum()
    (grad,) = torch.autograd.grad(energy, data.pos)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-9)  # one atom: translation only
