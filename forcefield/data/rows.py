"""Stored rows -> structure fields: the one decoder per storage format.

Every decoder returns the dict that :meth:`AtomicData.from_fields` builds a graph from
(``numbers``, ``positions``, ``cell``, ``pbc``, ``tags``, ``fixed`` and, when present,
``energy``, ``forces``, ``stress``, ``sid``, ``fid``), without building ``ase.Atoms``.
The in-memory readers turn the same fields into ``ase.Atoms`` with :func:`fields_to_atoms`,
so the streaming and in-memory paths cannot drift apart.

Formats:
* fairchem ``.aselmdb`` rows: ``zlib``-compressed ASE JSON under the key ``str(id)``;
* legacy OC20 LMDB records: pickled torch_geometric ``Data`` (PyG-1 pickles repaired);
* ASE SQLite ``.db`` rows (``ase.db.row.AtomsRow``).
"""

from __future__ import annotations

import json
import pickle
import re
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from forcefield.data.atomic_data import _stress_3x3
from forcefield.data.errors import DataError

TASK_KEYS = {
    # task -> (energy key, forces key, positions key)
    "s2ef": ("y", "force", "pos"),
    "is2re": ("y_relaxed", None, "pos"),
}
_CALC_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}


def parse_int_id(value) -> int | None:
    """An integer id from an int, an integral float, a one-element array or 'random123'."""
    if value is None:
        return None
    if hasattr(value, "reshape"):
        value = np.asarray(value).reshape(-1)
        if value.size != 1:
            return None
        value = value[0]
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    m = re.search(r"(\d+)\s*$", str(value))
    return int(m.group(1)) if m else None


def _fixed_from_constraints(constraints, n: int) -> np.ndarray:
    fixed = np.zeros(n, dtype=bool)
    if isinstance(constraints, str):
        constraints = json.loads(constraints) if constraints else []
    for c in constraints or []:
        if isinstance(c, Mapping):
            if c.get("name") == "FixAtoms":
                kwargs = c.get("kwargs", {})
                if "indices" in kwargs:
                    fixed[np.asarray(kwargs["indices"], dtype=np.int64)] = True
                elif "mask" in kwargs:
                    fixed |= np.asarray(kwargs["mask"], dtype=bool)
        else:  # an ase constraint object
            from ase.constraints import FixAtoms

            if isinstance(c, FixAtoms):
                fixed[c.get_indices()] = True
    return fixed


def _label(row: Mapping[str, Any], name: str, key: str | None) -> Any | None:
    """A label from the calculator fields, then ``key_value_pairs``, then ``data``."""
    keys = (key,) if key else (_CALC_KEYS[name], f"REF_{name}")
    for k in keys:
        for store in (row, row.get("key_value_pairs") or {}, row.get("data") or {}):
            if k in store and store[k] is not None:
                return store[k]
    return None


def fields_from_row_dict(
    row: Mapping[str, Any],
    *,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    required: tuple[str, ...] = (),
    label: str = "row",
) -> dict[str, Any]:
    """Fields of one ASE-db row given as a dict (decoded ``.aselmdb`` JSON or an AtomsRow)."""
    numbers = np.asarray(row["numbers"], dtype=np.int64).reshape(-1)
    n = len(numbers)
    cell = row.get("cell")
    pbc = row.get("pbc")
    tags = row.get("tags")
    fields: dict[str, Any] = {
        "numbers": numbers,
        "positions": np.asarray(row["positions"], dtype=np.float64).reshape(n, 3),
        "cell": np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64).reshape(3, 3),
        "pbc": np.zeros(3, bool) if pbc is None else np.asarray(pbc, dtype=bool).reshape(3),
        "tags": np.zeros(n, np.int64) if tags is None else np.asarray(tags, np.int64).reshape(n),
        "fixed": _fixed_from_constraints(row.get("constraints"), n),
    }
    for name, key in (("energy", energy_key), ("forces", forces_key), ("stress", stress_key)):
        value = _label(row, name, key)
        if value is None:
            if name in required:
                where_ = [key] if key else [name, f"REF_{name}"]
                raise DataError(f"{label} has no {name} label under {where_} (calculator "
                                f"fields, key_value_pairs, data); pass {name}_key=<key>.")
            continue
        if name == "energy":
            fields["energy"] = float(np.asarray(value, dtype=np.float64).reshape(()))
        elif name == "forces":
            f = np.asarray(value, dtype=np.float64)
            if f.shape != (n, 3):
                raise DataError(f"{label}: forces have shape {f.shape}, expected ({n}, 3); "
                                "choose another forces_key.")
            fields["forces"] = f
        else:
            fields["stress"] = _stress_3x3(value, label)
    for key in ("sid", "fid"):
        value = (row.get("key_value_pairs") or {}).get(key)
        if value is None:
            value = (row.get("data") or {}).get(key)
        parsed = parse_int_id(value)
        if parsed is not None:
            fields[key] = parsed
    return fields


def decode_aselmdb_value(raw: bytes, label: str) -> dict[str, Any]:
    """zlib + ASE JSON -> the row dict (errors name the row)."""
    from ase.io.jsonio import decode

    try:
        return decode(zlib.decompress(raw).decode("utf-8"))
    except Exception as err:  # zlib.error, UnicodeDecodeError, JSONDecodeError, ...
        raise DataError(f"{label} is corrupt ({type(err).__name__}: {err}); re-download or "
                        "rewrite that shard (forcefield convert).") from err


# --------------------------------------------------------------------------- legacy LMDB
def repair_pyg1(data):
    """Rebuild a PyG-1.x pickled ``Data`` (attributes in ``__dict__``, no ``_store``)."""
    from torch_geometric.data import Data

    if "_store" not in data.__dict__:
        return Data(**{k: v for k, v in data.__dict__.items() if v is not None})
    return data


def _np(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def unpickle_legacy(raw: bytes, label: str):
    """Unpickle one legacy OC20 record (runs code: trusted files only)."""
    try:
        return repair_pyg1(pickle.loads(raw))
    except Exception as err:
        raise DataError(f"could not unpickle {label} ({type(err).__name__}: {err}); the record "
                        "is corrupt or needs a newer torch_geometric.") from err


def fields_from_legacy(d, task: str = "s2ef", keys: Mapping[str, str | None] | None = None,
                       label: str = "record") -> dict[str, Any]:
    """Fields of a legacy OC20 ``Data`` (S2EF: ``y``/``force``; IS2RE: ``y_relaxed``)."""
    if task not in TASK_KEYS:
        raise DataError(f"unknown task {task!r}; choose 's2ef' or 'is2re'.")
    e_key, f_key, p_key = TASK_KEYS[task]
    if keys:
        e_key = keys.get("energy", e_key)
        f_key = keys.get("forces", f_key)
        p_key = keys.get("positions", p_key)
    store = {k: d[k] for k in d.keys()}
    missing = [k for k in (p_key, "atomic_numbers") if k not in store]
    if missing:
        raise DataError(f"{label} lacks {missing}; found keys {sorted(store)}; pass "
                        "lmdb_keys={'positions': ...} if the positions are stored elsewhere.")
    pos = _np(store[p_key]).astype(np.float64).reshape(-1, 3)
    n = len(pos)
    cell = _np(store.get("cell"))
    cell = np.zeros((3, 3)) if cell is None else cell.astype(np.float64).reshape(3, 3)
    fields: dict[str, Any] = {
        "numbers": np.rint(_np(store["atomic_numbers"])).astype(np.int64).reshape(-1),
        "positions": pos,
        "cell": cell,
        "pbc": np.full(3, bool(np.abs(cell).sum() > 0)),
        "tags": (_np(store["tags"]).astype(np.int64).reshape(-1) if "tags" in store
                 else np.zeros(n, np.int64)),
        "fixed": (_np(store["fixed"]).astype(bool).reshape(-1) if "fixed" in store
                  else np.zeros(n, bool)),
    }
    if e_key is not None and store.get(e_key) is not None:
        fields["energy"] = float(np.asarray(_np(store[e_key])).reshape(-1)[0])
    if f_key is not None and store.get(f_key) is not None:
        fields["forces"] = _np(store[f_key]).astype(np.float64).reshape(-1, 3)
    if e_key is not None and "energy" not in fields:
        raise DataError(f"{label} has no energy under '{e_key}' (task {task!r}); found keys "
                        f"{sorted(store)}; pass lmdb_keys={{'energy': <key>}} or the right task.")
    for key in ("sid", "fid"):
        parsed = parse_int_id(store.get(key))
        if parsed is not None:
            fields[key] = parsed
    return fields


# --------------------------------------------------------------------------- ASE SQLite
def atoms_row_dict(row) -> dict[str, Any]:
    """An ``ase.db`` AtomsRow as the plain dict :func:`fields_from_row_dict` reads."""
    out = {k: v for k, v in row.__dict__.items() if not k.startswith("_")}
    out["constraints"] = row.__dict__.get("_constraints", out.get("constraints"))
    out["key_value_pairs"] = row.key_value_pairs
    out["data"] = row.get("data") or {}
    return out


# --------------------------------------------------------------------------- back to ASE
def fields_to_atoms(fields: Mapping[str, Any]):
    """Fields -> ``ase.Atoms`` (labels in a SinglePointCalculator, FixAtoms, tags, sid/fid)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    atoms = Atoms(numbers=fields["numbers"], positions=fields["positions"],
                  cell=fields["cell"], pbc=fields["pbc"])
    atoms.set_tags(fields["tags"])
    if np.any(fields["fixed"]):
        atoms.set_constraint(FixAtoms(mask=np.asarray(fields["fixed"], dtype=bool)))
    results = {k: fields[k] for k in ("energy", "forces", "stress") if fields.get(k) is not None}
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    for key in ("sid", "fid"):
        if fields.get(key) is not None:
            atoms.info[key] = int(fields[key])
    return atoms
