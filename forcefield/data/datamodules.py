"""LightningDataModules: 3BPA, OC20 and any ASE-readable files.

All three take plain arguments (Hydra ``_target_`` friendly), expose ``statistics`` (a
:class:`DatasetStatistics` of the training split, cached per dataset) after
``setup("fit")`` or via :meth:`compute_statistics`, and ``test_split_names`` in the order
``test_dataloader()`` returns its loaders.

Two paths, chosen per split by ``streaming`` ("auto": LMDB / ASE-db sources stream):
* in memory (small data: 3BPA, extxyz files): every graph is built once in ``setup``, so a
  batch is just PyG collation;
* streaming (OC20 scale): a :class:`StreamingDataset` holds numpy indices only, DataLoader
  workers read rows and build graphs, a :class:`BudgetBatchSampler` packs batches by atom
  budget (``max_atoms``) or size, and statistics come from the config, a cache or a bounded
  seeded sample (``stats_samples``), never from a full pass.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch_geometric.loader import DataLoader

from forcefield.data.errors import DataError
from forcefield.data.graphs import build_graphs
from forcefield.data.paths import embedded_3bpa_dir, embedded_oc20_dir
from forcefield.data.readers import expand_sources, iter_records, read_ase_file
from forcefield.data.sampler import BudgetBatchSampler
from forcefield.data.statistics import (
    DatasetStatistics,
    StatisticsAccumulator,
    cached_statistics,
    compute_statistics,
    e0s_from_isolated_atoms,
    fingerprint,
    given_statistics,
    sample_indices,
    statistics_from_config,
)
from forcefield.data.streaming import StreamingDataset, collate_graphs, is_streamable, seed_worker

log = logging.getLogger(__name__)
STREAMING_CHOICES = ("auto", True, False)

THREEBPA_TRAIN_SETS = ("300K", "mixedT")
THREEBPA_TEST_SPLITS = ("300K", "600K", "1200K", "dih")
_THREEBPA_TEST_FILES = {
    "300K": ("test_300K.xyz", "derived_mdbenchgnn/test_300K.xyz"),
    "600K": ("test_600K.xyz", "derived_mdbenchgnn/test_600K.xyz"),
    "1200K": ("test_1200K.xyz", "derived_mdbenchgnn/test_1200K.xyz"),
    "dih": ("test_dih.xyz", "test_dih_beta.xyz"),
}


def plain_container(x):
    """OmegaConf containers -> plain Python (lists / dicts); other values unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(x, (DictConfig, ListConfig)):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return x


class AtomisticDataModule(L.LightningDataModule):
    """Shared loader/statistics logic; use one of the concrete subclasses.

    Common args:
        r_max: neighbour cutoff in Angstrom (must match the model's ``r_max``).
        batch_size: training batch size; ``valid_batch_size`` (default: same) for valid/test.
        num_workers: DataLoader workers; None = 0 for in-memory data (graphs are precomputed
            at setup) and 1 for streamed data (a worker reads and builds graphs while the
            model trains).
        seed: seeds the train/valid split and the training shuffle.
        energy_key / forces_key / stress_key: label names (None: calculator results, then
            info/arrays "energy"/"REF_energy", ...).
        nan_policy: "error" (default) or "skip" structures with NaN/inf labels.
        e0s: dict Z->eV, path of an isolated-atoms file, "least_squares", or None/"zero".
        cache_dir: where statistics are cached (None: $FORCEFIELD_CACHE_DIR or
            ~/.cache/forcefield); ``stats_cache=False`` keeps them in memory only.
        pin_memory: passed to the DataLoaders.
        neighbour_backend: "vesin" (default) or "ase".
        max_neighbors: keep each atom's k nearest neighbours (None: all within r_max).
        max_atoms: pack batches up to this many atoms (None: fixed ``batch_size``).
        streaming: "auto" (LMDB / ASE-db sources stream), True or False.
        stats_samples: streaming statistics from a seeded sample of this many training
            structures (None: all of them).
        statistics: given values (``species``, ``e0s``, ``mean_interaction_energy_per_atom``,
            ``force_rms``, ``avg_num_neighbors``, normaliser ``energy_mean``/``energy_std``/
            ``force_std``); they take precedence, and when complete no data is read.
        valid_samples: validate on a seeded subset of this many structures.
        test_samples: test on seeded subsets (an int for every split, or name -> int).
        persistent_workers / prefetch_factor / multiprocessing_context: DataLoader worker
            settings (context default "fork" on Linux, else "spawn").
        progress: show progress bars (metadata indexing, statistics sample).
    """

    required_labels: tuple[str, ...] = ("energy", "forces")

    def __init__(
        self,
        r_max: float = 5.0,
        batch_size: int = 8,
        valid_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        energy_key: str | None = None,
        forces_key: str | None = None,
        stress_key: str | None = None,
        nan_policy: str = "error",
        e0s: Mapping | str | None = "least_squares",
        cache_dir: str | None = None,
        stats_cache: bool = True,
        pin_memory: bool = False,
        neighbour_backend: str = "vesin",
        max_neighbors: int | None = None,
        max_atoms: int | None = None,
        streaming: bool | str = "auto",
        stats_samples: int | None = 20000,
        statistics: Mapping | None = None,
        valid_samples: int | None = None,
        test_samples: int | Mapping | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int | None = 2,
        multiprocessing_context: str | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if not float(r_max) > 0:
            raise DataError(f"r_max must be positive, got {r_max!r}.")
        if int(batch_size) < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size!r}.")
        self.r_max = float(r_max)
        self.batch_size = int(batch_size)
        self.valid_batch_size = int(valid_batch_size or batch_size)
        self.num_workers = None if num_workers is None else int(num_workers)
        self.seed = int(seed)
        self.energy_key = energy_key
        self.forces_key = forces_key
        self.stress_key = stress_key
        self.nan_policy = nan_policy
        self.e0s = plain_container(e0s)
        self.cache_dir = cache_dir
        self.stats_cache = bool(stats_cache)
        self.pin_memory = bool(pin_memory)
        self.neighbour_backend = neighbour_backend
        if streaming not in STREAMING_CHOICES:
            raise DataError(f"streaming must be auto, true or false, got {streaming!r}.")
        self.streaming = streaming
        self.max_neighbors = None if max_neighbors is None else int(max_neighbors)
        if self.max_neighbors is not None and self.max_neighbors < 1:
            raise DataError(f"max_neighbors must be a positive integer or null, got "
                            f"{max_neighbors!r}.")
        self.max_atoms = None if max_atoms is None else int(max_atoms)
        if self.max_atoms is not None and self.max_atoms < 1:
            raise DataError(f"max_atoms must be a positive integer or null, got {max_atoms!r}.")
        self.stats_samples = None if stats_samples is None else int(stats_samples)
        self.given_statistics = plain_container(statistics)
        given_statistics(self.given_statistics)  # unknown keys fail here, at construction
        self.valid_samples = None if valid_samples is None else int(valid_samples)
        self.test_samples = plain_container(test_samples)
        self.persistent_workers = bool(persistent_workers)
        self.prefetch_factor = prefetch_factor
        contexts = multiprocessing.get_all_start_methods()
        if multiprocessing_context is None:
            multiprocessing_context = "fork" if "fork" in contexts else "spawn"
        if multiprocessing_context not in contexts:
            raise DataError(f"multiprocessing_context must be one of {contexts}, got "
                            f"{multiprocessing_context!r}.")
        self.multiprocessing_context = multiprocessing_context
        self.progress = bool(progress)
        self.train_data: list | StreamingDataset | None = None
        self.valid_data: list | StreamingDataset | None = None
        self.test_data: dict[str, list | StreamingDataset] = {}
        self._statistics: DatasetStatistics | None = None

    # ------------------------------------------------------------------ hooks
    def _build(self, records, name: str, required: Sequence[str] | None = None) -> list:
        return build_graphs(
            records, self.r_max, required=self.required_labels if required is None else required,
            energy_key=self.energy_key, forces_key=self.forces_key, stress_key=self.stress_key,
            nan_policy=self.nan_policy, backend=self.neighbour_backend, name=name,
            max_neighbors=self.max_neighbors)

    def _streams(self, source) -> bool:
        """Whether ``source`` is read lazily (see ``streaming``)."""
        if self.streaming is False:
            return False
        if self.streaming is True:
            return True  # StreamingDataset names any file it cannot stream
        return is_streamable(source)

    def _stream(self, source, name: str) -> StreamingDataset:
        """A :class:`StreamingDataset` of ``source`` with this module's options."""
        if self.nan_policy != "error":
            raise DataError(f"nan_policy={self.nan_policy!r} is not available for streamed data "
                            f"({name}): rewrite the data without non-finite values, or set "
                            "data.streaming=false for small data.")
        return StreamingDataset(
            source, self.r_max, max_neighbors=self.max_neighbors, task=self._task(),
            required=self.required_labels, energy_key=self.energy_key,
            forces_key=self.forces_key, stress_key=self.stress_key, lmdb_keys=self._lmdb_keys(),
            neighbour_backend=self.neighbour_backend, cache_dir=self.cache_dir,
            progress=self.progress, name=name)

    def _task(self) -> str:
        return "s2ef"

    def _lmdb_keys(self):
        return None

    @staticmethod
    def _sampled(data, n: int | None, seed: int, what: str):
        """A seeded subset of ``n`` structures of ``data`` (a list or StreamingDataset)."""
        if n is None or n >= len(data):
            return data
        if n < 1:
            raise DataError(f"{what} must be a positive integer or null, got {n}.")
        idx = sample_indices(len(data), n, seed)
        if isinstance(data, StreamingDataset):
            return data.subset(idx)
        return [data[i] for i in idx]

    def _test_sample_size(self, name: str) -> int | None:
        if self.test_samples is None:
            return None
        if isinstance(self.test_samples, Mapping):
            value = self.test_samples.get(name)
            return None if value is None else int(value)
        return int(self.test_samples)

    def _setup_fit(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _setup_test(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_sources(self) -> list[Path]:  # for the statistics cache key
        return []

    @property
    def test_split_names(self) -> list[str]:
        """Names of the test splits, in the order of ``test_dataloader()``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build graphs: train/valid for "fit"/"validate" (plus statistics), tests for "test"."""
        if stage in (None, "fit", "validate") and self.train_data is None:
            self._setup_fit()
            if self.valid_data is not None:
                self.valid_data = self._sampled(self.valid_data, self.valid_samples,
                                                self.seed + 2, "valid_samples")
            self._statistics = None
            self.compute_statistics()
        if stage in (None, "test", "predict") and not self.test_data:
            self._setup_test()
            for name in list(self.test_data):
                self.test_data[name] = self._sampled(self.test_data[name],
                                                     self._test_sample_size(name),
                                                     self.seed + 3, f"test_samples[{name}]")

    # ------------------------------------------------------------------ statistics
    def _resolve_e0s(self):
        e0s = self.e0s
        if isinstance(e0s, (str, os.PathLike)) and str(e0s) not in ("least_squares", "zero"):
            path = Path(e0s)
            if not path.exists():
                raise DataError(f"e0s file '{path}' does not exist; give a path to an "
                                "isolated-atoms file, a dict Z->eV, 'least_squares' or 'zero'.")
            return e0s_from_isolated_atoms((a for a, _, _ in read_ase_file(path)), str(path),
                                           self.energy_key), "isolated_atoms"
        return e0s, None

    def compute_statistics(self) -> DatasetStatistics:
        """Statistics of the training split (float64), cached per dataset and options.

        Precedence: values given in ``statistics`` (no pass when they are complete), then
        the cache, then the data: every structure in memory, or a seeded sample of
        ``stats_samples`` streamed through the DataLoader workers. The source and sample
        size are recorded in ``statistics.extra``.
        """
        if self._statistics is not None:
            return self._statistics
        fields, extra = given_statistics(self.given_statistics)
        complete = statistics_from_config(fields)
        if complete is not None:
            complete.extra = {**extra, "source": "config"}
            complete.r_max = self.r_max
            log.info("statistics: all values given in data.statistics (no pass over the data)")
            self._statistics = complete
            return complete
        if self.train_data is None:
            self._setup_fit()
        e0s, src = self._resolve_e0s()
        if "e0s" in fields:
            e0s, src = fields["e0s"], "given"
        streamed = isinstance(self.train_data, StreamingDataset)
        n_sample = min(len(self.train_data), self.stats_samples or len(self.train_data)) \
            if streamed else len(self.train_data)
        key = fingerprint(
            self._fit_sources(), cls=type(self).__name__, r_max=self.r_max, e0s=e0s,
            n=len(self.train_data), split=self._split_signature(),
            keys=(self.energy_key, self.forces_key), nan=self.nan_policy,
            max_neighbors=self.max_neighbors, sample=n_sample if streamed else None)
        computed = []

        def compute():
            computed.append(True)
            if streamed:
                stats = self._sample_statistics(e0s, src, n_sample)
            else:
                stats = compute_statistics(self.train_data, e0s, r_max=self.r_max,
                                           e0s_source=src)
                stats.extra = {"sample_size": len(self.train_data)}
            return stats

        stats = cached_statistics(key, compute, self.cache_dir, self.stats_cache)
        stats = DatasetStatistics.from_dict(stats.to_dict())  # the cached copy stays intact
        source = ("sample" if streamed and n_sample < len(self.train_data) else "full") \
            if computed else "cache"
        for name, value in fields.items():
            if name == "e0s":
                continue
            setattr(stats, name, value)
        stats.extra = {**stats.extra, **extra, "source": source,
                       "given": sorted(fields) + sorted(extra)}
        log.info("statistics: %s (%d of %d training structures)", source,
                 stats.extra.get("sample_size", n_sample), len(self.train_data))
        self._statistics = stats
        return stats

    def _sample_statistics(self, e0s, e0s_source, n_sample: int) -> DatasetStatistics:
        """Float64 statistics of a seeded sample streamed through the DataLoader workers."""
        from tqdm.auto import tqdm

        data = self.train_data.subset(sample_indices(len(self.train_data), n_sample, self.seed))
        sampler = BudgetBatchSampler(data.natoms, batch_size=max(self.batch_size, 16),
                                     shuffle=False, pad=False)
        acc = StatisticsAccumulator()
        loader = self._make_loader(data, sampler, persistent=False)
        for batch in tqdm(loader, desc="statistics", unit="batches", disable=not self.progress,
                          mininterval=1.0):
            acc.update(batch)
        missing = sorted(set(self.train_data.species or []) - set(acc.species()))
        if missing and isinstance(e0s, str) and e0s == "least_squares":
            from ase.data import chemical_symbols

            raise DataError(
                f"element(s) {', '.join(chemical_symbols[z] for z in missing)} occur in the "
                f"training shards but not in the statistics sample of {n_sample} structures, "
                "so their E0s cannot be fitted; raise data.stats_samples or give data.e0s (a "
                "dict Z->eV, or null for referenced energies such as OC20's).")
        stats = acc.finish(e0s, r_max=self.r_max, e0s_source=e0s_source,
                           extra={"sample_size": int(n_sample), "sample_seed": self.seed})
        return _add_unsampled_species(stats, missing, e0s)

    def _split_signature(self) -> str:
        return f"seed={self.seed}"

    @property
    def statistics(self) -> DatasetStatistics:
        """Training-set statistics (computed on first access if ``setup`` did not)."""
        return self.compute_statistics()

    # ------------------------------------------------------------------ loaders
    def _workers(self, data) -> int:
        if self.num_workers is not None:
            return self.num_workers
        return 1 if isinstance(data, StreamingDataset) else 0

    def _make_loader(self, data, batch_sampler: BudgetBatchSampler, persistent: bool = True):
        """A torch DataLoader over ``data`` with a batch sampler and this module's workers."""
        from torch.utils.data import DataLoader as TorchLoader

        workers = self._workers(data)
        kwargs = {}
        if workers > 0:
            kwargs = {"persistent_workers": self.persistent_workers and persistent,
                      "prefetch_factor": self.prefetch_factor,
                      "multiprocessing_context": self.multiprocessing_context,
                      "worker_init_fn": seed_worker}
        return TorchLoader(data, batch_sampler=batch_sampler, num_workers=workers,
                           collate_fn=collate_graphs, pin_memory=self.pin_memory, **kwargs)

    def _loader(self, data, shuffle: bool, batch_size: int):
        if isinstance(data, StreamingDataset) or self.max_atoms is not None:
            natoms = data.natoms if isinstance(data, StreamingDataset) else np.array(
                [int(g.num_nodes) for g in data], dtype=np.int32)
            sampler = BudgetBatchSampler(
                natoms, max_atoms=self.max_atoms, batch_size=batch_size, shuffle=shuffle,
                seed=self.seed, pad=shuffle)
            if sampler.oversized:
                log.warning("%d structure(s) have more atoms than data.max_atoms=%d; each gets "
                            "a batch of its own", sampler.oversized, self.max_atoms)
            return self._make_loader(data, sampler)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        workers = self._workers(data)
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                          num_workers=workers, pin_memory=self.pin_memory,
                          persistent_workers=workers > 0, generator=generator)

    def train_dataloader(self) -> DataLoader:
        if self.train_data is None:
            self.setup("fit")
        return self._loader(self.train_data, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        if self.valid_data is None:
            self.setup("fit")
        return self._loader(self.valid_data, False, self.valid_batch_size)

    def test_dataloader(self) -> list[DataLoader]:
        if not self.test_data:
            self.setup("test")
        return [self._loader(self.test_data[name], False, self.valid_batch_size)
                for name in self.test_split_names]

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()


def _add_unsampled_species(stats: DatasetStatistics, missing: Sequence[int],
                           e0s) -> DatasetStatistics:
    """Give the model the elements of the shards (from their metadata) that the statistics
    sample missed, with zero or given E0s: a rare element must not stop training mid-epoch."""
    if not missing:
        return stats
    given = dict(e0s) if isinstance(e0s, Mapping) else {}
    uncovered = [z for z in missing if isinstance(e0s, Mapping) and z not in given]
    if uncovered:
        from ase.data import chemical_symbols

        raise DataError(f"the E0s given do not cover element(s) "
                        f"{', '.join(chemical_symbols[z] for z in uncovered)} of the training "
                        "shards; add their isolated-atom energies.")
    stats.species = sorted(set(stats.species) | set(missing))
    stats.e0s = {z: float(given.get(z, stats.e0s.get(z, 0.0))) for z in stats.species}
    stats.extra["species_from_metadata"] = list(missing)
    return stats


def _split_indices(n: int, n_valid: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def _fraction_split(data, fraction: float, seed: int, what: str) -> tuple:
    """A seeded (train, held-out) split of a list or a StreamingDataset (views, no copies)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{what} must be between 0 and 1 (exclusive), got {fraction!r}.")
    n_valid = max(1, int(round(fraction * len(data))))
    if n_valid >= len(data):
        raise DataError(f"splitting {len(data)} structure(s) with {what}={fraction} leaves an "
                        "empty training split; provide more data or an explicit valid set.")
    train_idx, valid_idx = _split_indices(len(data), n_valid, seed)
    if isinstance(data, StreamingDataset):
        return data.subset(train_idx), data.subset(valid_idx)
    return [data[i] for i in train_idx], [data[i] for i in valid_idx]


# ====================================================================== 3BPA
class ThreeBPADataModule(AtomisticDataModule):
    """3BPA (27-atom drug-like molecule, no PBC) with the standard protocol.

    Args:
        root: folder with ``train_300K.xyz``, ``train_mixedT.xyz``, ``iso_atoms.xyz`` and
            test files (``test_300K.xyz`` ...; also looked up in ``derived_mdbenchgnn/``);
            None = the embedded copy shipped with forcefield.
        train_set: "300K" or "mixedT".
        train_size / valid_size: the seeded split of the 500 training structures (450/50).
        test_splits: which of "300K", "600K", "1200K", "dih" to use; missing files are
            skipped with a warning (download with ``forcefield.data.download_3bpa``).
        test_limit: if set, only the first ``test_limit`` structures of each test split
            (for quick runs).
        e0s: default "iso_atoms" = the isolated-atom energies of ``iso_atoms.xyz``.
        r_max (5.0), batch_size (5), valid_batch_size, num_workers (0), seed (0), ...: see
            :class:`AtomisticDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        train_set: str = "300K",
        r_max: float = 5.0,
        batch_size: int = 5,
        valid_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        train_size: int = 450,
        valid_size: int = 50,
        test_splits: Sequence[str] = THREEBPA_TEST_SPLITS,
        test_limit: int | None = None,
        e0s: Mapping | str | None = "iso_atoms",
        energy_key: str | None = None,
        forces_key: str | None = None,
        nan_policy: str = "error",
        cache_dir: str | None = None,
        stats_cache: bool = True,
        pin_memory: bool = False,
        neighbour_backend: str = "vesin",
        **options,
    ) -> None:
        super().__init__(r_max=r_max, batch_size=batch_size, valid_batch_size=valid_batch_size,
                         num_workers=num_workers, seed=seed, energy_key=energy_key,
                         forces_key=forces_key, nan_policy=nan_policy, e0s=e0s,
                         cache_dir=cache_dir, stats_cache=stats_cache, pin_memory=pin_memory,
                         neighbour_backend=neighbour_backend, **options)
        self.root = Path(root).expanduser() if root else embedded_3bpa_dir()
        if not self.root.is_dir():
            raise DataError(f"3BPA root '{self.root}' is not a directory; set data.root to the "
                            "folder holding train_300K.xyz (or leave it unset for the "
                            "embedded copy).")
        if train_set not in THREEBPA_TRAIN_SETS:
            raise DataError(f"train_set must be one of {THREEBPA_TRAIN_SETS}, got {train_set!r}.")
        self.train_set = train_set
        self.train_size = int(train_size)
        self.valid_size = int(valid_size)
        if self.train_size < 1 or self.valid_size < 1:
            raise DataError(f"train_size and valid_size must be >= 1 (got {train_size}, "
                            f"{valid_size}); an empty split cannot train or validate.")
        test_splits = list(plain_container(test_splits) or [])
        unknown = [s for s in test_splits if s not in THREEBPA_TEST_SPLITS]
        if unknown:
            raise DataError(f"unknown 3BPA test split(s) {unknown}; choose from "
                            f"{list(THREEBPA_TEST_SPLITS)}.")
        self.requested_test_splits = test_splits
        self.test_limit = None if test_limit is None else int(test_limit)

    @property
    def train_file(self) -> Path:
        return self.root / f"train_{self.train_set}.xyz"

    def test_file(self, split: str) -> Path | None:
        """The file of one test split, or None when it is not present."""
        for rel in _THREEBPA_TEST_FILES[split]:
            if (self.root / rel).is_file():
                return self.root / rel
        return None

    @property
    def test_split_names(self) -> list[str]:
        return [s for s in self.requested_test_splits if self.test_file(s) is not None]

    def _fit_sources(self) -> list[Path]:
        return [self.train_file, self.root / "iso_atoms.xyz"]

    def _split_signature(self) -> str:
        return f"seed={self.seed},train={self.train_size},valid={self.valid_size}"

    def _resolve_e0s(self):
        if isinstance(self.e0s, str) and self.e0s == "iso_atoms":
            path = self.root / "iso_atoms.xyz"
            if not path.is_file():
                raise DataError(f"'{path}' is missing; put iso_atoms.xyz in the 3BPA root or "
                                "pass e0s as a dict Z->eV.")
            return e0s_from_isolated_atoms((a for a, _, _ in read_ase_file(path)), str(path),
                                           self.energy_key), "isolated_atoms"
        return super()._resolve_e0s()

    def _setup_fit(self) -> None:
        if not self.train_file.is_file():
            raise DataError(f"3BPA training file '{self.train_file}' is missing; check data.root"
                            f" and data.train_set ({list(THREEBPA_TRAIN_SETS)}).")
        n_needed = self.train_size + self.valid_size
        graphs = self._build(read_ase_file(self.train_file), f"3BPA train_{self.train_set}")
        if len(graphs) < n_needed:
            raise DataError(f"'{self.train_file}' has {len(graphs)} usable structures, fewer "
                            f"than train_size + valid_size = {n_needed}; lower them.")
        perm = np.random.default_rng(self.seed).permutation(len(graphs))
        valid_idx = np.sort(perm[: self.valid_size])
        train_idx = np.sort(perm[self.valid_size: n_needed])
        self.train_data = [graphs[i] for i in train_idx]
        self.valid_data = [graphs[i] for i in valid_idx]

    def _setup_test(self) -> None:
        for split in self.requested_test_splits:
            if self.test_file(split) is None:
                warnings.warn(
                    f"3BPA test split '{split}' skipped: none of "
                    f"{[str(self.root / r) for r in _THREEBPA_TEST_FILES[split]]} exists "
                    "(get it with forcefield.data.download_3bpa(root)).", stacklevel=2)
        names = self.test_split_names
        if not names:
            raise DataError(f"no 3BPA test split found under '{self.root}' for "
                            f"{self.requested_test_splits}; add the test files or change "
                            "test_splits.")
        index = ":" if self.test_limit is None else f":{self.test_limit}"
        for split in names:
            path = self.test_file(split)
            self.test_data[split] = self._build(read_ase_file(path, index=index),
                                                f"3BPA test split '{split}' ({path})")


# ====================================================================== generic ASE
def _named_sources(test) -> dict[str, object]:
    """Normalise ``test``: mapping name->source, a list (one split per entry) or one source."""
    test = plain_container(test)
    if test is None:
        return {}
    if isinstance(test, Mapping):
        return {str(k): v for k, v in test.items()}
    items = [test] if isinstance(test, (str, os.PathLike)) else list(test)
    out: dict[str, object] = {}
    for item in items:
        name = Path(str(item).rstrip("/")).name
        for suffix in (".extxyz", ".xyz", ".aselmdb", ".lmdb", ".db", ".traj", ".json"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        base, k = name or "test", 1
        while name in out:
            k += 1
            name = f"{base}_{k}"
        out[name] = item
    return out


class ASEDataModule(AtomisticDataModule):
    """Any files that ``ase.io`` (or the OC20 readers) understands.

    Args:
        train: file, directory, glob or list of those.
        valid: same; None = a seeded ``valid_fraction`` of ``train``.
        test: None, one source, a list (one split per entry, named by file stem) or a
            mapping name -> source; None with ``test_fraction`` > 0 = a seeded part of train.
        valid_fraction (0.1) / test_fraction (0.0): used only when valid / test are None.
        index: ase.io frame selection for each plain file (e.g. ":1000").
        e0s: "least_squares" (default; error when the composition is rank-deficient),
            a dict Z->eV, a path to an isolated-atoms file, or None/"zero".
        r_max (5.0), batch_size (8), num_workers (0), seed (0), energy_key, forces_key,
            stress_key, nan_policy, ...: see :class:`AtomisticDataModule`.
    """

    def __init__(
        self,
        train=None,
        valid=None,
        test=None,
        r_max: float = 5.0,
        batch_size: int = 8,
        valid_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        valid_fraction: float = 0.1,
        test_fraction: float = 0.0,
        index: str = ":",
        e0s: Mapping | str | None = "least_squares",
        energy_key: str | None = None,
        forces_key: str | None = None,
        stress_key: str | None = None,
        nan_policy: str = "error",
        cache_dir: str | None = None,
        stats_cache: bool = True,
        pin_memory: bool = False,
        neighbour_backend: str = "vesin",
        **options,
    ) -> None:
        super().__init__(r_max=r_max, batch_size=batch_size, valid_batch_size=valid_batch_size,
                         num_workers=num_workers, seed=seed, energy_key=energy_key,
                         forces_key=forces_key, stress_key=stress_key, nan_policy=nan_policy,
                         e0s=e0s, cache_dir=cache_dir, stats_cache=stats_cache,
                         pin_memory=pin_memory, neighbour_backend=neighbour_backend, **options)
        self.train = plain_container(train)  # None: test sources only (evaluation)
        self.valid = plain_container(valid)
        self.test_sources = _named_sources(test)
        self.valid_fraction = float(valid_fraction)
        self.test_fraction = float(test_fraction)
        self.index = index

    def _records(self, source):
        return iter_records(source, index=self.index)

    def _split_data(self, source, name: str):
        """One split: a StreamingDataset (LMDB / ASE-db sources, see ``streaming``) or the
        list of its graphs built in memory."""
        if self._streams(source):
            return self._stream(source, name)
        return self._build(self._records(source), name)

    def _fit_sources(self) -> list[Path]:
        paths = expand_sources(self.train)
        if self.valid is not None:
            paths += expand_sources(self.valid)
        return paths

    def _split_signature(self) -> str:
        return (f"seed={self.seed},vf={self.valid_fraction},tf={self.test_fraction},"
                f"valid={self.valid is not None},index={self.index}")

    @property
    def test_split_names(self) -> list[str]:
        if self.test_sources:
            return list(self.test_sources)
        return ["test"] if self.test_fraction > 0 else []

    def _setup_fit(self) -> None:
        if self.train is None:
            raise DataError("no training data given; set data.train to a file, directory, glob "
                            "or list of those.")
        data = self._split_data(self.train, f"training data {self.train!r}")
        self._held_out_test = None
        if not self.test_sources and self.test_fraction > 0:
            data, self._held_out_test = _fraction_split(data, self.test_fraction, self.seed + 1,
                                                        "test_fraction")
        if self.valid is not None:
            self.train_data = data
            self.valid_data = self._split_data(self.valid, f"validation data {self.valid!r}")
        else:
            self.train_data, self.valid_data = _fraction_split(data, self.valid_fraction,
                                                               self.seed, "valid_fraction")

    def _setup_test(self) -> None:
        if self.test_sources:
            for name, source in self.test_sources.items():
                self.test_data[name] = self._split_data(source, f"test split '{name}' "
                                                                f"({source!r})")
            return
        if self.test_fraction > 0:
            if self.train_data is None:
                self._setup_fit()
            self.test_data["test"] = self._held_out_test
            return
        raise DataError("no test data: set data.test (a source, list or mapping name -> "
                        "source) or data.test_fraction > 0.")


# ====================================================================== OC20
class OC20DataModule(ASEDataModule):
    """OC20 S2EF / IS2RE from any supported format (legacy LMDB, .aselmdb, .db, raw extxyz+txt).

    Args:
        train: file, directory (e.g. of ``data.NNNN.lmdb``), glob or list; None = the two
            real frames embedded with forcefield (then valid and test default to them too:
            a smoke-test setup, not a benchmark).
        valid / test / valid_fraction / test_fraction: as in :class:`ASEDataModule`; ``test``
            may be a mapping name -> source (the names become the metric split names).
        task: "s2ef" (energy + forces, default) or "is2re" (relaxed energy from the initial
            structure; LMDB key ``y_relaxed``).
        subtract_reference: raw S2EF extxyz + txt: subtract the reference energies.
        lmdb_keys: override the legacy LMDB key mapping, e.g. ``{"energy": "y"}``.
        e0s: default None (zeros: OC20 energies are usually already referenced); or a dict,
            "least_squares", or an isolated-atoms file.
        r_max (6.0), batch_size (8), num_workers (0), seed (0), ...: see
            :class:`AtomisticDataModule`. Fixed atoms are carried as ``fixed`` (True = fixed)
            and excluded from ``statistics.force_rms``; losses/metrics should mask them too.
    """

    def __init__(
        self,
        train=None,
        valid=None,
        test=None,
        task: str = "s2ef",
        r_max: float = 6.0,
        batch_size: int = 8,
        valid_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        valid_fraction: float = 0.1,
        test_fraction: float = 0.0,
        subtract_reference: bool = False,
        lmdb_keys: Mapping | None = None,
        e0s: Mapping | str | None = None,
        energy_key: str | None = None,
        forces_key: str | None = None,
        nan_policy: str = "error",
        cache_dir: str | None = None,
        stats_cache: bool = True,
        pin_memory: bool = False,
        neighbour_backend: str = "vesin",
        **options,
    ) -> None:
        if task not in ("s2ef", "is2re"):
            raise DataError(f"task must be 's2ef' or 'is2re', got {task!r}.")
        if train is None:
            sample = str(embedded_oc20_dir() / "oc20_real_frames.extxyz")
            train = sample
            valid = sample if valid is None else valid
            test = {"oc20_sample": sample} if test is None else test
        super().__init__(train=train, valid=valid, test=test, r_max=r_max,
                         batch_size=batch_size, valid_batch_size=valid_batch_size,
                         num_workers=num_workers, seed=seed, valid_fraction=valid_fraction,
                         test_fraction=test_fraction, e0s=e0s, energy_key=energy_key,
                         forces_key=forces_key, nan_policy=nan_policy, cache_dir=cache_dir,
                         stats_cache=stats_cache, pin_memory=pin_memory,
                         neighbour_backend=neighbour_backend, **options)
        self.task = task
        self.subtract_reference = bool(subtract_reference)
        self.lmdb_keys = plain_container(lmdb_keys)
        self.required_labels = ("energy", "forces") if task == "s2ef" else ("energy",)

    def _build(self, records, name: str, required: Sequence[str] | None = None) -> list:
        graphs = super()._build(records, name, required)
        if self.task == "is2re":
            # IS2RE's label is the relaxed energy of the initial structure: forces or stress
            # a file may carry for that structure belong to another target (S2EF) and
            # must not enter the loss, the metrics or the force-RMS statistic
            for g in graphs:
                for key in ("forces", "stress"):
                    if key in g:
                        del g[key]
        return graphs

    def _task(self) -> str:
        return self.task

    def _lmdb_keys(self):
        return self.lmdb_keys

    def _records(self, source):
        return iter_records(source, task=self.task, index=self.index,
                            subtract_reference=self.subtract_reference, lmdb_keys=self.lmdb_keys)

    def _split_signature(self) -> str:
        return super()._split_signature() + f",task={self.task},ref={self.subtract_reference}"
