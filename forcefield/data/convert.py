"""``forcefield convert``'s work: rewrite any readable data as sharded ``.aselmdb`` (or one ASE db).

The OC20-scale layout is a directory of ``.aselmdb`` shards plus ``metadata.npz`` (fairchem's
layout, which ``forcefield train data.train=DIR`` streams). Legacy OC20 LMDBs store pickled
torch_geometric ``Data``; unpickling runs code, so read them once (from a trusted source) and
keep what this writes instead. Raw S2EF ``*.extxyz`` + ``*.txt`` downloads convert with their
reference energies subtracted (``subtract_reference``). One streaming pass: structures are
never all held in memory.

Energy, forces, stress, fixed atoms (FixAtoms), tags, sid and fid are kept. Output is written
to a temporary file or directory and renamed at the end, so a failure leaves nothing
half-written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from forcefield.data.errors import DataError


def _key_values(atoms, index: int) -> dict:
    kv = {key: int(atoms.info[key]) for key in ("sid", "fid") if key in atoms.info}
    kv["source_index"] = int(index)
    if "reference_energy" in atoms.info:
        kv["reference_energy"] = float(atoms.info["reference_energy"])
    return kv


def convert_sharded(inputs: Sequence[str], output: str | os.PathLike, task: str = "s2ef",
                    lmdb_keys: dict | None = None, overwrite: bool = False,
                    shard_size: int = 10000, subtract_reference: bool = False,
                    progress: bool = True) -> int:
    """Stream every structure of ``inputs`` into a directory of ``.aselmdb`` shards plus
    ``metadata.npz``; return the count."""
    from tqdm.auto import tqdm

    from forcefield.data.readers import iter_records
    from forcefield.data.writers import ShardedAseLmdbWriter

    with ShardedAseLmdbWriter(output, shard_size=shard_size, overwrite=overwrite) as writer:
        records = iter_records(list(inputs), task=task, lmdb_keys=lmdb_keys,
                               subtract_reference=subtract_reference)
        for atoms, source, index in tqdm(records, desc="convert", unit="structures",
                                         disable=not progress, mininterval=1.0):
            writer.write(atoms, key_value_pairs=_key_values(atoms, index),
                         data={"source": str(source)})
    return writer.count


def convert_database(inputs: Sequence[str], output: str | os.PathLike, task: str = "s2ef",
                     lmdb_keys: dict | None = None, overwrite: bool = False,
                     subtract_reference: bool = False) -> int:
    """Write every structure of ``inputs`` into the ASE database ``output``; return the count."""
    import ase.db

    from forcefield.data.readers import iter_records

    output = Path(output)
    if output.suffix not in (".db", ".aselmdb"):
        raise DataError(f"output '{output}' must end in .db (SQLite) or .aselmdb, or have no "
                        "suffix (a directory of shards).")
    if output.exists() and not overwrite:
        raise DataError(f"output '{output}' exists; pass overwrite=true (--overwrite) or "
                        "choose another name.")
    if output.suffix == ".aselmdb":
        try:
            import ase_db_backends  # noqa: F401
        except ImportError as err:
            raise DataError("writing .aselmdb needs the optional package ase-db-backends: "
                            "pip install 'forcefield[oc20]' (or write a .db).") from err
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.stem}.", suffix=output.suffix)
    os.close(fd)
    os.unlink(tmp)
    n = 0
    try:
        with ase.db.connect(tmp, append=False, use_lock_file=False) as db:
            for atoms, source, index in iter_records(list(inputs), task=task,
                                                     lmdb_keys=lmdb_keys,
                                                     subtract_reference=subtract_reference):
                db.write(atoms, key_value_pairs=_key_values(atoms, index),
                         data={"source": str(source)})
                n += 1
        if hasattr(db, "close"):
            db.close()
        os.replace(tmp, output)
    finally:
        for leftover in (tmp, tmp + "-lock"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return n


def convert(inputs: Sequence[str], output: str | os.PathLike, *, task: str = "s2ef",
            energy_key: str | None = None, forces_key: str | None = None,
            overwrite: bool = False, shard_size: int = 10000,
            subtract_reference: bool = False, progress: bool = True) -> int:
    """Every structure of ``inputs`` into ``output``: a directory of ``.aselmdb`` shards +
    ``metadata.npz`` (a name without a suffix) or one ASE database (``.db``/``.aselmdb``).
    ``energy_key``/``forces_key`` remap a legacy LMDB's labels. Returns the count."""
    if not inputs or not output:
        raise DataError("give the input sources and the output (input=... output=..., or "
                        "SOURCES -o OUTPUT): a directory, .db or .aselmdb; or index=DIR.")
    suffix = Path(output).suffix
    if suffix not in ("", ".db", ".aselmdb"):
        raise DataError(f"output '{output}' must be a directory (a name without a suffix) "
                        "for sharded .aselmdb, or end in .db or .aselmdb.")
    from forcefield.data.readers import expand_sources
    from forcefield.data.rows import TASK_KEYS

    if task not in TASK_KEYS:
        raise DataError(f"unknown task {task!r}; choose 's2ef' or 'is2re'.")
    inputs = [str(p) for p in expand_sources(list(inputs))]  # a missing source, before writing
    keys = {k: v for k, v in (("energy", energy_key), ("forces", forces_key)) if v}
    if suffix:
        return convert_database(inputs, output, task=task, lmdb_keys=keys or None,
                                overwrite=overwrite, subtract_reference=subtract_reference)
    return convert_sharded(inputs, output, task=task, lmdb_keys=keys or None,
                           overwrite=overwrite, shard_size=shard_size,
                           subtract_reference=subtract_reference, progress=progress)


def rebuild_index(directory: str | os.PathLike) -> Path:
    """(Re)build ``directory/metadata.npz`` of an existing shard directory; return its path."""
    from forcefield.data.metadata import build_metadata

    target = Path(directory) / "metadata.npz"
    if target.exists():
        target.unlink()
    return build_metadata(directory)


__all__ = ["convert", "convert_database", "convert_sharded", "rebuild_index"]
