"""Per-structure atom counts of sharded data: fairchem-compatible ``metadata.npz``.

The file lies beside the shards and holds ``natoms`` (int32, one entry per structure, in
sorted-shard order), which fairchem reads as is. forcefield adds ``shard_names`` and
``shard_lengths`` so that a subset of a directory's shards (a glob) can be sliced out and a
file that no longer matches its shards is caught, and ``shard_species`` (which elements
each shard holds), so that statistics from a sample know every element of the data. A
missing file is built once in one streaming pass (with a progress bar) and written beside
the shards, or into the cache directory when the data directory is read-only; the dataset
is never held in memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from forcefield.atomic_io import atomic_path
from forcefield.data.errors import DataError
from forcefield.data.shards import Shard, close_lmdb_envs, open_shard

METADATA_NAME = "metadata.npz"


SUFFIXES = (".aselmdb", ".lmdb", ".db")


def _streamable(directory: Path, suffix: str | None = None) -> list[Path]:
    """The shard files of ``directory`` (all streamable suffixes, or one), sorted by name."""
    suffixes = SUFFIXES if suffix is None else (suffix,)
    return sorted(p for p in directory.iterdir()
                  if p.suffix in suffixes and p.is_file() and not p.name.endswith("-lock"))


def rebuild_hint(directory: Path) -> str:
    return (f"rebuild it with 'forcefield convert --index {directory}' (or delete "
            f"{directory / METADATA_NAME} and it is rebuilt on the next run)")


MAX_Z = 119


def read_index(shards: Sequence[Shard], cache_dir: str | os.PathLike | None = None,
               progress: bool = True, build: bool = True) -> tuple[np.ndarray, list[int] | None]:
    """(int32 atom counts of every structure of ``shards`` in order, the elements they hold
    or None when a metadata file does not record them), from the metadata files.

    Shards are grouped by directory; each directory's ``metadata.npz`` (or its cached copy)
    covers that directory's shards. A missing file is built when ``build``.
    """
    groups: dict[Path, list[Shard]] = {}
    for shard in shards:
        groups.setdefault(shard.path.parent, []).append(shard)
    per_path: dict[Path, tuple[np.ndarray, np.ndarray | None]] = {}
    for directory, members in groups.items():
        per_path.update(_directory_natoms(directory, members, cache_dir, progress, build))
    if not shards:
        return np.zeros(0, dtype=np.int32), []
    natoms = np.concatenate([per_path[s.path][0] for s in shards]).astype(np.int32, copy=False)
    masks = [per_path[s.path][1] for s in shards]
    if any(m is None for m in masks):
        return natoms, None
    return natoms, [int(z) for z in np.nonzero(np.any(masks, axis=0))[0]]


def _directory_natoms(directory: Path, members: list[Shard], cache_dir,
                      progress: bool, build: bool) -> dict[Path, tuple]:
    """{shard path: (natoms, species mask or None)} for ``members`` from the directory's
    metadata (built if missing)."""
    all_paths = _streamable(directory)
    lengths = {s.path: len(s) for s in members}
    path = _find_metadata(directory, all_paths, cache_dir)
    if path is None:
        if not build:
            raise DataError(f"no {METADATA_NAME} for the shards in '{directory}'; "
                            + rebuild_hint(directory) + ".")
        path = build_metadata(directory, cache_dir=cache_dir, progress=progress)
    return _slice(path, directory, all_paths, members, lengths)


def _cache_file(directory: Path, all_paths: Sequence[Path], cache_dir) -> Path:
    from forcefield.data.statistics import default_cache_dir

    h = hashlib.sha256()
    for p in all_paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return Path(cache_dir or default_cache_dir()) / "metadata" / f"{h.hexdigest()[:24]}.npz"


def _find_metadata(directory: Path, all_paths: Sequence[Path], cache_dir) -> Path | None:
    beside = directory / METADATA_NAME
    if beside.is_file():
        return beside
    cached = _cache_file(directory, all_paths, cache_dir)
    return cached if cached.is_file() else None


def _slice(path: Path, directory: Path, all_paths: Sequence[Path], members: Sequence[Shard],
           lengths: dict[Path, int]) -> dict[Path, tuple]:
    try:
        with np.load(path, allow_pickle=False) as f:
            natoms = np.asarray(f["natoms"]).astype(np.int32)
            names = [str(x) for x in f["shard_names"]] if "shard_names" in f else None
            shard_lengths = (np.asarray(f["shard_lengths"], np.int64) if "shard_lengths" in f
                             else None)
            species = (np.asarray(f["shard_species"], dtype=bool) if "shard_species" in f
                       else None)
    except Exception as err:  # noqa: BLE001 - zip/npz/key errors of a damaged file
        raise DataError(f"'{path}' is not a readable metadata file ({type(err).__name__}: "
                        f"{err}); " + rebuild_hint(directory) + ".") from err
    out: dict[Path, tuple] = {}
    if names is None or shard_lengths is None:  # a fairchem file: every shard of one kind
        suffixes = {s.path.suffix for s in members}
        if len(suffixes) > 1:
            raise DataError(f"'{path}' has no shard names, so it cannot describe the mixed "
                            f"shard kinds {sorted(suffixes)} of '{directory}'; "
                            + rebuild_hint(directory) + ".")
        all_paths = _streamable(directory, suffixes.pop())
        counts = [lengths[p] if p in lengths else len(open_shard(p)) for p in all_paths]
        if sum(counts) != len(natoms):
            raise DataError(f"'{path}' lists {len(natoms)} structures but the {len(all_paths)} "
                            f"shards in '{directory}' hold {sum(counts)}; the metadata does not "
                            "match the data: " + rebuild_hint(directory) + ".")
        names = [p.name for p in all_paths]
        shard_lengths = np.asarray(counts, dtype=np.int64)
        species = None
    if int(shard_lengths.sum()) != len(natoms):
        raise DataError(f"'{path}' is inconsistent (shard lengths sum to "
                        f"{int(shard_lengths.sum())}, natoms has {len(natoms)}); "
                        + rebuild_hint(directory) + ".")
    offsets = np.concatenate([[0], np.cumsum(shard_lengths)])
    where_ = {name: k for k, name in enumerate(names)}
    for shard in members:
        k = where_.get(shard.path.name)
        if k is None:
            raise DataError(f"'{path}' does not list shard '{shard.path.name}'; the metadata "
                            "does not match the data: " + rebuild_hint(directory) + ".")
        if int(shard_lengths[k]) != lengths[shard.path]:
            raise DataError(f"'{path}' says shard '{shard.path.name}' holds "
                            f"{int(shard_lengths[k])} structures but it holds "
                            f"{lengths[shard.path]}; the metadata does not match the data: "
                            + rebuild_hint(directory) + ".")
        out[shard.path] = (natoms[offsets[k]:offsets[k + 1]],
                           None if species is None else species[k])
    return out


def build_metadata(directory: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                   progress: bool = True, force_cache: bool = False) -> Path:
    """Count the atoms of every structure of the shards in ``directory`` in one streaming pass;
    write ``metadata.npz`` beside them (or into the cache when the directory is read-only)."""
    from tqdm.auto import tqdm

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"'{directory}' is not a directory of shards; check the path.")
    paths = _streamable(directory)
    if not paths:
        raise DataError(f"'{directory}' holds no .aselmdb, .lmdb or .db shards to index.")
    shards = [open_shard(p) for p in paths]
    total = sum(len(s) for s in shards)
    natoms = np.zeros(total, dtype=np.int32)
    species = np.zeros((len(shards), MAX_Z), dtype=bool)
    k = 0
    with tqdm(total=total, desc=f"indexing {directory.name or directory}", unit="structures",
              disable=not progress, mininterval=1.0) as bar:
        for s, shard in enumerate(shards):
            for start in range(0, len(shard), 512):
                stop = min(start + 512, len(shard))
                for numbers in _row_numbers(shard, range(start, stop)):
                    natoms[k] = len(numbers)
                    species[s, numbers] = True
                    k += 1
                bar.update(stop - start)
            close_lmdb_envs(shard.path)  # a sequential pass: keep no handle
    arrays = {"natoms": natoms, "shard_names": np.array([p.name for p in paths]),
              "shard_lengths": np.array([len(s) for s in shards], dtype=np.int64),
              "shard_species": species}
    target = directory / METADATA_NAME
    if force_cache or not os.access(directory, os.W_OK):
        target = _cache_file(directory, paths, cache_dir)
    write_metadata(target, **arrays)
    return target


def _row_numbers(shard: Shard, locals_) -> list[np.ndarray]:
    """The atomic numbers of some rows (labels are not parsed)."""
    if shard.kind == "aselmdb":
        rows = [d["numbers"] for d in shard.read_dicts(locals_)]
    else:
        rows = [f["numbers"] for f in shard.read(locals_, task="is2re",
                                                 lmdb_keys={"energy": None})]
    return [np.asarray(z, dtype=np.int64).reshape(-1) for z in rows]


def write_metadata(path: str | os.PathLike, **arrays) -> None:
    """Write a metadata ``.npz`` atomically (never a half-written file)."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
