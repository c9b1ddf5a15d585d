"""Random access to the structures of one stored file (a shard), in any process.

A shard knows its length and how to turn local row numbers into structure fields
(:mod:`forcefield.data.rows`). It holds no per-structure Python objects: a shard without
deleted rows stores nothing per row; one with deleted rows stores a numpy id array.

LMDB environments are opened lazily, once per path per process, and reopened after a fork
(the inherited handle is closed in the child first: py-lmdb refuses a second open of the same
path in one process, and using the parent's environment in a child is undefined). Pickling
a shard drops nothing because a shard never stores a handle: the handles live in a
per-process table (:func:`lmdb_env`), so DataLoader workers work under fork, forkserver and
spawn alike.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forcefield.data.errors import DataError
from forcefield.data.rows import (
    atoms_row_dict,
    decode_aselmdb_value,
    fields_from_legacy,
    fields_from_row_dict,
    unpickle_legacy,
)

_ENVS: dict[str, tuple[int, Any]] = {}


def lmdb_env(path: str | os.PathLike):
    """This process's read-only environment for ``path`` (opened on first use)."""
    import lmdb

    key = os.fspath(path)
    pid = os.getpid()
    entry = _ENVS.get(key)
    if entry is not None:
        owner, env = entry
        if owner == pid:
            return env
        try:  # inherited through fork: release it in this process, then reopen
            env.close()
        except lmdb.Error:
            pass
        del _ENVS[key]
    try:
        env = lmdb.open(key, subdir=False, readonly=True, lock=False, readahead=False,
                        meminit=False, max_readers=2048)
    except lmdb.Error as err:
        raise DataError(f"could not open LMDB '{key}' ({err}); check that the file exists and "
                        "is an LMDB written with subdir=False.") from err
    _ENVS[key] = (pid, env)
    return env


@contextlib.contextmanager
def _peek_env(path: Path, what: str):
    """This process's open environment for ``path``, or a temporary one closed at the end
    (the parent reads a shard's length without keeping a handle that workers would inherit)."""
    import lmdb

    entry = _ENVS.get(os.fspath(path))
    if entry is not None and entry[0] == os.getpid():
        yield entry[1]
        return
    try:
        env = lmdb.open(os.fspath(path), subdir=False, readonly=True, lock=False,
                        readahead=False, meminit=False)
    except lmdb.Error as err:
        raise DataError(f"could not open {what} '{path}' ({err}); check that it is an LMDB "
                        "file written with subdir=False.") from err
    try:
        yield env
    finally:
        env.close()


def close_lmdb_envs(path: str | os.PathLike | None = None) -> None:
    """Close this process's environment for ``path`` (or all of them), so that another
    library can open the file (py-lmdb allows one environment per path per process)."""
    for key in [os.fspath(path)] if path is not None else list(_ENVS):
        entry = _ENVS.pop(key, None)
        if entry is not None and entry[0] == os.getpid():
            entry[1].close()


class Shard:
    """One file of structures; subclasses implement one storage format."""

    kind = "base"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __len__(self) -> int:
        return self.length

    def label(self, local: int) -> str:
        return f"row {local} of shard '{self.path}'"

    def read(self, locals_: Sequence[int], **options) -> list[dict[str, Any]]:
        """Fields of the rows ``locals_`` (0-based), in that order."""
        raise NotImplementedError

    def iter_fields(self, chunk: int = 256, **options) -> Iterator[dict[str, Any]]:
        """Every row in order, read in chunks (one transaction per chunk); the file is
        released at the end (a sequential pass, not the random access of training)."""
        try:
            for start in range(0, self.length, chunk):
                yield from self.read(range(start, min(start + chunk, self.length)), **options)
        finally:
            close_lmdb_envs(self.path)


class AseLmdbShard(Shard):
    """A fairchem ``.aselmdb`` file: rows ``id = 1..nextid-1`` minus ``deleted_ids``."""

    kind = "aselmdb"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        with _peek_env(self.path, "shard") as env, env.begin() as txn:
            nextid_raw = txn.get(b"nextid")
            deleted_raw = txn.get(b"deleted_ids")
        nextid = 1 if nextid_raw is None else int(
            decode_aselmdb_value(nextid_raw, f"the 'nextid' key of '{self.path}'"))
        deleted = [] if deleted_raw is None else decode_aselmdb_value(
            deleted_raw, f"the 'deleted_ids' key of '{self.path}'")
        if len(deleted):
            ids = np.arange(1, nextid, dtype=np.int64)
            self.ids: np.ndarray | None = ids[~np.isin(ids, np.asarray(deleted, np.int64))]
            self.length = int(len(self.ids))
        else:
            self.ids = None
            self.length = max(0, nextid - 1)

    def row_id(self, local: int) -> int:
        return int(self.ids[local]) if self.ids is not None else int(local) + 1

    def label(self, local: int) -> str:
        return f"row {local} (id {self.row_id(local)}) of shard '{self.path}'"

    def read_dicts(self, locals_: Sequence[int]) -> list[dict[str, Any]]:
        out = []
        with lmdb_env(self.path).begin() as txn:
            for local in locals_:
                raw = txn.get(str(self.row_id(local)).encode("ascii"))
                if raw is None:
                    raise DataError(f"{self.label(local)} is missing from the file; the shard is "
                                    "truncated or its deleted_ids are stale: rewrite it.")
                out.append(decode_aselmdb_value(raw, self.label(local)))
        return out

    def read(self, locals_: Sequence[int], **options) -> list[dict[str, Any]]:
        rows = self.read_dicts(locals_)
        return [_row_fields(r, self.label(k), options) for r, k in zip(rows, locals_,
                                                                       strict=True)]


class LegacyLmdbShard(Shard):
    """A legacy OC20 ``*.lmdb`` of pickled PyG ``Data`` under keys ``b"0"..b"n-1"``.

    Unpickling runs code: read only files you trust (``forcefield convert`` rewrites them).
    """

    kind = "lmdb"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        import pickle

        with _peek_env(self.path, "LMDB") as env, env.begin() as txn:
            raw = txn.get(b"length")
            n = int(pickle.loads(raw)) if raw is not None else int(env.stat()["entries"])
            if n and (txn.get(b"0") is None or txn.get(str(n - 1).encode()) is None):
                raise DataError(f"LMDB '{self.path}' does not store its {n} records under the "
                                "keys 0..n-1; rewrite it with forcefield convert.")
        self.length = n

    def read(self, locals_: Sequence[int], **options) -> list[dict[str, Any]]:
        task = options.get("task", "s2ef")
        keys = options.get("lmdb_keys")
        out = []
        with lmdb_env(self.path).begin() as txn:
            for local in locals_:
                label = f"record {local} of '{self.path}'"
                raw = txn.get(str(int(local)).encode())
                if raw is None:
                    raise DataError(f"{label} is missing although the 'length' key says "
                                    f"{self.length}; the LMDB is truncated: rewrite it.")
                fields = fields_from_legacy(unpickle_legacy(raw, label), task=task, keys=keys,
                                            label=label)
                out.append(fields)
        return out


class AseSqliteShard(Shard):
    """An ASE SQLite ``.db`` file; row ids come from one ``SELECT id`` (a numpy array)."""

    kind = "asedb"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        try:
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                ids = [r[0] for r in con.execute("SELECT id FROM systems ORDER BY id")]
            finally:
                con.close()
        except sqlite3.Error as err:
            raise DataError(f"could not read ASE database '{self.path}' ({err}); check that it "
                            "is an ASE .db file.") from err
        self.ids = np.asarray(ids, dtype=np.int64)
        self.length = int(len(self.ids))
        self._db = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_db"] = None
        state["_pid"] = None
        return state

    def _database(self):
        if self._db is None or self._pid != os.getpid():
            import ase.db

            self._db = ase.db.connect(os.fspath(self.path), type="db", create_indices=False,
                                      use_lock_file=False)
            self._pid = os.getpid()
        return self._db

    def label(self, local: int) -> str:
        return f"row {local} (id {int(self.ids[local])}) of '{self.path}'"

    def read(self, locals_: Sequence[int], **options) -> list[dict[str, Any]]:
        db = self._database()
        out = []
        for local in locals_:
            try:
                row = db.get(id=int(self.ids[local]))
            except Exception as err:  # noqa: BLE001 - sqlite / json errors of a bad row
                raise DataError(f"could not read {self.label(local)} ({type(err).__name__}: "
                                f"{err}); check the database.") from err
            out.append(_row_fields(atoms_row_dict(row), self.label(local), options))
        return out


def _row_fields(row: dict, label: str, options: dict) -> dict[str, Any]:
    try:
        return fields_from_row_dict(row, energy_key=options.get("energy_key"),
                                    forces_key=options.get("forces_key"),
                                    stress_key=options.get("stress_key"),
                                    required=tuple(options.get("required", ())), label=label)
    except (KeyError, ValueError, TypeError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{label} is malformed ({type(err).__name__}: {err}); rewrite that "
                        "shard (forcefield convert).") from err


SHARD_TYPES = {".aselmdb": AseLmdbShard, ".lmdb": LegacyLmdbShard, ".db": AseSqliteShard}


def open_shard(path: str | os.PathLike) -> Shard:
    """The shard reader for ``path`` by its suffix (.aselmdb, .lmdb, .db)."""
    path = Path(path)
    cls = SHARD_TYPES.get(path.suffix)
    if cls is None:
        raise DataError(f"'{path}' cannot be streamed (suffix {path.suffix!r}); streaming reads "
                        ".aselmdb, .lmdb and .db files: convert other formats with "
                        f"'forcefield convert {path} -o DIR/' or set data.streaming=false.")
    if not path.is_file():
        raise DataError(f"shard '{path}' does not exist; check the path.")
    return cls(path)
