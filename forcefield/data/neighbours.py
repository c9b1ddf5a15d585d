"""Neighbour lists: vesin (fast, default) with ASE's ``neighbor_list`` as the reference backend.

Convention (ASE "ijS"): for every pair within ``r_max`` the edge vector is
``r_ij = pos[j] - pos[i] + shifts @ cell``; ``i`` is the centre (receiver), ``j`` the
neighbour. Pairs are listed in both directions; there are no self-edges with zero shift,
but an atom may neighbour its own periodic images when the cell is smaller than ``r_max``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from forcefield.data.errors import DataError, where

BACKENDS = ("vesin", "ase")


def _as_numpy(x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def check_cell(cell: np.ndarray, pbc: np.ndarray, source: object | None = None,
               index: int | None = None) -> None:
    """Raise :class:`DataError` if a periodic direction has a zero (or degenerate) cell vector."""
    lengths = np.linalg.norm(cell, axis=1)
    bad = [ax for ax in range(3) if pbc[ax] and lengths[ax] < 1e-8]
    if bad:
        axes = ", ".join("abc"[ax] for ax in bad)
        raise DataError(
            f"{where(source, index)} is periodic along {axes} but its cell vector there is zero; "
            "set a cell (atoms.cell) or turn periodicity off (atoms.pbc = False) for that axis."
        )
    if pbc.all() and abs(np.linalg.det(cell)) < 1e-8:
        raise DataError(
            f"{where(source, index)} is fully periodic but its cell has zero volume; "
            "give three linearly independent cell vectors or turn periodicity off."
        )


def neighbour_list(
    pos,
    cell,
    pbc: bool | Sequence[bool],
    r_max: float,
    backend: str = "vesin",
    *,
    source: object | None = None,
    index: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs within ``r_max`` (both directions).

    Args:
        pos: positions [N, 3] (numpy or torch), Angstrom.
        cell: cell [3, 3] (rows are lattice vectors; zeros or None for no cell).
        pbc: periodicity per axis (bool or 3 bools).
        r_max: cutoff radius in Angstrom (> 0).
        backend: "vesin" (default) or "ase" (reference, slow).

    Returns:
        ``(i, j, shifts)`` as int64 numpy arrays of shape [E], [E], [E, 3], sorted by ``i``.
    """
    if backend not in BACKENDS:
        raise DataError(f"unknown neighbour-list backend {backend!r}; choose one of {BACKENDS}.")
    if not r_max > 0:
        raise DataError(f"r_max must be positive, got {r_max!r}.")
    pos = _as_numpy(pos, np.float64).reshape(-1, 3)
    cell = np.zeros((3, 3)) if cell is None else _as_numpy(cell, np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(_as_numpy(pbc, bool)), (3,)).copy()
    check_cell(cell, pbc, source, index)
    if len(pos) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros((0, 3), dtype=np.int64)
    if backend == "vesin":
        from vesin import NeighborList

        nl = NeighborList(cutoff=float(r_max), full_list=True, sorted=True)
        i, j, shifts = nl.compute(points=pos, box=cell, periodic=pbc, quantities="ijS")
    else:
        from ase import Atoms
        from ase.neighborlist import neighbor_list as ase_neighbor_list

        atoms = Atoms(positions=pos, cell=cell, pbc=pbc)
        i, j, shifts = ase_neighbor_list("ijS", atoms, float(r_max))
        order = np.lexsort((j, i))
        i, j, shifts = i[order], j[order], shifts[order]
    return (np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64),
            np.asarray(shifts, dtype=np.int64).reshape(-1, 3))
