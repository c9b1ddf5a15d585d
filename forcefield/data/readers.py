"""Readers: every supported source becomes ``(atoms, source, index)`` records.

Supported sources (a path, a directory, a glob pattern, or a list of those):

* any file ``ase.io`` reads (extxyz first; also ASE JSON, vasprun.xml, traj, ...);
  labels are picked later by :meth:`AtomicData.from_ase` with configurable keys;
* ASE databases: ``.db`` (SQLite) and fairchem's ``.aselmdb`` (needs the optional
  ``ase-db-backends`` package); ``sid``/``fid`` key-value pairs are kept;
* legacy OC20 LMDBs of pickled torch_geometric ``Data`` (``*.lmdb`` file, or a directory
  of ``data.NNNN.lmdb``), S2EF (``y``/``force``) or IS2RE (``y_relaxed``), with the
  ``length`` key and the PyG-1 pickle repair. **Unpickling runs code: read only LMDBs you
  trust**, and rewrite them once with ``forcefield convert`` into a pickle-free ASE .db;
* raw OC20 S2EF text: ``*.extxyz`` (``move_mask``, ``tags``) with a sibling ``*.txt``
  (``random<sid>,frame<fid>,<reference energy>`` per frame); the reference energy is
  subtracted when ``subtract_reference=True``.

Every record's ``atoms`` carries labels in a ``SinglePointCalculator`` (LMDB/db/raw) or
as the file stored them (ase.io), fixed atoms as ``FixAtoms``, and ``tags``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from forcefield.data.errors import DataError
from forcefield.data.rows import TASK_KEYS, fields_to_atoms, parse_int_id, repair_pyg1

__all__ = ["TASK_KEYS", "expand_sources", "iter_records", "read_structures", "repair_pyg1"]

Record = tuple[Atoms, str, int]
SourceLike = str | os.PathLike | Sequence[str | os.PathLike]

ASE_DB_SUFFIXES = (".db", ".aselmdb")
LMDB_SUFFIXES = (".lmdb",)


# --------------------------------------------------------------------------- sources
def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def expand_sources(source: SourceLike) -> list[Path]:
    """Turn a path / directory / glob / list of those into a sorted list of concrete sources.

    A directory holding ``*.lmdb``, ``*.aselmdb``, ``*.db`` or ``*.extxyz``/``*.xyz`` files
    expands to those files (LMDB shards first). Raises :class:`DataError` if nothing matches.
    """
    if source is None:
        raise DataError("no data source given; pass a file, directory, glob or list of those.")
    if isinstance(source, (str, os.PathLike)):
        items = [source]
    else:
        items = list(source)
        if not items:
            raise DataError("the list of data sources is empty; give at least one file.")
    out: list[Path] = []
    for item in items:
        s = os.fspath(item)
        s = os.path.expanduser(s)
        if _has_magic(s):
            hits = sorted(glob.glob(s, recursive=True))
            if not hits:
                raise DataError(f"the glob pattern '{s}' matches no file; check the path.")
            for h in hits:
                out.extend(_expand_dir(Path(h)) if Path(h).is_dir() else [Path(h)])
            continue
        p = Path(s)
        if p.is_dir():
            out.extend(_expand_dir(p))
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"data file '{p}' does not exist; check the path (relative paths "
                            f"are resolved from {Path.cwd()}).")
    return out


def _expand_dir(p: Path) -> list[Path]:
    for pattern in ("*.lmdb", "*.aselmdb", "*.db", "*.extxyz", "*.xyz"):
        hits = sorted(x for x in p.glob(pattern) if not x.name.endswith("-lock"))
        if hits:
            return hits
    found = sorted(x.name for x in p.iterdir())[:10]
    raise DataError(f"directory '{p}' holds no *.lmdb, *.aselmdb, *.db, *.extxyz or *.xyz "
                    f"files (found {found}); point to the data files directly.")


def detect_format(path: Path) -> str:
    """One of "lmdb" (legacy pickled), "asedb", "s2ef_raw" (extxyz + txt), "ase"."""
    name = path.name.lower()
    if name.endswith(LMDB_SUFFIXES):
        return "lmdb"
    if name.endswith(ASE_DB_SUFFIXES):
        return "asedb"
    if name.endswith((".extxyz", ".xyz")) and path.with_suffix(".txt").exists():
        return "s2ef_raw"
    return "ase"


# --------------------------------------------------------------------------- entry points
def iter_records(
    source: SourceLike,
    *,
    task: str = "s2ef",
    format: str | None = None,
    index: str | int | slice = ":",
    subtract_reference: bool = False,
    lmdb_keys: dict[str, str | None] | None = None,
) -> Iterator[Record]:
    """Yield ``(atoms, source_name, frame_index)`` for every structure in ``source``.

    Args:
        source: file, directory, glob, or list of those.
        task: "s2ef" or "is2re" (only changes the legacy-LMDB key mapping).
        format: force an ``ase.io`` format name for plain files (None: from the suffix).
        index: frames to take from each plain ase.io file (ase syntax, e.g. ":100").
        subtract_reference: raw S2EF: subtract the reference energy of the ``.txt`` file.
        lmdb_keys: override the LMDB mapping, e.g. ``{"energy": "y", "forces": "force"}``.
    """
    if task not in TASK_KEYS:
        raise DataError(f"unknown task {task!r}; choose 's2ef' or 'is2re'.")
    for path in expand_sources(source):
        kind = detect_format(path) if format is None else "ase"
        if kind == "lmdb":
            yield from read_legacy_lmdb(path, task=task, keys=lmdb_keys)
        elif kind == "asedb":
            yield from read_ase_db(path)
        elif kind == "s2ef_raw":
            yield from read_s2ef_raw(path, subtract_reference=subtract_reference)
        else:
            yield from read_ase_file(path, format=format, index=index)


def read_structures(source: SourceLike, **kwargs) -> list[Atoms]:
    """All structures of ``source`` as a list of ``ase.Atoms`` (see :func:`iter_records`)."""
    return [atoms for atoms, _, _ in iter_records(source, **kwargs)]


# --------------------------------------------------------------------------- ase.io files
def read_ase_file(path: str | os.PathLike, format: str | None = None,
                  index: str | int | slice = ":") -> Iterator[Record]:
    """Frames of any ``ase.io``-readable file; a malformed frame raises a :class:`DataError`
    naming the file and the frame."""
    import ase.io

    path = Path(path)
    k = -1
    try:
        frames = ase.io.iread(str(path), index=index, format=format)
        for k, atoms in enumerate(frames):
            yield atoms, str(path), k
    except DataError:
        raise
    except Exception as err:  # ase raises many types for bad files
        raise DataError(
            f"could not read frame {k + 1} of '{path}' ({type(err).__name__}: {err}); the file "
            "is truncated or malformed: re-export it, or pass format=... if the suffix misleads."
        ) from err
    if k < 0:
        raise DataError(f"'{path}' contains no structures; check the file (and index={index!r}).")


# --------------------------------------------------------------------------- ASE databases
def read_ase_db(path: str | os.PathLike) -> Iterator[Record]:
    """Rows of an ASE database (.db or .aselmdb), decoded by the streaming shard readers
    (:mod:`forcefield.data.shards`); ``sid``/``fid`` go to ``info``."""
    from forcefield.data.shards import open_shard

    path = Path(path)
    shard = open_shard(path)
    if len(shard) == 0:
        raise DataError(f"ASE database '{path}' has no rows; check the file.")
    for k, fields in enumerate(shard.iter_fields()):
        yield fields_to_atoms(fields), str(path), k


# --------------------------------------------------------------------------- legacy LMDB
def read_legacy_lmdb(path: str | os.PathLike, task: str = "s2ef",
                     keys: dict[str, str | None] | None = None) -> Iterator[Record]:
    """Frames of a legacy OC20 LMDB (pickled PyG ``Data``; PyG-1 pickles repaired).

    Security: values are unpickled, which can run arbitrary code: use trusted files only.
    """
    from forcefield.data.shards import LegacyLmdbShard

    path = Path(path)
    shard = LegacyLmdbShard(path)
    if len(shard) == 0:
        raise DataError(f"LMDB '{path}' holds no records; check the file.")
    for k, fields in enumerate(shard.iter_fields(task=task, lmdb_keys=keys)):
        yield fields_to_atoms(fields), str(path), k


# --------------------------------------------------------------------------- raw S2EF
def read_reference_txt(path: str | os.PathLike) -> list[tuple[int | None, int | None, float]]:
    """Parse an OC20 raw-S2EF ``.txt`` (``random<sid>,frame<fid>,<reference energy>``)."""
    path = Path(path)
    out = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) != 3:
                raise ValueError("expected 3 comma-separated fields")
            out.append((parse_int_id(parts[0]), parse_int_id(parts[1]), float(parts[2])))
        except ValueError as err:
            raise DataError(f"line {line_no} of '{path}' is not 'random<sid>,frame<fid>,<energy>'"
                            f" ({err}); fix or regenerate the .txt file.") from err
    return out


def read_s2ef_raw(path: str | os.PathLike, txt: str | os.PathLike | None = None,
                  subtract_reference: bool = False) -> Iterator[Record]:
    """Raw OC20 S2EF extxyz frames paired with their ``.txt`` lines (sid, fid, reference)."""
    path = Path(path)
    txt = path.with_suffix(".txt") if txt is None else Path(txt)
    refs = read_reference_txt(txt) if txt.exists() else None
    if refs is None and subtract_reference:
        raise DataError(f"subtract_reference=True needs the reference file '{txt}' next to "
                        f"'{path}'; provide it or set subtract_reference=False.")
    k = -1
    for atoms, src, k in read_ase_file(path, format="extxyz"):
        if refs is not None:
            if k >= len(refs):
                raise DataError(f"'{txt}' has {len(refs)} lines but '{path}' has more frames; "
                                "the .txt must have one line per frame.")
            sid, fid, ref = refs[k]
            if sid is not None:
                atoms.info["sid"] = sid
            if fid is not None:
                atoms.info["fid"] = fid
            if subtract_reference:
                results = getattr(atoms.calc, "results", None) or {}
                if "energy" in results:
                    results = dict(results)
                    results["energy"] = results["energy"] - ref
                    atoms.calc = SinglePointCalculator(atoms, **results)
                elif "energy" in atoms.info:
                    atoms.info["energy"] = float(atoms.info["energy"]) - ref
            atoms.info["reference_energy"] = ref
        yield atoms, src, k
    if refs is not None and k + 1 != len(refs):
        raise DataError(f"'{txt}' has {len(refs)} lines but '{path}' has {k + 1} frames; "
                        "the .txt must have one line per frame.")
