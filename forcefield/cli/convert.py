"""``forcefield convert``: rewrite pickled OC20 LMDBs (or any data) as a pickle-free ASE db.

Legacy OC20 LMDBs store pickled torch_geometric ``Data``; unpickling runs code, so read
them once (from a trusted source) and keep the ASE database this writes instead.

    forcefield convert data/oc20/legacy_lmdb/oc20_s2ef_pyg1layout.lmdb -o frames.db
    forcefield convert 's2ef_train/*.lmdb' -o train.aselmdb --task s2ef
    forcefield convert input=old.lmdb output=new.db task=is2re      (key=value also works)

Energy, forces, fixed atoms (FixAtoms), tags, sid and fid are kept. The output is written
to a temporary file and renamed at the end, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

_KEYVALUE = {"input": None, "output": "--output", "task": "--task", "overwrite": "--overwrite",
             "energy_key": "--energy-key", "forces_key": "--forces-key"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forcefield convert",
        description="Rewrite legacy (pickled) OC20 LMDBs or any readable data into a "
                    "pickle-free ASE database (.db SQLite, or .aselmdb with ase-db-backends).")
    p.add_argument("inputs", nargs="+", help="file(s), directory of data.NNNN.lmdb, or glob")
    p.add_argument("-o", "--output", required=True, help="output .db or .aselmdb")
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
            elif flag == "--overwrite":
                if value.lower() in ("1", "true", "yes"):
                    out.append(flag)
            else:
                out += [flag, value]
        else:
            out.append(arg)
    return out


def convert(inputs: list[str], output: str | os.PathLike, task: str = "s2ef",
            lmdb_keys: dict | None = None, overwrite: bool = False) -> int:
    """Write every structure of ``inputs`` into the ASE database ``output``; return the count."""
    import ase.db

    from forcefield.data.errors import DataError
    from forcefield.data.readers import iter_records

    output = Path(output)
    if output.suffix not in (".db", ".aselmdb"):
        raise DataError(f"output '{output}' must end in .db (SQLite) or .aselmdb.")
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
            for atoms, source, index in iter_records(inputs, task=task, lmdb_keys=lmdb_keys):
                kv = {key: int(atoms.info[key]) for key in ("sid", "fid") if key in atoms.info}
                kv["source_index"] = int(index)
                data = {"source": str(source)}
                db.write(atoms, key_value_pairs=kv, data=data)
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
        n = convert(args.inputs, args.output, task=args.task, lmdb_keys=keys or None,
                    overwrite=args.overwrite)
    except DataError as err:
        print(f"forcefield convert: {err}", file=sys.stderr)
        return 2
    print(f"wrote {n} structures to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
