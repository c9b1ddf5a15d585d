"""Lightning loggers and user callbacks from the ``logger`` and ``callbacks`` config groups.

``logger`` holds one entry per logger, each a ``_target_`` (conf/logger/*.yaml)::

    forcefield train logger=[csv,tensorboard]          # several at once
    forcefield train logger=[csv,wandb] logger.wandb.project=myproject

``csv`` (the default) is :class:`EpochCSVLogger`: ``metrics.csv`` in the run directory,
one row per epoch with the columns forcefield has always written. tensorboard, wandb
(offline by default) and mlflow (a local file store) are Lightning's loggers and need
optional packages (``pip install 'forcefield[tensorboard]'`` etc.).

Every epoch the training module hands one row (train/valid losses and errors, lr, stage,
epoch time; already reduced over DDP ranks) to every logger from rank 0, and after the
test the whole test table (``test/<split>/<metric>``).

``callbacks`` holds user Lightning callbacks by ``_target_`` (conf/callbacks/*.yaml:
early_stopping, lr_monitor; or ``+callbacks.name._target_=...``); they are added to
forcefield's own (checkpoints, progress bar, interrupt handling).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from forcefield.optional import installed
from forcefield.training.config import ConfigError
from forcefield.training.io import atomic_write_csv, read_csv

#: Lightning logger class -> (modules of which one must be importable, forcefield extra)
OPTIONAL = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "WandbLogger": (("wandb",), "wandb"),
    "MLFlowLogger": (("mlflow",), "mlflow"),
    "CometLogger": (("comet_ml",), None),
    "NeptuneLogger": (("neptune",), None),
}

EPOCH_ROW_KEY = "epoch_time_s"
"""A metrics dict holding this key is the module's end-of-epoch row."""


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoard logger whose event file stays open from fit to test.

    Lightning finalizes every logger after ``fit``; the stock logger closes its writer
    there, and the test table then reopens a new event file named after the current second:
    within the same second that name is the first file's, which is truncated (a fit shorter
    than a second lost every epoch's scalars). Here ``finalize`` only flushes, and
    :meth:`close` (called by ``forcefield train`` after the test, through
    :func:`close_loggers`) writes every queued event and closes the file.
    """

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.experiment.flush()
        if status == "success":
            self.save()

    @rank_zero_only
    def close(self) -> None:
        """Write every queued event and close the file (after the test)."""
        if self._experiment is not None:
            self.experiment.close()


def close_loggers(loggers) -> None:
    """Close the loggers that hold a file open across fit and test (see TensorBoardLogger)."""
    for logger in loggers or []:
        if callable(getattr(logger, "close", None)):
            logger.close()


class EpochCSVLogger(Logger):
    """``metrics.csv``: one row per epoch (epoch, step, train_*, val_*, lr, stage,
    epoch_time_s), rewritten atomically after each epoch. Other metrics (per-step loss,
    the test table, user callbacks') go to the other loggers only; the test table is in
    ``metrics.json``."""

    def __init__(self, save_dir: str, filename: str = "metrics.csv") -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self.path = Path(save_dir) / filename
        self.rows: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return self._save_dir

    def resume(self) -> None:
        """Keep the rows an interrupted run wrote (later epochs replace them)."""
        self.rows = read_csv(self.path)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The run's config is in config.yaml."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if EPOCH_ROW_KEY not in metrics:
            return
        epoch = int(metrics["epoch"])
        self.rows = [r for r in self.rows if int(float(r.get("epoch", -1))) < epoch]
        self.rows.append(dict(metrics))
        atomic_write_csv(self.path, self.rows)


def _target_class(target: str) -> str:
    return str(target).rsplit(".", 1)[-1]


def _check_installed(name: str, target: str) -> None:
    modules, extra = OPTIONAL.get(_target_class(target), ((), None))
    if modules and not any(installed(m) for m in modules):
        install = (f"pip install 'forcefield[{extra}]'" if extra
                   else f"pip install {modules[0]}")
        raise ConfigError(
            f"logger={name} needs the optional package {modules[0]}, which is not installed; "
            f"install it with: {install}")


def _entries(cfg: Mapping[str, Any] | None, group: str) -> dict[str, dict]:
    from omegaconf import DictConfig, OmegaConf

    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{group} must be a mapping name -> {{_target_: ...}}, got {cfg!r}")
    out = {}
    for name, entry in cfg.items():
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise ConfigError(
                f"{group}.{name} has no _target_; give the class, e.g. "
                f"+{group}.{name}._target_=lightning.pytorch.callbacks.EarlyStopping")
        out[str(name)] = dict(entry)
    return out


def _instantiate(group: str, name: str, entry: dict) -> Any:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if _target_class(entry["_target_"]) == "MLFlowLogger" and str(
            entry.get("tracking_uri") or "").startswith("file:"):
        # the config asks for a local file store (no server, no database); MLflow >= 3
        # refuses one unless this opt-out is set (it still reads and writes it)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        return instantiate(entry, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause)
        raise ConfigError(f"{group}.{name} ({entry['_target_']}): {message}") from exc


def build_loggers(cfg: Mapping[str, Any] | None, resuming: bool = False) -> list[Logger]:
    """The Lightning loggers of the ``logger`` config (missing extras: one sentence)."""
    entries = _entries(cfg, "logger")
    for name, entry in entries.items():
        _check_installed(name, entry["_target_"])
    loggers = []
    for name, entry in entries.items():
        logger = _instantiate("logger", name, entry)
        if not isinstance(logger, Logger):
            raise ConfigError(f"logger.{name}: {entry['_target_']} is not a Lightning logger")
        if resuming and isinstance(logger, EpochCSVLogger):
            logger.resume()
        loggers.append(logger)
    return loggers


def build_callbacks(cfg: Mapping[str, Any] | None) -> list:
    """The user's Lightning callbacks of the ``callbacks`` config."""
    import lightning.pytorch as pl

    callbacks = []
    for name, entry in _entries(cfg, "callbacks").items():
        callback = _instantiate("callbacks", name, entry)
        if not isinstance(callback, pl.Callback):
            raise ConfigError(
                f"callbacks.{name}: {entry['_target_']} is not a Lightning callback")
        callbacks.append(callback)
    return callbacks


def log_row(trainer, metrics: Mapping[str, Any], step: int) -> None:
    """Hand ``metrics`` (numbers only) to every logger of ``trainer``, from rank 0."""
    if not trainer.is_global_zero or not trainer.loggers:
        return
    numbers = {k: (v if isinstance(v, int) else float(v)) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in trainer.loggers:
        logger.log_metrics(numbers, step=step)


__all__ = ["EpochCSVLogger", "OPTIONAL", "TensorBoardLogger", "build_callbacks", "close_loggers",
           "build_loggers", "log_row"]
