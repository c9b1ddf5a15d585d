"""``forcefield convert``: rewrite any supported data as sharded ``.aselmdb`` (or one ASE db).

The OC20-scale layout is a directory of ``.aselmdb`` shards plus ``metadata.npz`` (fairchem's
layout, which ``forcefield train data.train=DIR`` streams). Legacy OC20 LMDBs store pickled
torch_geometric ``Data``; unpickling runs code, so read them once (from a trusted source) and
keep what this writes instead. Raw S2EF ``*.extxyz`` + ``*.txt`` downloads convert with their
reference energies subtracted (``--subtract-reference``). One streaming pass: structures are
never all held in memory.

    forcefield convert 's2ef_train_2M/*.extxyz' -o s2ef_2M/ --subtract-reference
    forcefield convert 's2ef_train/*.lmdb' -o train/ --shard-size 20000
    forcefield convert data/oc20/legacy_lmdb/oc20_s2ef_pyg1layout.lmdb -o frames.db
    forcefield convert --index s2ef_2M/            (only (re)build metadata.npz)
    forcefield convert input=old.lmdb output=new/ task=is2re      (key=value also works)

Energy, forces, stress, fixed atoms (FixAtoms), tags, sid and fid are kept. Output is written
to a temporary file or directory and renamed at the end, so a failure leaves nothing
half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

_KEYVALUE = {"input": None, "output": "--output", "task": "--task", "overwrite": "--overwrite",
             "energy_key": "--energy-key", "forces_key": "--forces-key",
             "shard_size": "--shard-size", "subtract_reference": "--subtract-reference",
             "index": "--index"}
_FLAGS = ("--overwrite", "--subtract-reference")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forcefield convert",
        description="Rewrite any readable data (extxyz, raw S2EF extxyz+txt, ASE db, legacy "
                    "OC20 LMDB) into a directory of .aselmdb shards + metadata.npz (output "
                    "without a suffix), or into one ASE database (.db or .aselmdb).")
    p.add_argument("inputs", nargs="*", help="file(s), directory of data.NNNN.lmdb, or glob")
    p.add_argument("-o", "--output", help="output directory (sharded), .db or .aselmdb")
    p.add_argument("--shard-size", type=int, default=10000,
                   help="structures per .aselmdb shard (sharded output; default 10000)")
    p.add_argument("--subtract-reference", action="store_true",
                   help="raw S2EF extxyz + txt: subtract the reference energies of the .txt")
    p.add_argument("--index", metavar="DIR", default=None,
                   help="only (re)build DIR/metadata.npz of an existing shard directory")
    p.add_argument("--task", default="s2ef", choices=["s2ef", "is2re"],
                   help="legacy LMDB key mapping: s2ef (y, force) or is2re (y_relaxed)")
    p.add_argument("--energy-key", default=None, help="legacy LMDB energy key (overrides task)")
    p.add_argument("--forces-key", default=None, help="legacy LMDB forces key (overrides task)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def _translate(argv: list[str]) -> list[str]:
    """Accept Hydra-like ``key=value`` arguments too."""
    out: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and key in _KEYVALUE:
            flag = _KEYVALUE[key]
            if flag is None:
                out.append(value)
            elif flag in _FLAGS:
                if value.lower() in ("1", "true", "yes"):
                    out.append(flag)
            else:
                out += [flag, value]
        else:
            out.append(arg)
    return out


def _key_values(atoms, index: int) -> dict:
    kv = {key: int(atoms.info[key]) for key in ("sid", "fid") if key in atoms.info}
    kv["source_index"] = int(index)
    if "reference_energy" in atoms.info:
        kv["reference_energy"] = float(atoms.info["reference_energy"])
    return kv


def convert_sharded(inputs: list[str], output: str | os.PathLike, task: str = "s2ef",
                    lmdb_keys: dict | None = None, overwrite: bool = False,
                    shard_size: int = 10000, subtract_reference: bool = False,
                    progress: bool = True) -> int:
    """Stream every structure of ``inputs`` into a directory of ``.aselmdb`` shards plus
    ``metadata.npz``; return the count."""
    from tqdm.auto import tqdm

    from forcefield.data.readers import iter_records
    from forcefield.data.writers import ShardedAseLmdbWriter

    with ShardedAseLmdbWriter(output, shard_size=shard_size, overwrite=overwrite) as writer:
        records = iter_records(inputs, task=task, lmdb_keys=lmdb_keys,
                               subtract_reference=subtract_reference)
        for atoms, source, index in tqdm(records, desc="convert", unit="structures",
                                         disable=not progress, mininterval=1.0):
            writer.write(atoms, key_value_pairs=_key_values(atoms, index),
                         data={"source": str(source)})
    return writer.count


def convert(inputs: list[str], output: str | os.PathLike, task: str = "s2ef",
            lmdb_keys: dict | None = None, overwrite: bool = False,
            subtract_reference: bool = False) -> int:
    """Write every structure of ``inputs`` into the ASE database ``output``; return the count."""
    import ase.db

    from forcefield.data.errors import DataError
    from forcefield.data.readers import iter_records

    output = Path(output)
    if output.suffix not in (".db", ".aselmdb"):
        raise DataError(f"output '{output}' must end in .db (SQLite) or .aselmdb, or have no "
                        "suffix (a directory of shards).")
    if output.exists() and not overwrite:
        raise DataError(f"output '{output}' exists; pass --overwrite or choose another name.")
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
            for atoms, source, index in iter_records(inputs, task=task, lmdb_keys=lmdb_keys,
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


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``forcefield convert``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(_translate(argv))
    from forcefield.data.errors import DataError

    keys = {}
    if args.energy_key:
        keys["energy"] = args.energy_key
    if args.forces_key:
        keys["forces"] = args.forces_key
    try:
        if args.index is not None:
            from forcefield.data.metadata import build_metadata

            if args.inputs or args.output:
                raise DataError("--index DIR takes no inputs or --output; run it alone.")
            target = Path(args.index) / "metadata.npz"
            if target.exists():
                target.unlink()
            path = build_metadata(args.index)
            print(f"wrote {path}")
            return 0
        if not args.inputs or not args.output:
            raise DataError("give the input sources and -o OUTPUT (a directory, .db or "
                            ".aselmdb), or --index DIR.")
        suffix = Path(args.output).suffix
        if suffix not in ("", ".db", ".aselmdb"):
            raise DataError(f"output '{args.output}' must be a directory (a name without a "
                            "suffix) for sharded .aselmdb, or end in .db or .aselmdb.")
        if suffix:
            n = convert(args.inputs, args.output, task=args.task, lmdb_keys=keys or None,
                        overwrite=args.overwrite, subtract_reference=args.subtract_reference)
        else:
            n = convert_sharded(args.inputs, args.output, task=args.task,
                                lmdb_keys=keys or None, overwrite=args.overwrite,
                                shard_size=args.shard_size,
                                subtract_reference=args.subtract_reference)
    except DataError as err:
        print(f"forcefield convert: {err}", file=sys.stderr)
        return 2
    print(f"wrote {n} structures to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
