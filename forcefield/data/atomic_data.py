"""``AtomicData``: one atomic structure as a ``torch_geometric.data.Data`` graph.

Fields (see /work/contracts.md):
    pos [N,3] float64, atomic_numbers [N] long, cell [1,3,3] float64 (zeros without a cell),
    pbc [1,3] bool, natoms [1] long, edge_index [2,E] long (row 0 = centre i, row 1 = neighbour
    j), cell_shifts [E,3] long with ``r_ij = pos[j] - pos[i] + cell_shifts @ cell``,
    fixed [N] bool (True = fixed; all False when the source has no constraint),
    tags [N] long (zeros when absent), and labels when present: energy [1] float64 (eV),
    forces [N,3] float64 (eV/A), stress [1,3,3] float64 (eV/A^3, ASE sign), sid / fid [1] long.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.constraints import FixAtoms
from torch_geometric.data import Data

from forcefield.data.errors import DataError, where
from forcefield.data.neighbours import neighbour_list

ENERGY_KEYS = ("energy", "REF_energy")
FORCES_KEYS = ("forces", "REF_forces")
STRESS_KEYS = ("stress", "REF_stress")


def _found_keys(atoms: Atoms) -> str:
    calc = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    info = sorted(k for k in atoms.info)
    arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    return (f"calculator results {sorted(calc) or '[]'}, info {info or '[]'}, "
            f"arrays {arrays or '[]'}")


def _lookup(atoms: Atoms, keys: Sequence[str], per_atom: bool) -> Any | None:
    """First hit among calculator results, then info (per-structure) / arrays (per-atom)."""
    results = getattr(atoms.calc, "results", None) if atoms.calc is not None else None
    for key in keys:
        if results and key in results and results[key] is not None:
            return results[key]
        store = atoms.arrays if per_atom else atoms.info
        if key in store and store[key] is not None:
            return store[key]
        # a per-atom label stored in info (or vice versa) is still accepted
        other = atoms.info if per_atom else atoms.arrays
        if key in other and other[key] is not None and key not in ("numbers", "positions"):
            return other[key]
    return None


def _stress_3x3(value, label: str) -> np.ndarray:
    s = np.asarray(value, dtype=np.float64).reshape(-1)
    if s.size == 9:
        return s.reshape(3, 3)
    if s.size == 6:  # Voigt xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise DataError(f"{label}: stress must have 6 (Voigt) or 9 components, got {s.size}; "
                    "store it as a 3x3 matrix or in Voigt order xx yy zz yz xz xy.")


def extract_labels(
    atoms: Atoms,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    *,
    required: Sequence[str] = (),
    source: object | None = None,
    index: int | None = None,
) -> dict[str, np.ndarray | float]:
    """Energy / forces / stress of one structure as float64 numpy (absent keys omitted).

    Keys default to the calculator results (ASE >= 3.23 extxyz), then ``info``/``arrays``
    under "energy"/"REF_energy", "forces"/"REF_forces", "stress"/"REF_stress". A given key
    is looked up in the same places. ``required`` names labels that must be present.
    Non-finite values are *not* checked here (see :func:`check_finite`).
    """
    label = where(source, index)
    out: dict[str, Any] = {}
    spec = {
        "energy": ((energy_key,) if energy_key else ENERGY_KEYS, False),
        "forces": ((forces_key,) if forces_key else FORCES_KEYS, True),
        "stress": ((stress_key,) if stress_key else STRESS_KEYS, False),
    }
    for name, (keys, per_atom) in spec.items():
        value = _lookup(atoms, keys, per_atom)
        if value is None:
            if name in required:
                raise DataError(
                    f"{label} has no {name} label under {list(keys)}; found {_found_keys(atoms)}; "
                    f"pass {name}_key=<one of those> to read it."
                )
            continue
        if name == "energy":
            try:
                out[name] = float(np.asarray(value, dtype=np.float64).reshape(()))
            except (TypeError, ValueError) as err:
                raise DataError(f"{label}: energy under {list(keys)} is not one number "
                                f"({value!r}); choose another energy_key.") from err
        elif name == "forces":
            f = np.asarray(value, dtype=np.float64)
            if f.shape != (len(atoms), 3):
                raise DataError(f"{label}: forces have shape {f.shape}, expected "
                                f"({len(atoms)}, 3); choose another forces_key.")
            out[name] = f
        else:
            out[name] = _stress_3x3(value, label)
    return out


def check_finite(atoms: Atoms, labels: dict, source: object | None = None,
                 index: int | None = None) -> str | None:
    """Return a description of the first non-finite value (positions or labels), else None."""
    if not np.all(np.isfinite(atoms.positions)):
        return "positions"
    if atoms.cell is not None and not np.all(np.isfinite(atoms.cell.array)):
        return "cell"
    for key, value in labels.items():
        if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            return key
    return None


def fixed_mask(atoms: Atoms) -> np.ndarray:
    """Boolean [N] mask, True = fixed: FixAtoms constraints, ``fixed`` or ``move_mask`` arrays."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    if "fixed" in atoms.arrays:
        fixed |= np.asarray(atoms.arrays["fixed"]).astype(bool).reshape(-1)
    if "move_mask" in atoms.arrays:  # OC20 raw S2EF: True = free
        fixed |= ~np.asarray(atoms.arrays["move_mask"]).astype(bool).reshape(-1)
    return fixed


def _int_info(atoms: Atoms, key: str) -> int | None:
    value = atoms.info.get(key)
    if value is None:
        return None
    try:
        return int(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        return None


def structure_fields(
    atoms: Atoms,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    *,
    required: Sequence[str] = (),
    source: object | None = None,
    index: int | None = None,
) -> dict[str, Any]:
    """The fields a graph is built from, read off ``ase.Atoms``.

    Keys: numbers [N] int64, positions [N,3] / cell [3,3] float64, pbc [3] bool, tags [N]
    int64, fixed [N] bool, and, when present, energy (float), forces [N,3], stress [3,3],
    sid, fid (int). Labels come from :func:`extract_labels`. Streaming readers produce the
    same dict straight from stored rows.
    """
    labels = extract_labels(atoms, energy_key, forces_key, stress_key, required=required,
                            source=source, index=index)
    fields: dict[str, Any] = {
        "numbers": np.asarray(atoms.numbers, dtype=np.int64),
        "positions": np.asarray(atoms.positions, dtype=np.float64),
        "cell": np.asarray(atoms.cell.array, dtype=np.float64),
        "pbc": np.asarray(atoms.pbc, dtype=bool),
        "tags": np.asarray(atoms.get_tags(), dtype=np.int64),
        "fixed": fixed_mask(atoms),
    }
    fields.update(labels)
    for key in ("sid", "fid"):
        value = _int_info(atoms, key)
        if value is not None:
            fields[key] = value
    return fields


def check_finite_fields(fields: dict[str, Any]) -> str | None:
    """Name of the first non-finite field (positions, cell, energy, forces, stress), else None."""
    for key in ("positions", "cell", "energy", "forces", "stress"):
        value = fields.get(key)
        if value is not None and not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
            return key
    return None


class AtomicData(Data):
    """A ``torch_geometric.data.Data`` for one atomic structure; build with :meth:`from_ase`."""

    @classmethod
    def from_ase(
        cls,
        atoms: Atoms,
        r_max: float,
        *,
        energy_key: str | None = None,
        forces_key: str | None = None,
        stress_key: str | None = None,
        required: Sequence[str] = (),
        backend: str = "vesin",
        source: object | None = None,
        index: int | None = None,
        check_labels: bool = True,
        max_neighbors: int | None = None,
    ) -> AtomicData:
        """Build the graph of ``atoms`` with all neighbours within ``r_max`` (Angstrom).

        Labels are read with :func:`extract_labels` (``energy_key`` etc. default to the
        calculator results, then info/arrays). ``required`` (e.g. ``("energy", "forces")``)
        makes missing labels an error. Non-finite positions or labels raise
        :class:`DataError` (``check_labels=False`` skips that check). ``source``/``index``
        only improve error messages. An atom without neighbours is valid.
        ``max_neighbors`` caps each centre at its k nearest neighbours.
        """
        if not isinstance(atoms, Atoms):
            raise DataError(f"{where(source, index)} is a {type(atoms).__name__}, "
                            "not an ase.Atoms; read it with ase.io.read first.")
        fields = structure_fields(atoms, energy_key, forces_key, stress_key,
                                  required=required, source=source, index=index)
        return cls.from_fields(fields, r_max, backend=backend, source=source, index=index,
                               check_labels=check_labels, max_neighbors=max_neighbors)

    @classmethod
    def from_fields(
        cls,
        fields: dict[str, Any],
        r_max: float,
        *,
        max_neighbors: int | None = None,
        backend: str = "vesin",
        source: object | None = None,
        index: int | None = None,
        check_labels: bool = True,
    ) -> AtomicData:
        """Build the graph from decoded structure fields (see :func:`structure_fields`).

        This is the one graph builder: :meth:`from_ase` (in-memory readers) and the
        streaming datasets (rows decoded straight from LMDB, no ``ase.Atoms``) both end here.
        """
        if check_labels:
            bad = check_finite_fields(fields)
            if bad is not None:
                raise DataError(f"{where(source, index)} has non-finite (NaN/inf) {bad}; "
                                "fix or drop that structure (datamodules: nan_policy='skip').")
        pos = fields["positions"]
        cell = fields["cell"]
        pbc = fields["pbc"]
        i, j, shifts = neighbour_list(pos, cell, pbc, r_max, backend, source=source, index=index,
                                      max_neighbors=max_neighbors)
        n = len(pos)
        data = cls(
            pos=torch.from_numpy(np.array(pos, dtype=np.float64)),
            atomic_numbers=torch.from_numpy(np.array(fields["numbers"], dtype=np.int64)),
            cell=torch.from_numpy(np.array(cell, dtype=np.float64)).unsqueeze(0),
            pbc=torch.from_numpy(np.array(pbc, dtype=bool)).unsqueeze(0),
            natoms=torch.tensor([n], dtype=torch.long),
            edge_index=torch.from_numpy(np.stack([i, j])),
            cell_shifts=torch.from_numpy(shifts),
            fixed=torch.from_numpy(np.array(fields["fixed"], dtype=bool)),
            tags=torch.from_numpy(np.array(fields["tags"], dtype=np.int64)),
        )
        if fields.get("energy") is not None:
            data.energy = torch.tensor([float(fields["energy"])], dtype=torch.float64)
        if fields.get("forces") is not None:
            data.forces = torch.from_numpy(np.array(fields["forces"], dtype=np.float64))
        if fields.get("stress") is not None:
            data.stress = torch.from_numpy(np.array(fields["stress"],
                                                    dtype=np.float64)).unsqueeze(0)
        for key in ("sid", "fid"):
            if fields.get(key) is not None:
                data[key] = torch.tensor([int(fields[key])], dtype=torch.long)
        return data

    def edge_vectors(self) -> torch.Tensor:
        """``pos[j] - pos[i] + cell_shifts @ cell`` for a single (unbatched) graph."""
        i, j = self.edge_index
        return self.pos[j] - self.pos[i] + self.cell_shifts.to(self.pos.dtype) @ self.cell[0]

    def to_ase(self) -> Atoms:
        """Back to ``ase.Atoms`` (labels in a SinglePointCalculator, FixAtoms, tags)."""
        return to_ase(self)


def to_ase(data: Data) -> Atoms:
    """Convert one (unbatched) graph back to ``ase.Atoms``."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(
        numbers=data.atomic_numbers.cpu().numpy(),
        positions=data.pos.detach().cpu().double().numpy(),
        cell=data.cell.reshape(3, 3).detach().cpu().double().numpy(),
        pbc=data.pbc.reshape(3).cpu().numpy(),
    )
    if "tags" in data:
        atoms.set_tags(data.tags.cpu().numpy())
    if "fixed" in data and bool(data.fixed.any()):
        atoms.set_constraint(FixAtoms(mask=data.fixed.cpu().numpy().astype(bool)))
    results = {}
    if "energy" in data:
        results["energy"] = float(data.energy.reshape(-1)[0])
    if "forces" in data:
        results["forces"] = data.forces.detach().cpu().double().numpy()
    if "stress" in data:
        results["stress"] = data.stress.reshape(3, 3).detach().cpu().double().numpy()
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    for key in ("sid", "fid"):
        if key in data:
            atoms.info[key] = int(data[key].reshape(-1)[0])
    return atoms


def batch_edge_vectors(batch: Data) -> torch.Tensor:
    """Edge vectors for a PyG batch: ``pos[j] - pos[i] + shifts @ cell[graph of i]``."""
    i, j = batch.edge_index
    graph = batch.batch[i] if "batch" in batch else torch.zeros_like(i)
    cell = batch.cell.view(-1, 3, 3)[graph]
    return batch.pos[j] - batch.pos[i] + torch.einsum(
        "ek,ekl->el", batch.cell_shifts.to(batch.pos.dtype), cell.to(batch.pos.dtype))
