"""From a data config to the loaders of a run: build the LightningDataModule, set it up,
shard its loaders over DDP ranks, and check the elements against the model's.

Shared by ``forcefield train`` (:mod:`forcefield.training.train`) and ``forcefield evaluate``
(:mod:`forcefield.evaluate`); every user error is a :class:`ConfigError` naming the key or file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from forcefield.training.config import ConfigError


def _echo(msg: str = "", err: bool = False) -> None:
    import sys

    print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def is_oc20(data_cfg: Mapping[str, Any]) -> bool:
    """Whether the data config is OC20's (its metrics: total-energy errors, EwT)."""
    target = str(data_cfg.get("_target_", ""))
    return "OC20" in target or "task" in data_cfg


def instantiate_datamodule(data_cfg: DictConfig, r_max: float, **extra: Any):
    """Build the data config's LightningDataModule; its errors name the key or file."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if "_target_" not in data_cfg:
        raise ConfigError(
            "the data config has no _target_ (choose data=3bpa, data=oc20 or data=ase)"
        )
    kwargs: dict[str, Any] = dict(extra)
    if data_cfg.get("r_max", None) is None:
        kwargs["r_max"] = float(r_max)
    try:
        return instantiate(data_cfg, **kwargs, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise ConfigError(f"data config: {cause}") from exc
        if isinstance(cause, (FileNotFoundError, ValueError, KeyError, OSError)):
            raise ConfigError(f"data: {cause}") from exc
        raise


def setup_data(dm, stage: str) -> None:
    """``dm.setup(stage)`` with missing files / bad data turned into ConfigError."""
    try:
        dm.setup(stage)
    except FileNotFoundError as exc:
        raise ConfigError(f"data: {exc}") from exc
    except ValueError as exc:
        if type(exc).__name__ in ("DataError", "ValueError"):
            raise ConfigError(f"data: {exc}") from exc
        raise


def as_list(loaders) -> list:
    """A datamodule's loader(s) (one, a list or a mapping) as a list."""
    if loaders is None:
        return []
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    if isinstance(loaders, Mapping):
        return list(loaders.values())
    return [loaders]


def rebuild_loader(loader, shuffle: bool, rank: int, world_size: int, seed: int,
                   repeat: bool = True):
    """The same DataLoader with a deterministic sampler for this rank.

    Training: a seeded DistributedSampler (Lightning calls ``set_epoch``), so the data
    order depends only on (seed, epoch) and a resumed run sees the same batches.
    Evaluation: an un-repeated split over ranks, so DDP metrics equal one process's.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    from forcefield.data.sampler import BudgetBatchSampler

    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, BudgetBatchSampler):  # DDP-aware itself: tell it the rank
        batch_sampler.set_distributed(world_size, rank)
        return loader
    if getattr(loader, "batch_size", None) is None:  # another custom batch sampler: keep it
        return loader
    if shuffle or repeat:
        sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank,
                                     shuffle=shuffle, seed=seed, drop_last=False)
    else:
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        sampler = UnrepeatedDistributedSampler(loader.dataset, num_replicas=world_size,
                                               rank=rank, shuffle=False)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
    )


def test_loaders(dm) -> tuple[list[str], list]:
    """(split names, loaders) of a datamodule set up for ``"test"``."""
    loaders = dm.test_dataloader()
    if isinstance(loaders, Mapping):
        names, loaders = list(loaders.keys()), list(loaders.values())
    else:
        loaders = as_list(loaders)
        names = list(getattr(dm, "test_split_names", None) or [])
        if len(names) != len(loaders):
            names = [f"test_{i}" for i in range(len(loaders))] if len(loaders) > 1 else ["test"]
    return [str(n) for n in names], loaders


def test_loaders_or_empty(dm) -> tuple[list[str], list]:
    """:func:`test_loaders` after setting up ``"test"``; none (said on stderr) without test
    data, so a training run without a test split still completes."""
    try:
        setup_data(dm, "test")
    except ConfigError as exc:
        _echo(f"forcefield: no test data ({exc}); skipping the test", err=True)
        return [], []
    if not hasattr(dm, "test_dataloader"):
        return [], []
    try:
        return test_loaders(dm)
    except (NotImplementedError, FileNotFoundError) as exc:
        _echo(f"forcefield: no test data ({exc}); skipping the test", err=True)
        return [], []


def check_species(names: Sequence[str], loaders: Sequence, species: Sequence[int],
                  what: str) -> None:
    """Every element of the ``what`` splits must be one the model handles; otherwise one
    sentence naming the split, the element and the fix (not a traceback mid-epoch)."""
    from forcefield.data.elements import element_names, symbol_list, unknown_elements
    from forcefield.data.streaming import StreamingDataset

    for name, loader in zip(names, loaders, strict=True):
        dataset = getattr(loader, "dataset", None)
        if dataset is None or isinstance(dataset, StreamingDataset) or not len(dataset):
            continue  # streamed splits are not read in advance
        unknown = unknown_elements(dataset, species)
        if unknown:
            raise ConfigError(
                f"{what} split {name!r}: element {element_names(unknown)} is not in the "
                f"model's species [{symbol_list(species)}] (taken from the training data); "
                "train on data that contains it or list it in model.species, or leave this "
                "split out")
