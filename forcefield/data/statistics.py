"""Dataset statistics in float64: E0s, mean interaction energy per atom, force RMS, neighbours."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from forcefield.atomic_io import atomic_path
from forcefield.data.errors import DataError

_MEMORY_CACHE: dict[str, DatasetStatistics] = {}
#: bump when the definition of a statistic changes, so stale disk caches are not reused
STATISTICS_VERSION = 1


@dataclass
class DatasetStatistics:
    """Per-dataset numbers the model needs (all float64-accurate Python floats).

    Attributes:
        species: sorted atomic numbers present.
        e0s: isolated-atom (reference) energy per element, eV.
        mean_interaction_energy_per_atom: mean over structures of (E - sum E0) / N, eV.
        force_rms: RMS force component over free atoms, eV/A (0.0 without forces).
        avg_num_neighbors: mean number of edges per atom at the dataset's r_max.
        num_structures / num_atoms: sizes of the set the numbers come from.
        e0s_source: "isolated_atoms", "least_squares", "given" or "zero".
        r_max: the cutoff used for ``avg_num_neighbors``.
    """

    species: list[int]
    e0s: dict[int, float]
    mean_interaction_energy_per_atom: float
    force_rms: float
    avg_num_neighbors: float
    num_structures: int = 0
    num_atoms: int = 0
    e0s_source: str = "given"
    r_max: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (e0s keys become strings in JSON; :meth:`from_dict` undoes it)."""
        d = asdict(self)
        d["e0s"] = {int(k): float(v) for k, v in self.e0s.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> DatasetStatistics:
        d = dict(d)
        d["e0s"] = {int(k): float(v) for k, v in d["e0s"].items()}
        d["species"] = [int(z) for z in d["species"]]
        return cls(**d)


def e0s_from_isolated_atoms(atoms_list: Iterable[Atoms], source: str = "isolated atoms",
                            energy_key: str | None = None) -> dict[int, float]:
    """E0 per element from single-atom structures (e.g. 3BPA ``iso_atoms.xyz``)."""
    from forcefield.data.atomic_data import extract_labels

    e0s: dict[int, float] = {}
    for k, atoms in enumerate(atoms_list):
        if len(atoms) != 1:
            raise DataError(f"frame {k} of '{source}' has {len(atoms)} atoms; isolated-atom "
                            "files must hold one atom per frame.")
        labels = extract_labels(atoms, energy_key, required=("energy",), source=source, index=k)
        e0s[int(atoms.numbers[0])] = float(labels["energy"])
    if not e0s:
        raise DataError(f"'{source}' holds no isolated atoms; give E0s another way.")
    return e0s


def e0s_least_squares(numbers: Sequence[np.ndarray], energies: Sequence[float],
                      species: Sequence[int] | None = None) -> dict[int, float]:
    """Fit E0s so that sum_i E0[Z_i] best matches the energies (float64 least squares).

    Raises :class:`DataError` when the composition matrix is rank-deficient (e.g. every
    structure has the same composition, as in 3BPA), since the fit is then not unique.
    """
    species = sorted({int(z) for n in numbers for z in np.asarray(n)}) if species is None \
        else sorted(int(z) for z in species)
    if not len(energies):
        raise DataError("cannot fit E0s on an empty dataset.")
    col = {z: c for c, z in enumerate(species)}
    A = np.zeros((len(numbers), len(species)), dtype=np.float64)
    for r, n in enumerate(numbers):
        for z, cnt in zip(*np.unique(np.asarray(n), return_counts=True), strict=True):
            A[r, col[int(z)]] = cnt
    rank = np.linalg.matrix_rank(A)
    if rank < len(species):
        raise DataError(
            f"cannot fit E0s by least squares: the composition matrix is rank-deficient (rank "
            f"{rank} for {len(species)} elements {species}, e.g. all structures share one "
            "composition); "
            "give isolated-atom energies instead (e0s='path/to/iso_atoms.xyz' or a dict Z->eV)."
        )
    sol, *_ = np.linalg.lstsq(A, np.asarray(energies, dtype=np.float64), rcond=None)
    return {z: float(sol[c]) for z, c in col.items()}


def resolve_e0s(e0s, species: Sequence[int], fit, e0s_source: str | None = None
                ) -> tuple[dict[int, float], str]:
    """(E0 per element, source name) for the ``e0s`` option: "least_squares" calls ``fit()``,
    None/"zero" gives zeros, a dict must cover every element of ``species``."""
    if isinstance(e0s, str) and e0s == "least_squares":
        return fit(), "least_squares"
    if e0s is None or (isinstance(e0s, str) and e0s == "zero"):
        return {z: 0.0 for z in species}, "zero"
    if isinstance(e0s, Mapping):
        e0 = {int(z): float(v) for z, v in e0s.items()}
        missing = [z for z in species if z not in e0]
        if missing:
            raise DataError(f"the E0s given cover elements {sorted(e0)} but the data also has "
                            f"{missing}; add isolated-atom energies for them.")
        return e0, e0s_source or "given"
    raise DataError(f"e0s must be a dict Z->eV, 'least_squares' or None, got {e0s!r}.")


def compute_statistics(dataset: Sequence, e0s: Mapping[int, float] | str | None = "least_squares",
                       *, r_max: float | None = None, e0s_source: str | None = None
                       ) -> DatasetStatistics:
    """Statistics of a list of :class:`AtomicData` graphs (float64 throughout).

    Args:
        dataset: graphs with ``atomic_numbers``, ``edge_index`` and, when present, ``energy``,
            ``forces`` and ``fixed``.
        e0s: dict Z -> eV, "least_squares" (fit, error when rank-deficient) or None / "zero"
            (all zeros).
        r_max: recorded for reference.
    """
    if len(dataset) == 0:
        raise DataError("cannot compute statistics of an empty dataset; check the data sources.")
    numbers = [d.atomic_numbers.numpy() for d in dataset]
    species = sorted({int(z) for n in numbers for z in np.unique(n)})
    has_energy = all("energy" in d for d in dataset)
    energies = np.array([float(d.energy.reshape(-1)[0]) for d in dataset]) if has_energy else None
    def fit() -> dict[int, float]:
        if energies is None:
            raise DataError("cannot fit E0s: some structures have no energy label.")
        return e0s_least_squares(numbers, energies, species)

    e0, src = resolve_e0s(e0s, species, fit, e0s_source)
    n_atoms = np.array([len(n) for n in numbers], dtype=np.float64)
    if energies is not None:
        ref = np.array([sum(e0[int(z)] for z in n) for n in numbers], dtype=np.float64)
        mean_inter = float(np.mean((energies - ref) / n_atoms))
    else:
        mean_inter = 0.0
    sq, cnt = 0.0, 0
    for d in dataset:
        if "forces" not in d:
            continue
        f = d.forces.numpy().astype(np.float64)
        if "fixed" in d:
            f = f[~d.fixed.numpy()]
        sq += float(np.sum(f * f))
        cnt += f.size
    force_rms = float(np.sqrt(sq / cnt)) if cnt else 0.0
    n_edges = sum(int(d.edge_index.shape[1]) for d in dataset)
    return DatasetStatistics(
        species=species,
        e0s={z: e0[z] for z in sorted(e0)},
        mean_interaction_energy_per_atom=mean_inter,
        force_rms=force_rms,
        avg_num_neighbors=float(n_edges / n_atoms.sum()),
        num_structures=len(dataset),
        num_atoms=int(n_atoms.sum()),
        e0s_source=src,
        r_max=r_max,
    )


# --------------------------------------------------------------------------- caching
def default_cache_dir() -> Path:
    """``$FORCEFIELD_CACHE_DIR`` or ``~/.cache/forcefield``."""
    env = os.environ.get("FORCEFIELD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "forcefield"


def fingerprint(paths: Iterable[str | os.PathLike], **options) -> str:
    """A key for one dataset: file paths, sizes, mtimes and the reading options."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        try:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    h.update(json.dumps({"version": STATISTICS_VERSION, **options}, sort_keys=True,
                        default=str).encode())
    return h.hexdigest()[:24]


def cached_statistics(key: str, compute, cache_dir: str | os.PathLike | None = None,
                      use_disk: bool = True) -> DatasetStatistics:
    """Return statistics for ``key`` from memory, then disk (JSON), else ``compute()`` them."""
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = Path(cache_dir or default_cache_dir()) / "statistics" / f"{key}.json"
    if use_disk and path.exists():
        try:
            stats = DatasetStatistics.from_dict(json.loads(path.read_text()))
            _MEMORY_CACHE[key] = stats
            return stats
        except (ValueError, TypeError, KeyError):
            pass  # stale or corrupt cache: recompute
    stats = compute()
    _MEMORY_CACHE[key] = stats
    if use_disk:
        try:
            with atomic_path(path, suffix=".tmp") as tmp, open(tmp, "w") as fh:
                json.dump(stats.to_dict(), fh, indent=1)
        except OSError:
            pass  # read-only home: memory cache only
    return stats


# --------------------------------------------------------------------------- bounded sample
MAX_Z = 119


class StatisticsAccumulator:
    """Streaming float64 sums from which :class:`DatasetStatistics` follow exactly.

    Per structure with composition ``c`` (atoms per element), energy ``E`` and ``N`` atoms it
    accumulates the normal equations ``X^T X += c c^T`` and ``X^T y += c E`` of the E0 fit,
    ``sum E/N`` and ``sum c/N`` (so the mean interaction energy per atom follows for any
    E0s without a second pass), the squared free-atom force components, and edge counts.
    Memory is O(Z^2), independent of the number of structures.
    """

    def __init__(self) -> None:
        self.xtx = np.zeros((MAX_Z, MAX_Z))
        self.xty = np.zeros(MAX_Z)
        self.c_over_n = np.zeros(MAX_Z)
        self.e_over_n = 0.0
        self.species_count = np.zeros(MAX_Z, dtype=np.int64)
        self.structures = 0
        self.with_energy = 0
        self.atoms = 0
        self.edges = 0
        self.force_sq = 0.0
        self.force_count = 0

    def update(self, batch) -> None:
        """Add a PyG batch (or one graph) of :class:`AtomicData`."""
        z = batch.atomic_numbers.numpy().astype(np.int64)
        graph = batch.batch.numpy() if "batch" in batch else np.zeros(len(z), dtype=np.int64)
        n_graphs = int(graph.max()) + 1 if len(graph) else 0
        comp = np.zeros((n_graphs, MAX_Z))
        np.add.at(comp, (graph, z), 1.0)
        natoms = comp.sum(axis=1)
        self.species_count += comp.sum(axis=0).astype(np.int64)
        self.structures += n_graphs
        self.atoms += int(natoms.sum())
        self.edges += int(batch.edge_index.shape[1])
        if getattr(batch, "energy", None) is not None:
            e = batch.energy.numpy().astype(np.float64).reshape(-1)
            self.xtx += comp.T @ comp
            self.xty += comp.T @ e
            self.c_over_n += (comp / natoms[:, None]).sum(axis=0)
            self.e_over_n += float(np.sum(e / natoms))
            self.with_energy += n_graphs
        if getattr(batch, "forces", None) is not None:
            f = batch.forces.numpy().astype(np.float64)
            if getattr(batch, "fixed", None) is not None:
                f = f[~batch.fixed.numpy().astype(bool)]
            self.force_sq += float(np.sum(f * f))
            self.force_count += f.size

    def species(self) -> list[int]:
        return [int(z) for z in np.nonzero(self.species_count)[0]]

    def e0s_least_squares(self) -> dict[int, float]:
        """E0s from the normal equations (equal to ``lstsq`` of the composition matrix)."""
        species = self.species()
        if self.with_energy == 0:
            raise DataError("cannot fit E0s: the sampled structures have no energy labels.")
        a = self.xtx[np.ix_(species, species)]
        rank = np.linalg.matrix_rank(a)
        if rank < len(species):
            raise DataError(
                f"cannot fit E0s by least squares: the composition matrix is rank-deficient "
                f"(rank {rank} for {len(species)} elements {species}); give E0s instead "
                "(data.e0s: a dict Z->eV, an isolated-atoms file, or zero).")
        sol = np.linalg.solve(a, self.xty[species])
        return {z: float(v) for z, v in zip(species, sol, strict=True)}

    def finish(self, e0s, *, r_max: float | None = None, e0s_source: str | None = None,
               extra: dict | None = None) -> DatasetStatistics:
        """The statistics for ``e0s`` ("least_squares", None/"zero" or a dict Z->eV)."""
        if self.structures == 0:
            raise DataError("cannot compute statistics of an empty sample; check the data.")
        species = self.species()
        e0, src = resolve_e0s(e0s, species, self.e0s_least_squares, e0s_source)
        mean_inter = 0.0
        if self.with_energy:
            e0_vec = np.zeros(MAX_Z)
            for z, v in e0.items():
                if 0 <= int(z) < MAX_Z:
                    e0_vec[int(z)] = v
            mean_inter = float((self.e_over_n - self.c_over_n @ e0_vec) / self.with_energy)
        return DatasetStatistics(
            species=species,
            e0s={z: e0[z] for z in sorted(e0)},
            mean_interaction_energy_per_atom=mean_inter,
            force_rms=float(np.sqrt(self.force_sq / self.force_count)) if self.force_count
            else 0.0,
            avg_num_neighbors=float(self.edges / self.atoms) if self.atoms else 0.0,
            num_structures=int(self.structures),
            num_atoms=int(self.atoms),
            e0s_source=src,
            r_max=r_max,
            extra=dict(extra or {}),
        )


def sample_indices(n: int, sample_size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of ``sample_size`` of ``n`` structures (all of them
    when ``sample_size`` is None or >= n); O(sample_size) work, no permutation of n."""
    if sample_size is None or int(sample_size) >= n:
        return np.arange(n, dtype=np.int64)
    if int(sample_size) < 1:
        raise DataError(f"stats_samples must be a positive integer or null, got {sample_size}.")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(sample_size), replace=False)).astype(np.int64)


#: the OC20 S2EF normaliser of every fairchem S2EF config (energies referenced: zero E0s)
OC20_S2EF_NORMALIZER = {"energy_mean": -0.7554450631141663, "energy_std": 2.887317180633545,
                        "force_std": 2.887317180633545}


STAT_FIELDS = ("species", "e0s", "mean_interaction_energy_per_atom", "force_rms",
               "avg_num_neighbors")


def given_statistics(given: Mapping | None) -> tuple[dict, dict]:
    """Split a ``data.statistics`` mapping into DatasetStatistics fields and extras.

    Accepted keys: ``species``, ``e0s`` (dict Z->eV or "zero"),
    ``mean_interaction_energy_per_atom``, ``force_rms``, ``avg_num_neighbors`` and the
    normaliser ``energy_mean``, ``energy_std``, ``force_std`` (kept in ``extra``;
    ``force_std`` also fills ``force_rms``).
    """
    if not given:
        return {}, {}
    allowed = set(STAT_FIELDS) | set(OC20_S2EF_NORMALIZER)
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise DataError(f"unknown key(s) {unknown} in data.statistics; allowed: "
                        f"{sorted(allowed)}.")
    fields = {k: given[k] for k in STAT_FIELDS if given.get(k) is not None}
    extra = {k: float(given[k]) for k in OC20_S2EF_NORMALIZER if given.get(k) is not None}
    if "force_rms" not in fields and "force_std" in extra:
        fields["force_rms"] = extra["force_std"]
    if isinstance(fields.get("e0s"), str):
        if fields["e0s"] != "zero":
            raise DataError("data.statistics.e0s must be a dict Z->eV or 'zero'.")
    elif "e0s" in fields:
        fields["e0s"] = {int(z): float(v) for z, v in dict(fields["e0s"]).items()}
    if "species" in fields:
        fields["species"] = sorted(int(z) for z in fields["species"])
    return fields, extra


def statistics_from_config(fields: Mapping) -> DatasetStatistics | None:
    """Complete statistics from given fields alone (no pass over the data), else None."""
    if not all(k in fields for k in STAT_FIELDS):
        return None
    species = list(fields["species"])
    e0s = fields["e0s"]
    if isinstance(e0s, str):
        e0s = {z: 0.0 for z in species}
    missing = [z for z in species if z not in e0s]
    if missing:
        raise DataError(f"data.statistics.e0s lacks elements {missing} of data.statistics."
                        "species; give an energy for each.")
    return DatasetStatistics(
        species=species, e0s={int(z): float(e0s[z]) for z in sorted(e0s)},
        mean_interaction_energy_per_atom=float(fields["mean_interaction_energy_per_atom"]),
        force_rms=float(fields["force_rms"]),
        avg_num_neighbors=float(fields["avg_num_neighbors"]),
        e0s_source="given")
