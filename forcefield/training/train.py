"""``forcefield train``'s work: fit a potential, test the best checkpoint, write the run
directory (config.yaml, checkpoints/{best,last}.ckpt, metrics.csv, metrics.json, parity
plots, model.pt).

:func:`train` takes a composed config (:mod:`forcefield.cli.train` composes it from
conf/train.yaml) and returns a process exit code; user errors are raised as
:class:`~forcefield.errors.ConfigError` and printed by the command layer in one sentence.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from forcefield.training.config import (
    ConfigError,
    check_dtype,
    check_keys,
    check_missing,
    to_container,
)
from forcefield.training.finetune_report import FineTuneReport
from forcefield.training.io import atomic_write_json, jsonable
from forcefield.training.loaders import (
    as_list,
    check_species,
    instantiate_datamodule,
    is_oc20,
    rebuild_loader,
    setup_data,
    test_loaders_or_empty,
)

TRAIN_KEYS = ("data", "model", "trainer", "experiment", "seed", "dtype", "output_dir",
              "ckpt_path", "training", "test", "export")
TRAIN_KEYS += ("logger", "callbacks", "init_from", "finetune")  # loggers.py, finetune.py
TRAIN_KEYS += ("sweep",)  # read by the command layer's Hydra sweeps (forcefield.cli.sweep)
TRAINING_KEYS = ("loss", "optimizer", "scheduler", "ema", "stage_two", "compile")


def _echo(msg: str = "", err: bool = False) -> None:
    print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def validate_train_config(cfg: DictConfig) -> None:
    """Check every key and value before anything is built, so a typo costs nothing."""
    check_keys(cfg, TRAIN_KEYS)
    check_missing(cfg)
    if "training" in cfg:
        check_keys(cfg.training, TRAINING_KEYS, "training")
    if cfg.get("sweep") is not None:
        check_keys(cfg.sweep, ("objective",), "sweep")
    check_dtype(cfg.dtype)
    if "export" in cfg:
        check_keys(cfg.export, ("enabled", "dtype"), "export")
        check_dtype(cfg.export.get("dtype"), "export.dtype")
    from forcefield.models import architecture_of, config_keys

    try:
        architecture = architecture_of(cfg.model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # each architecture has its own keys: a typo, or a key of another family, is named
    check_keys(cfg.model, config_keys(architecture), "model")
    import inspect

    import lightning.pytorch as pl

    allowed = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    fixed = {"inference_mode", "logger", "callbacks", "plugins", "default_root_dir",
             "use_distributed_sampler", "enable_checkpointing"}
    check_keys(cfg.trainer, allowed, "trainer")
    clash = sorted(fixed & set(cfg.trainer.keys()))
    if clash:
        raise ConfigError(
            f"trainer.{clash[0]} is set by forcefield train itself and cannot be configured"
        )
    if cfg.ckpt_path is not None:
        from forcefield.model_files import read_checkpoint

        try:
            read_checkpoint(str(cfg.ckpt_path))  # one sentence for a file that is not one
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file") from exc
    from forcefield.training.losses import LossConfig

    try:
        LossConfig(**to_container(cfg.training.loss))
    except TypeError as exc:
        raise ConfigError(f"training.loss: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


class _AtomicCheckpointIO:
    """Mixin-free factory for the atomic CheckpointIO (imported lazily with Lightning)."""

    @staticmethod
    def make():
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

        class AtomicCheckpointIO(TorchCheckpointIO):
            def save_checkpoint(self, checkpoint, path, storage_options=None):
                path = Path(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                try:
                    torch.save(checkpoint, tmp)
                    os.replace(tmp, path)
                finally:
                    if tmp.exists():
                        tmp.unlink()

        return AtomicCheckpointIO()


def _callbacks(out: Path, has_val: bool):
    """(best-checkpoint callback, interrupt handler, every built-in callback of a run)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    class Interrupt(pl.Callback):
        interrupted = False

        def on_exception(self, trainer, pl_module, exception):
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
                self.interrupted = True
                last = out / "checkpoints" / "last.ckpt"
                if not last.exists():
                    trainer.save_checkpoint(last)

    ckpt = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor="val_loss" if has_val else None,
        mode="min",
        save_top_k=1,
        save_last=False,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    # last.ckpt after every epoch (save_last=True only writes it when best.ckpt changes)
    last = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="last",
        monitor=None,
        save_top_k=1,
        save_last=False,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    interrupt = Interrupt()
    return ckpt, interrupt, [ckpt, last, interrupt, TQDMProgressBar(refresh_rate=1)]


def build_trainer(trainer_cfg: Mapping[str, Any], out: Path, callbacks: list,
                  loggers: list | None = None):
    """The Lightning Trainer of ``trainer.*`` with the settings forcefield train fixes."""
    import lightning.pytorch as pl

    kwargs = dict(trainer_cfg)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("max_time",)}
    if kwargs.get("max_time") is None:
        kwargs.pop("max_time", None)
    strategy = kwargs.get("strategy", "auto")
    if isinstance(strategy, str) and strategy.startswith("ddp"):
        from lightning.pytorch.strategies import DDPStrategy

        accel = str(kwargs.get("accelerator", "auto"))
        gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
        kwargs["strategy"] = DDPStrategy(
            process_group_backend="nccl" if gpu else "gloo",
            find_unused_parameters="find_unused" in strategy,
        )
    if kwargs.get("enable_progress_bar") is False:
        from lightning.pytorch.callbacks import ProgressBar

        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    return pl.Trainer(
        **kwargs,
        inference_mode=False,
        logger=list(loggers) if loggers else False,
        callbacks=callbacks,
        plugins=[_AtomicCheckpointIO.make()],
        default_root_dir=str(out),
        use_distributed_sampler=False,
        enable_checkpointing=True,
    )


def resolve_output_dir(cfg: DictConfig) -> Path:
    """Absolute run directory, the same on every DDP rank of this machine."""
    env = os.environ.get("FORCEFIELD_RUN_DIR")
    if env and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(env)
    out = Path(str(cfg.output_dir)).expanduser().resolve()
    os.environ["FORCEFIELD_RUN_DIR"] = str(out)
    return out


def train(cfg: DictConfig) -> int:
    """``forcefield train``: fit, test the best checkpoint, write the run directory."""
    import lightning.pytorch as pl

    from forcefield.export import resolve_dtype
    from forcefield.models import build_model
    from forcefield.training.module import ForceFieldModule, NonFiniteLossError

    validate_train_config(cfg)
    out = resolve_output_dir(cfg)
    cfg.output_dir = str(out)
    resuming = cfg.ckpt_path is not None
    ckpt_dir = out / "checkpoints"
    if not resuming and (ckpt_dir / "last.ckpt").exists():
        raise ConfigError(
            f"output_dir {out} already holds a training run; choose another output_dir or "
            f"resume it with ckpt_path={ckpt_dir / 'last.ckpt'}"
        )
    from forcefield.training.loggers import build_callbacks, build_loggers

    # configs saved before the logger group existed (resumed runs) keep metrics.csv
    logger_cfg = cfg.logger if "logger" in cfg else {"csv": {
        "_target_": "forcefield.training.loggers.EpochCSVLogger", "save_dir": str(out)}}
    loggers = build_loggers(logger_cfg, resuming=resuming)
    user_callbacks = build_callbacks(cfg.get("callbacks"))
    seed = int(cfg.seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    dtype = str(cfg.dtype)
    oc20 = is_oc20(cfg.data)

    # fine-tuning (init_from): architecture and weights from the file; a resumed fine-tune
    # rebuilds the model from its config.yaml and the checkpoint like any resumed run
    from forcefield.training import finetune

    init_from = cfg.get("init_from")
    settings = finetune.check_config(to_container(cfg.finetune) if "finetune" in cfg else {})
    pretrained = finetune.load_pretrained(str(init_from)) if init_from and not resuming else None
    if pretrained is not None and cfg.model.get("species") is not None:
        # cfg.model is the file's config with the command line's model.forces (compose_train;
        # a preset composed without it has species null): the eSEN direct -> gradient step
        from forcefield.training.force_mode import with_force_mode

        forces = cfg.model.get("forces")
        if forces is not None and forces != pretrained.config.get("forces"):
            _echo(f"forcefield train: fine-tuning {init_from} with model.forces={forces} "
                  f"(was {pretrained.config.get('forces')})")
        pretrained = with_force_mode(pretrained, forces, str(init_from))
    r_max = float(pretrained.config["r_max"] if pretrained is not None else cfg.model.r_max)
    extra = {}
    if init_from and "e0s" not in settings["reset_statistics"] and "e0s" in cfg.data:
        # the model keeps its E0s: the data's statistics (shift) are taken relative to them
        # (zero for elements the model does not know: finetuned_model names those); a
        # resumed fine-tune finds them in its config.yaml
        e0s = pretrained.config["e0s"] if pretrained is not None else cfg.model.e0s
        known = {int(z): float(e) for z, e in dict(e0s or {}).items()}
        extra["e0s"] = {z: known.get(z, 0.0) for z in range(1, 119)}
    dm = instantiate_datamodule(cfg.data, r_max=r_max, **extra)
    setup_data(dm, "fit")
    stats = getattr(dm, "statistics", None)
    if stats is None and hasattr(dm, "compute_statistics"):
        stats = dm.compute_statistics()
    if extra and stats is not None and isinstance(getattr(stats, "e0s", None), dict):
        stats.e0s = {z: e for z, e in stats.e0s.items() if z in set(stats.species)}
    training_cfg = to_container(cfg.training)
    if pretrained is not None:
        model = finetune.finetuned_model(pretrained, stats, settings, str(init_from), seed)
    else:
        try:
            model = build_model(to_container(cfg.model), stats)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model: {exc}") from exc
        if init_from and stats is not None:
            finetune.check_elements(stats.species, model.config["species"], str(init_from))
    if init_from:
        frozen = finetune.freeze(model, settings)
        training_cfg = finetune.training_config(training_cfg, settings)
        if frozen:
            _echo(f"forcefield train: fine-tuning from {init_from} with {len(frozen)} frozen "
                  "parameter tensors")
    model = model.to(resolve_dtype(dtype))
    fine = FineTuneReport.start(cfg, settings, model, pretrained, dm, r_max) if init_from \
        else None
    module = ForceFieldModule(model=model, training=training_cfg, dtype=dtype, oc20=oc20)

    train_loader = dm.train_dataloader()
    val_loaders = as_list(dm.val_dataloader()) if hasattr(dm, "val_dataloader") else []
    check_species([f"valid_{i}" if i else "valid" for i in range(len(val_loaders))],
                  val_loaders, model.species, "validation")
    has_val = len(val_loaders) > 0
    ckpt_cb, interrupt_cb, callbacks = _callbacks(out, has_val)
    from forcefield.data.sampler import BudgetBatchSampler

    if isinstance(getattr(train_loader, "batch_sampler", None), BudgetBatchSampler):
        from forcefield.training.callbacks import BatchSamplerResume

        callbacks.append(BatchSamplerResume(train_loader.batch_sampler))
    callbacks += user_callbacks
    trainer = build_trainer(to_container(cfg.trainer), out, callbacks, loggers)
    rank, world = trainer.global_rank, trainer.world_size
    if fine is not None and fine.replay:
        train_loader = fine.mix_into(train_loader, seed)
        train_loader.batch_sampler.set_distributed(world, rank)
    train_loader = rebuild_loader(train_loader, True, rank, world, seed)
    val_loaders = [rebuild_loader(v, False, rank, world, seed, repeat=False) for v in val_loaders]

    is_zero = trainer.is_global_zero
    if is_zero:
        out.mkdir(parents=True, exist_ok=True)
        resolved = OmegaConf.create(to_container(cfg))
        resolved.model = OmegaConf.create(jsonable(model.config))
        from forcefield.training.config import save_yaml

        save_yaml(resolved, out / "config.yaml")
        _echo(f"forcefield train: run directory {out}")
        if stats is not None and getattr(stats, "extra", None):
            _echo(f"statistics: {describe_statistics_source(stats)}")
        if stats is not None and hasattr(stats, "to_dict"):
            atomic_write_json(out / "statistics.json", jsonable(stats.to_dict()))
    t0 = time.perf_counter()
    try:
        trainer.fit(module, train_dataloaders=train_loader,
                    val_dataloaders=val_loaders or None,
                    ckpt_path=str(cfg.ckpt_path) if resuming else None)
    except NonFiniteLossError as exc:
        last = ckpt_dir / "last.ckpt"
        keep = (f"the last good checkpoint is {last}" if last.exists()
                else "no checkpoint was written before it")
        _echo(f"forcefield train: stopped: {exc}; {keep}. Lower training.optimizer.lr or "
              "check the data (non-finite labels, overlapping atoms).", err=True)
        return 1
    except SystemExit:
        if interrupt_cb.interrupted:
            _echo(f"\nforcefield train: interrupted; resume with "
                  f"forcefield train ckpt_path={ckpt_dir / 'last.ckpt'}", err=True)
            return 130
        raise
    fit_time = time.perf_counter() - t0
    if trainer.interrupted:
        _echo(f"\nforcefield train: interrupted; resume with "
              f"forcefield train ckpt_path={ckpt_dir / 'last.ckpt'}", err=True)
        return 130

    # ---- the best (EMA) weights, on every rank, without Lightning's ckpt reload path
    trainer.strategy.barrier()
    best = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else ckpt_dir / "last.ckpt"
    best_epoch = None
    if best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
        best_epoch = int(state.get("epoch", -1))
    results: dict[str, dict[str, float]] = {}
    if cfg.test.enabled:
        names, loaders = test_loaders_or_empty(dm)
        check_species(names, loaders, model.species, "test")
        if loaders:
            loaders = [rebuild_loader(t, False, rank, world, seed, repeat=False) for t in loaders]
            module.test_split_names = names
            module.collect_predictions = bool(cfg.test.predictions)
            trainer.test(module, dataloaders=loaders, verbose=False)
            results = module.test_results
    from forcefield.training.loggers import close_loggers

    close_loggers(loggers)  # every scalar on disk before the run directory is complete
    if not is_zero:
        return 0
    if fine is not None:
        fine.finish(module.eval_model())
    val = {k: v for k, v in module.last_val.items()}
    summary = {
        "test": results,
        "val_last_epoch": val,
        "best_checkpoint": str(best) if best.is_file() else None,
        "best_epoch": best_epoch,
        "epochs_completed": int(trainer.current_epoch),
        "fit_time_s": fit_time,
        "dtype": dtype,
        "data": str(cfg.data.get("_target_", "")),
    }
    if fine is not None:
        summary["finetune"] = fine.summary()
    atomic_write_json(out / "metrics.json", jsonable(summary))
    if module.test_predictions:
        from forcefield.training.plots import write_parity_plots

        write_parity_plots(out, module.test_predictions)
    if cfg.export.enabled:
        from forcefield.export import save_model

        net = module.eval_model()
        export_dtype = str(cfg.export.get("dtype") or dtype)
        if export_dtype != dtype:  # e.g. trained in float32, deployed in float64 for MD
            import copy

            from forcefield.export import resolve_dtype

            net = copy.deepcopy(net).to(resolve_dtype(export_dtype))
        save_model(out / "model.pt", net,
                   metadata={"source_checkpoint": str(best), "best_epoch": best_epoch,
                             "test": jsonable(results), "dtype": export_dtype,
                             "training_dtype": dtype, "training_data": training_data(dm)})
    if results:
        from forcefield.training.metrics import format_table

        _echo("\nTest errors (best checkpoint, EMA weights):")
        _echo(format_table(results, oc20=oc20))
    if fine is not None and fine.after:
        _echo("\nFine-tuning (before -> after, best checkpoint, EMA weights):")
        _echo(fine.text())
    _echo(f"\nfit time {fit_time / 60:.1f} min; run directory: {out}")
    return 0


def training_data(dm) -> list[str]:
    """The files a run trained on, recorded in model.pt so that a later fine-tune can
    replay them (``finetune.replay=base``); none for streamed data."""
    train_data = getattr(dm, "train_data", None)
    if not isinstance(train_data, list) or not hasattr(dm, "_fit_sources"):
        return []
    train_file = getattr(dm, "train_file", None)  # 3BPA: not its isolated-atoms file
    try:
        sources = [train_file] if train_file is not None else dm._fit_sources()
        return [str(Path(p).resolve()) for p in sources]
    except (OSError, ValueError):
        return []


def describe_statistics_source(stats) -> str:
    """One line saying where the training statistics came from (config, cache, sample)."""
    extra = stats.extra
    source = extra.get("source", "data")
    n = extra.get("sample_size")
    text = {"config": "given in data.statistics (no pass over the data)",
            "cache": "from the statistics cache",
            "sample": f"from a seeded sample of {n} training structures",
            "full": f"from all {n} training structures"}.get(source, source)
    given = [g for g in extra.get("given", []) if g]
    if given and source != "config":
        text += f"; given in data.statistics: {', '.join(given)}"
    return text
