"""Lazy, indexable datasets over sharded files: OC20-size data with flat memory.

:class:`StreamingDataset` reads a directory (or glob, or list) of ``.aselmdb`` shards
(fairchem's layout), ASE ``.db`` files or legacy OC20 ``*.lmdb`` shards. The parent process
holds only numpy arrays (shard offsets, per-structure atom counts from ``metadata.npz``), so
memory is O(N) bytes and not O(N) Python objects, and nothing is copied-on-read into forked
workers. Each ``__getitem__`` decodes one row straight into graph fields
(:mod:`forcefield.data.rows`, no ``ase.Atoms``) and builds its graph
(:meth:`AtomicData.from_fields`, optionally capped at ``max_neighbors``) in the calling
process: in DataLoader workers during training. ``__getitems__`` reads a batch with one
transaction per shard.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from forcefield.data.atomic_data import AtomicData
from forcefield.data.errors import DataError
from forcefield.data.metadata import read_index, rebuild_hint
from forcefield.data.readers import expand_sources
from forcefield.data.shards import Shard, open_shard

STREAMABLE_SUFFIXES = (".aselmdb", ".lmdb", ".db")
OPTIONAL_KEYS = ("energy", "forces", "stress", "sid", "fid")


def is_streamable(source) -> bool:
    """True when every file of ``source`` is an LMDB/ASE-db shard (the streaming formats)."""
    try:
        paths = expand_sources(source)
    except DataError:
        return False
    return bool(paths) and all(p.suffix in STREAMABLE_SUFFIXES for p in paths)


class StreamingDataset(Dataset):
    """Structures of sharded files, read and turned into graphs on demand.

    Args:
        source: a directory, glob, file or list of those (``.aselmdb``, ``.lmdb``, ``.db``).
        r_max: neighbour cutoff in Angstrom.
        max_neighbors: keep each atom's k nearest neighbours (None: all within r_max).
        task: "s2ef" or "is2re" (legacy LMDB key mapping; IS2RE drops forces and stress).
        required: labels every structure must have (a missing one is an error naming the
            row); None: energy and forces for S2EF, energy for IS2RE.
        energy_key / forces_key / stress_key: label names (default: the calculator fields).
        lmdb_keys: legacy LMDB key mapping overrides.
        cache_dir: where ``metadata.npz`` goes when the data directory is read-only.
        name: used in messages ("training data", ...).
    """

    def __init__(
        self,
        source,
        r_max: float,
        *,
        max_neighbors: int | None = None,
        task: str = "s2ef",
        required: Sequence[str] | None = None,
        energy_key: str | None = None,
        forces_key: str | None = None,
        stress_key: str | None = None,
        lmdb_keys: Mapping[str, str | None] | None = None,
        neighbour_backend: str = "vesin",
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        name: str = "dataset",
    ) -> None:
        if task not in ("s2ef", "is2re"):
            raise DataError(f"task must be 's2ef' or 'is2re', got {task!r}.")
        paths = expand_sources(source)
        self.shards: list[Shard] = [open_shard(p) for p in paths]
        lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if self.offsets[-1] == 0:
            raise DataError(f"{name} ({source!r}) holds no structures; check the shards.")
        self._natoms, self.all_species = read_index(self.shards, cache_dir=cache_dir,
                                                    progress=progress)
        self.indices: np.ndarray | None = None  # a subset view (seeded samples)
        self.r_max = float(r_max)
        self.max_neighbors = None if max_neighbors is None else int(max_neighbors)
        self.task = task
        if required is None:
            required = ("energy", "forces") if task == "s2ef" else ("energy",)
        self.required = tuple(required)
        self.drop = ("forces", "stress") if task == "is2re" else ()
        self.options = {"task": task, "lmdb_keys": dict(lmdb_keys) if lmdb_keys else None,
                        "energy_key": energy_key, "forces_key": forces_key,
                        "stress_key": stress_key, "required": self.required}
        self.neighbour_backend = neighbour_backend
        self.name = name
        self.source = source

    # ------------------------------------------------------------------ size
    def __len__(self) -> int:
        return int(self.offsets[-1]) if self.indices is None else int(len(self.indices))

    @property
    def natoms(self) -> np.ndarray:
        """int32 atom count of every structure, in dataset order (from the metadata)."""
        return self._natoms if self.indices is None else self._natoms[self.indices]

    @property
    def species(self) -> list[int] | None:
        """Every element of the shards (from the metadata; None when it does not say)."""
        return self.all_species

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.shards]

    def subset(self, indices) -> StreamingDataset:
        """A view on the structures ``indices`` (of this dataset); shares the shards."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} structures")
        view = object.__new__(StreamingDataset)
        view.__dict__.update(self.__dict__)
        view.indices = indices if self.indices is None else self.indices[indices]
        return view

    # ------------------------------------------------------------------ reading
    def _global(self, idx: int) -> int:
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} structures")
        return int(idx) if self.indices is None else int(self.indices[idx])

    def locate(self, idx: int) -> tuple[Shard, int]:
        """(shard, local row) of dataset index ``idx``."""
        g = self._global(idx)
        k = int(np.searchsorted(self.offsets, g, side="right") - 1)
        return self.shards[k], g - int(self.offsets[k])

    def fields(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Decoded fields of ``indices`` (one transaction per shard), in that order."""
        globals_ = np.array([self._global(int(i)) for i in indices], dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, globals_, side="right") - 1
        out: list[dict[str, Any] | None] = [None] * len(globals_)
        for k in np.unique(shard_of):
            where_ = np.nonzero(shard_of == k)[0]
            locals_ = (globals_[where_] - self.offsets[k]).tolist()
            rows = self.shards[k].read(locals_, **self.options)
            for pos, local, g, fields in zip(where_, locals_, globals_[where_], rows,
                                             strict=True):
                self._check(fields, self.shards[k], local, int(g))
                out[pos] = fields
        return out  # type: ignore[return-value]

    def _check(self, fields: dict, shard: Shard, local: int, g: int) -> None:
        n = len(fields["numbers"])
        if n != int(self._natoms[g]):
            raise DataError(f"{shard.label(local)} has {n} atoms but the metadata says "
                            f"{int(self._natoms[g])}; the metadata does not match the data: "
                            + rebuild_hint(shard.path.parent) + ".")
        for key in self.drop:
            fields.pop(key, None)
        if "forces" in self.required and fields.get("forces") is None:
            raise DataError(f"{shard.label(local)} has no forces (task {self.task!r}); choose "
                            "task=is2re for energy-only data or pass forces_key / lmdb_keys.")

    def graph(self, fields: dict[str, Any], shard: Shard, local: int) -> AtomicData:
        return AtomicData.from_fields(fields, self.r_max, max_neighbors=self.max_neighbors,
                                      backend=self.neighbour_backend,
                                      source=f"shard '{shard.path}'", index=local)

    def __getitem__(self, idx: int) -> AtomicData:
        shard, local = self.locate(int(idx))
        return self.graph(self.fields([idx])[0], shard, local)

    def __getitems__(self, indices: Sequence[int]) -> list[AtomicData]:
        fields = self.fields(indices)
        out = []
        for idx, f in zip(indices, fields, strict=True):
            shard, local = self.locate(int(idx))
            out.append(self.graph(f, shard, local))
        return out

    def __repr__(self) -> str:
        return (f"StreamingDataset({len(self)} structures in {len(self.shards)} shard(s), "
                f"r_max={self.r_max}, max_neighbors={self.max_neighbors}, task={self.task!r})")


def collate_graphs(graphs: list[AtomicData]):
    """PyG batch of ``graphs``; optional labels carried by only some of them are dropped
    from this batch (streamed data cannot be harmonised in advance)."""
    from torch_geometric.data import Batch

    for key in OPTIONAL_KEYS:
        have = [key in g for g in graphs]
        if any(have) and not all(have):
            graphs = [g.clone() if key in g else g for g in graphs]
            for g in graphs:
                if key in g:
                    del g[key]
    return Batch.from_data_list(graphs)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy seeded from torch's per-worker seed."""
    np.random.seed(torch.initial_seed() % 2**32)
