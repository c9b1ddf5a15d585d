"""forcefield.data: atomic graphs, neighbour lists, readers, statistics and datamodules.

Quick start::

    from forcefield.data import AtomicData, ThreeBPADataModule
    graph = AtomicData.from_ase(atoms, r_max=5.0)
    dm = ThreeBPADataModule(r_max=5.0, batch_size=5); dm.setup("fit"); dm.statistics
"""

from forcefield.data.atomic_data import (
    AtomicData,
    batch_edge_vectors,
    extract_labels,
    fixed_mask,
    to_ase,
)
from forcefield.data.errors import DataError
from forcefield.data.graphs import build_graphs
from forcefield.data.neighbours import neighbour_list
from forcefield.data.paths import embedded_3bpa_dir, embedded_data_dir, embedded_oc20_dir
from forcefield.data.readers import expand_sources, iter_records, read_structures
from forcefield.data.statistics import (
    DatasetStatistics,
    compute_statistics,
    e0s_from_isolated_atoms,
    e0s_least_squares,
)

_LAZY = {  # imported on first use: lightning is slow to import
    "ASEDataModule": "forcefield.data.datamodules",
    "BudgetBatchSampler": "forcefield.data.sampler",
    "StreamingDataset": "forcefield.data.streaming",
    "ShardedAseLmdbWriter": "forcefield.data.writers",
    "AtomisticDataModule": "forcefield.data.datamodules",
    "OC20DataModule": "forcefield.data.datamodules",
    "ThreeBPADataModule": "forcefield.data.datamodules",
    "download_3bpa": "forcefield.data.download",
    "emt_structures": "forcefield.data.synthetic",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'forcefield.data' has no attribute {name!r}")


__all__ = [
    "ASEDataModule",
    "AtomicData",
    "BudgetBatchSampler",
    "AtomisticDataModule",
    "DataError",
    "DatasetStatistics",
    "OC20DataModule",
    "ShardedAseLmdbWriter",
    "StreamingDataset",
    "ThreeBPADataModule",
    "batch_edge_vectors",
    "build_graphs",
    "compute_statistics",
    "download_3bpa",
    "emt_structures",
    "e0s_from_isolated_atoms",
    "e0s_least_squares",
    "embedded_3bpa_dir",
    "embedded_data_dir",
    "embedded_oc20_dir",
    "expand_sources",
    "extract_labels",
    "fixed_mask",
    "iter_records",
    "neighbour_list",
    "read_structures",
    "to_ase",
]
