"""Write structures as sharded ``.aselmdb`` files plus ``metadata.npz`` (fairchem's layout).

:class:`ShardedAseLmdbWriter` streams: it holds one open shard and the atom counts (an int32
per structure), never the structures. Shards are ``data.0000.aselmdb``, ``data.0001...``,
each written through ase-db-backends (so fairchem and ASE read them), ``shard_size``
structures each. Everything goes into a temporary sibling directory that is renamed onto the
target at :meth:`close`: an interrupted conversion leaves no half-written data set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms

from forcefield.data.errors import DataError
from forcefield.data.metadata import MAX_Z, METADATA_NAME, write_metadata


def _require_backend() -> None:
    try:
        import ase_db_backends  # noqa: F401
    except ImportError as err:
        raise DataError("writing .aselmdb needs the optional package ase-db-backends: "
                        "pip install 'forcefield[oc20]'.") from err


class ShardedAseLmdbWriter:
    """Write ``ase.Atoms`` one at a time into ``directory`` as ``.aselmdb`` shards.

    Args:
        directory: the output directory (must not exist unless ``overwrite``).
        shard_size: structures per shard.
        prefix: shard file name prefix (``data`` gives ``data.0000.aselmdb``).
        overwrite: replace an existing output directory.

    Use as a context manager; ``write(atoms, key_value_pairs, data)`` per structure.
    """

    def __init__(self, directory: str | os.PathLike, shard_size: int = 10000,
                 prefix: str = "data", overwrite: bool = False) -> None:
        _require_backend()
        self.directory = Path(directory)
        if int(shard_size) < 1:
            raise DataError(f"shard_size must be at least 1, got {shard_size!r}.")
        if self.directory.exists() and not overwrite:
            raise DataError(f"output '{self.directory}' exists; pass overwrite=true "
                            "(--overwrite) or choose another directory.")
        self.shard_size = int(shard_size)
        self.prefix = prefix
        self.overwrite = overwrite
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.",
                                          dir=self.directory.parent))
        self._db = None
        self._shard_names: list[str] = []
        self._shard_lengths: list[int] = []
        self._natoms: list[np.ndarray] = []
        self._chunk: list[int] = []
        self._species: list[np.ndarray] = []
        self.count = 0

    def __enter__(self) -> ShardedAseLmdbWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open_next(self) -> None:
        import ase.db

        self._close_shard()
        name = f"{self.prefix}.{len(self._shard_names):04d}.aselmdb"
        self._db = ase.db.connect(str(self._tmp / name), type="aselmdb", use_lock_file=False)
        self._db.__enter__()  # one write transaction per shard
        self._shard_names.append(name)
        self._shard_lengths.append(0)
        self._species.append(np.zeros(MAX_Z, dtype=bool))

    def _close_shard(self) -> None:
        if self._db is not None:
            self._db.__exit__(None, None, None)
            self._db = None

    def write(self, atoms: Atoms, key_value_pairs: dict | None = None,
              data: dict | None = None) -> None:
        """Append one structure (labels from its calculator, FixAtoms, tags kept)."""
        if self._db is None or self._shard_lengths[-1] >= self.shard_size:
            self._open_next()
        self._db.write(atoms, key_value_pairs=key_value_pairs or {}, data=data or {})
        self._shard_lengths[-1] += 1
        self._species[-1][atoms.numbers] = True
        self._chunk.append(len(atoms))
        if len(self._chunk) >= 65536:
            self._natoms.append(np.asarray(self._chunk, dtype=np.int32))
            self._chunk = []
        self.count += 1

    def close(self) -> Path:
        """Finish the last shard, write ``metadata.npz`` and move the result into place."""
        self._close_shard()
        if self.count == 0:
            self.abort()
            raise DataError("no structures to write; check the input sources.")
        natoms = np.concatenate(self._natoms + [np.asarray(self._chunk, dtype=np.int32)])
        write_metadata(self._tmp / METADATA_NAME, natoms=natoms,
                       shard_names=np.array(self._shard_names),
                       shard_lengths=np.array(self._shard_lengths, dtype=np.int64),
                       shard_species=np.array(self._species))
        for leftover in self._tmp.glob("*-lock"):
            leftover.unlink()
        if self.directory.exists():
            shutil.rmtree(self.directory)
        os.replace(self._tmp, self.directory)
        return self.directory

    def abort(self) -> None:
        """Drop everything written so far."""
        try:
            self._close_shard()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
