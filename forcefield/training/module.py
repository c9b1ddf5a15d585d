"""The LightningModule that trains a potential on energies and forces (and stress).

- training: weighted loss (losses.py) on the live model, forces with create_graph;
- validation / test: the EMA weights (when enabled), forces under ``enable_grad``
  (Lightning runs evaluation under ``no_grad``; the Trainer must be built with
  ``inference_mode=False``), metrics accumulated in float64 over the whole split and
  summed across DDP ranks before they are logged;
- ``val_loss`` = w_E * per-atom energy MSE + w_F * force MSE over the validation set
  (checkpoint selection and ReduceLROnPlateau monitor it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from forcefield.data.datamodules import plain_container
from forcefield.training.config import ConfigError
from forcefield.training.ema import EMA
from forcefield.training.losses import LossConfig, compute_loss
from forcefield.training.metrics import MetricAccumulator, free_atom_mask
from forcefield.training.optim import CosineFactor, build_optimizer, build_scheduler


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def build_network(model_config: Mapping[str, Any], model_class: str | None = None
                  ) -> torch.nn.Module:
    """Rebuild the network from its stored constructor config.

    The class is ``model_class`` (a class name saved in the checkpoint) when given, else
    the config's ``architecture`` (checkpoints written before the registry hold neither:
    GauntMACE).
    """
    from forcefield.models import MODELS, architecture_of
    from forcefield.models import model_class as lookup

    config = dict(model_config)
    if model_class:
        try:
            cls = lookup(str(model_class))
        except KeyError:
            raise ConfigError(f"the checkpoint's model class {model_class!r} is not in this "
                              f"forcefield (known: {sorted(MODELS)})") from None
    else:
        cls = MODELS[architecture_of(config)]
    return cls(**config)


class ForceFieldModule(pl.LightningModule):
    """Wraps a potential (``model``) with its loss, metrics, EMA and optimiser.

    ``model`` is an already built network (carrying ``model.config``); when omitted it is
    rebuilt from ``model_config`` (this is how a checkpoint is reloaded).
    """

    def __init__(
        self,
        model_config: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
        dtype: str = "float64",
        oc20: bool = False,
        model: torch.nn.Module | None = None,
        model_class: str | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            if model_config is None:
                raise ValueError("ForceFieldModule needs a model or a model_config")
            model = build_network(model_config, model_class)
        model_config = plain_container(dict(getattr(model, "config", model_config) or {}))
        training = plain_container(dict(training or {}))
        self.save_hyperparameters(
            {"model_config": model_config, "training": training, "dtype": str(dtype),
             "oc20": bool(oc20), "model_class": type(model).__name__}
        )
        torch_dtype = torch.float64 if str(dtype) in ("float64", "double") else torch.float32
        self.model = model.to(torch_dtype)
        loss_cfg = dict(training.get("loss") or {})
        self.loss_cfg = LossConfig(**loss_cfg)
        ema_cfg = dict(training.get("ema") or {})
        self.ema = None
        if ema_cfg.get("enabled", True) and float(ema_cfg.get("decay", 0.99)) > 0:
            self.ema = EMA(self.model, decay=float(ema_cfg.get("decay", 0.99)),
                           warmup=bool(ema_cfg.get("warmup", True)))
        self.oc20 = bool(oc20)
        self.train_metrics = MetricAccumulator()
        self.val_metrics = MetricAccumulator()
        self.test_split_names: list[str] = ["test"]
        self.test_metrics: dict[int, MetricAccumulator] = {}
        self.test_results: dict[str, dict[str, float]] = {}
        self.collect_predictions = True
        self.test_predictions: dict[str, dict[str, np.ndarray]] = {}
        self._pred_buffer: dict[int, dict[str, list]] = {}
        self.metrics_callback = None  # called with (epoch, dict) at the end of each epoch
        self._loss_sum = 0.0
        self._loss_count = 0
        self._epoch_start = time.perf_counter()
        self._epoch_start_budget = 0.0  # the Timer's clock at the epoch start (max_time)
        self.last_val: dict[str, float] = {}
        self._plateau = None  # ReduceLROnPlateau, stepped after each validation
        self._cosines: list[CosineFactor] = []  # lr factors that follow a time budget
        self._plateau_state = None
        self.stage_two = dict(training.get("stage_two") or {})
        self.compiled = None  # CompiledTraining of self.model when training.compile is on
        if training.get("compile", False):
            from forcefield.training.compiled import CompiledTraining

            self.compiled = CompiledTraining(self.model)
        self.stage_two_active = False
        self._restore_stage_two_lr = False

    # ------------------------------------------------------------------ helpers
    def eval_model(self) -> torch.nn.Module:
        """The network used for validation, test and export (EMA weights when enabled)."""
        return self.ema.module if self.ema is not None else self.model

    def _wants_stress(self, batch) -> bool:
        return self.loss_cfg.stress_weight > 0 and getattr(batch, "stress", None) is not None

    def _wants_forces(self, batch, training: bool) -> bool:
        """Forces only where they are compared with labels: energy-only data (OC20 IS2RE)
        trains and evaluates without the (double) backward pass through positions."""
        if getattr(batch, "forces", None) is None:
            return False
        return not training or self.loss_cfg.forces_weight > 0

    def predict_batch(self, model: torch.nn.Module, batch, training: bool) -> dict:
        forces, stress = self._wants_forces(batch, training), self._wants_stress(batch)
        with torch.enable_grad():
            if training and self.compiled is not None and model is self.model:
                out = self.compiled(batch, compute_forces=forces, compute_stress=stress)
            else:
                out = model(batch, compute_forces=forces, compute_stress=stress,
                            training=training)
        if not training:
            out = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
        return out

    def _all_finite(self, value: torch.Tensor) -> bool:
        flag = torch.isfinite(value.detach()).all().to(torch.float64).reshape(1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item() > 0)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self._follow_time_budget()
        self._maybe_start_stage_two()
        self.train_metrics.reset()
        self._loss_sum = 0.0
        self._loss_count = 0
        self._epoch_start = time.perf_counter()
        timer = self._timer()
        self._epoch_start_budget = timer.time_elapsed("train") if timer is not None else 0.0

    def training_step(self, batch, batch_idx: int):
        pred = self.predict_batch(self.model, batch, training=True)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        loss, terms = compute_loss(batch, pred, self.loss_cfg,
                                   reduce_counts=_all_reduce_counts if distributed else None)
        if not self._all_finite(loss):
            raise NonFiniteLossError(
                f"the training loss became {float(loss.detach())} at epoch {self.current_epoch}, "
                f"step {self.global_step}"
            )
        self.train_metrics.update(batch, pred)
        self._loss_sum += float(loss.detach()) * int(batch.num_graphs)
        self._loss_count += int(batch.num_graphs)
        self.log("loss", loss.detach().float(), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=int(batch.num_graphs))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def on_train_epoch_end(self) -> None:
        self.train_metrics.all_reduce()
        loss = torch.tensor([self._loss_sum, float(self._loss_count)], dtype=torch.float64,
                            device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(loss)
        row: dict[str, Any] = {"epoch": self.current_epoch, "step": self.global_step}
        row["train_loss"] = float(loss[0] / loss[1]) if loss[1] > 0 else math.nan
        for key, value in self.train_metrics.compute(self.oc20).items():
            if key != "n_structures":
                row[f"train_{key}"] = value
        for key, value in self.last_val.items():
            row[key] = value
        opt = self.optimizers(use_pl_optimizer=False) if self._trainer is not None else None
        if opt is not None:
            row["lr"] = float(opt.param_groups[0]["lr"])
        row["stage"] = 2 if self.stage_two_active else 1
        row["epoch_time_s"] = time.perf_counter() - self._epoch_start
        self._stop_before_time_runs_out()
        self.log("train_loss", row["train_loss"], prog_bar=False, sync_dist=True, logger=False)
        if self._loss_count == 0:  # resumed exactly at an epoch end: the row is written
            return
        if self.metrics_callback is not None and self.trainer.is_global_zero:
            self.metrics_callback(row)
        # every logger (metrics.csv, tensorboard, ...) gets the whole row, from rank 0; the
        # values are already reduced over ranks and kept in float64 (self.log would cast)
        from forcefield.training.loggers import log_row

        log_row(self.trainer, row, step=self.global_step)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        pred = self.predict_batch(self.eval_model(), batch, training=False)
        self.val_metrics.update(batch, pred)

    def on_validation_epoch_end(self) -> None:
        self.val_metrics.all_reduce()
        metrics = self.val_metrics.compute(self.oc20)
        e_mse, f_mse = self.val_metrics.mse()
        val_loss = self.loss_cfg.energy_weight * e_mse + self.loss_cfg.forces_weight * f_mse
        if self.trainer.sanity_checking:
            return
        self.last_val = {"val_loss": val_loss}
        self.last_val.update({f"val_{k}": v for k, v in metrics.items() if k != "n_structures"})
        # the values are already reduced over ranks: sync_dist only silences the warning;
        # every val_* metric is in callback_metrics (checkpoints, EarlyStopping, ...), and
        # reaches the loggers in the epoch row (on_train_epoch_end)
        self.log("val_loss", val_loss, prog_bar=True, sync_dist=True, logger=False)
        if self._plateau is not None:
            # stepped here (not by Lightning after the epoch) so that the checkpoints
            # written at the end of this validation hold the updated scheduler state
            self._plateau.step(val_loss)
        for key, value in self.last_val.items():
            if key != "val_loss" and value is not None and math.isfinite(value):
                self.log(key, value, sync_dist=True, logger=False,
                         prog_bar=key in ("val_energy_rmse_meV", "val_forces_rmse_meV_A"))

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        self.test_metrics = {
            i: MetricAccumulator(self.device) for i in range(len(self.test_split_names))
        }
        self._pred_buffer = {i: {"e_ref": [], "e_pred": [], "natoms": [], "f_ref": [],
                                 "f_pred": []} for i in range(len(self.test_split_names))}

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        pred = self.predict_batch(self.eval_model(), batch, training=False)
        self.test_metrics[dataloader_idx].update(batch, pred)
        if self.collect_predictions:
            buf = self._pred_buffer[dataloader_idx]
            if getattr(batch, "energy", None) is not None:
                buf["e_ref"].append(batch.energy.detach().double().cpu().numpy().reshape(-1))
                buf["e_pred"].append(pred["energy"].detach().double().cpu().numpy().reshape(-1))
                buf["natoms"].append(batch.natoms.detach().cpu().numpy().reshape(-1))
            if getattr(batch, "forces", None) is not None:
                free = free_atom_mask(batch)
                buf["f_ref"].append(batch.forces[free].detach().double().cpu().numpy())
                buf["f_pred"].append(pred["forces"][free].detach().double().cpu().numpy())

    def on_test_epoch_end(self) -> None:
        self.test_results = {}
        self.test_predictions = {}
        for i, name in enumerate(self.test_split_names):
            acc = self.test_metrics[i]
            acc.all_reduce()
            self.test_results[name] = acc.compute(self.oc20)
            if self.collect_predictions:
                buf = _gather_predictions(self._pred_buffer[i])
                self.test_predictions[name] = buf
        for name, metrics in self.test_results.items():
            for key in ("energy_rmse_meV", "forces_rmse_meV_A"):
                if key in metrics:
                    self.log(f"test_{name}_{key}", metrics[key], add_dataloader_idx=False,
                             sync_dist=True, logger=False)
        from forcefield.training.loggers import log_row

        log_row(self.trainer, {f"test/{name}/{key}": value
                               for name, metrics in self.test_results.items()
                               for key, value in metrics.items()}, step=self.global_step)

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        training = self.hparams["training"]
        optimizer = build_optimizer(self.model, training.get("optimizer") or {})
        total = None
        steps_per_epoch = None
        try:
            total = self.trainer.estimated_stepping_batches
            batches = float(self.trainer.num_training_batches)
            if math.isfinite(batches) and batches > 0:
                steps_per_epoch = max(1, int(batches) // int(
                    self.trainer.accumulate_grad_batches or 1))
        except Exception:  # noqa: BLE001 - no trainer / unknown length
            total = None
        scheduler = build_scheduler(optimizer, training.get("scheduler"), total_steps=total,
                                    steps_per_epoch=steps_per_epoch,
                                    time_limited=self._time_budget() is not None)
        self._cosines = [] if scheduler is None else [
            f for f in getattr(scheduler["scheduler"], "lr_lambdas", [])
            if isinstance(f, CosineFactor)]
        self._plateau = None
        if scheduler is not None and scheduler.get("monitor"):
            self._plateau = scheduler["scheduler"]
            if self._plateau_state is not None:
                self._plateau.load_state_dict(self._plateau_state)
            return optimizer
        if scheduler is None:
            return optimizer
        if self._restore_stage_two_lr and isinstance(scheduler["scheduler"],
                                                     torch.optim.lr_scheduler.LambdaLR):
            sched = scheduler["scheduler"]  # resumed inside stage two: constant lr
            sched.lr_lambdas = [_constant_one] * len(sched.lr_lambdas)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._plateau is not None:
            checkpoint["plateau_scheduler"] = self._plateau.state_dict()
        checkpoint["stage_two_active"] = bool(self.stage_two_active)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None and checkpoint.get("optimizer_states"):
            # resuming: the optimiser state has one slot per parameter, so a checkpoint
            # without some of this model's parameters (an older version) cannot continue
            saved = checkpoint.get("state_dict", {})
            missing = [name for name, _ in self.named_parameters() if name not in saved]
            if missing:
                raise ConfigError(
                    f"ckpt_path: the checkpoint has no weights for {', '.join(missing)} "
                    "(written by an older forcefield), so its optimiser state cannot be "
                    "resumed; evaluate or export it (forcefield evaluate model=CKPT), or "
                    "start a new run without ckpt_path")
        self._plateau_state = checkpoint.get("plateau_scheduler")
        if checkpoint.get("stage_two_active"):
            self.stage_two_active = True
            self.loss_cfg = self._stage_two_loss()
            self._restore_stage_two_lr = True

    def _timer(self):
        """Lightning's Timer of a run with ``trainer.max_time`` (None without one)."""
        from lightning.pytorch.callbacks import Timer

        if self._trainer is None:
            return None
        return next((cb for cb in self.trainer.callbacks
                     if isinstance(cb, Timer) and cb._duration), None)

    def _time_budget(self) -> float | None:
        """Seconds of training that ``trainer.max_time`` allows (None: no time limit)."""
        timer = self._timer()
        return float(timer._duration) if timer is not None else None

    def _follow_time_budget(self) -> None:
        """Fit the cosine decay to the time actually available: from the pace so far
        (seconds per optimiser step, validation included), the steps that the budget
        allows become the length of the decay. Rank 0 decides, so every rank steps the
        same lr."""
        timer = self._timer()
        if timer is None or not self._cosines or self.global_step == 0:
            return
        elapsed = timer.time_elapsed("train")
        steps = float(timer._duration) * self.global_step / max(elapsed, 1e-6)
        steps = float(self.trainer.strategy.broadcast(steps, src=0))
        for factor in self._cosines:
            factor.follow(steps)

    def _stop_before_time_runs_out(self) -> None:
        """With trainer.max_time, stop at an epoch boundary when another epoch (as long as
        this one, validation included, on the Timer's clock) would not fit: Lightning's
        Timer would cut the next epoch short and waste it."""
        timer = self._timer()
        stop = False
        if timer is not None:
            now = timer.time_elapsed("train")
            stop = now + 1.05 * (now - self._epoch_start_budget) > timer._duration
        stop = bool(self.trainer.strategy.broadcast(stop, src=0))
        if stop and not self.trainer.should_stop:
            self.trainer.should_stop = True
            if self.trainer.is_global_zero:
                print("\nstopping: another epoch would exceed trainer.max_time", flush=True)

    # ------------------------------------------------------------------ stage two
    def _stage_two_loss(self) -> LossConfig:
        cfg = self.stage_two
        import dataclasses

        return dataclasses.replace(
            self.loss_cfg,
            energy_weight=float(cfg.get("energy_weight", 1000.0)),
            forces_weight=float(cfg.get("forces_weight", 100.0)),
        )

    def _stage_two_due(self) -> bool:
        cfg = self.stage_two
        if not cfg.get("enabled", False) or self.stage_two_active:
            return False
        if cfg.get("start_epoch") is not None:
            return self.current_epoch >= int(cfg["start_epoch"])
        frac = float(cfg.get("start_fraction", 0.75))
        max_epochs = self.trainer.max_epochs
        due = bool(max_epochs and max_epochs > 0 and self.current_epoch >= math.ceil(
            frac * max_epochs))
        timer = self._timer()
        if timer is not None:
            # time-limited runs: start when this fraction of max_time has passed
            due = due or timer.time_elapsed("train") >= frac * timer._duration
        return due

    def _maybe_start_stage_two(self) -> None:
        """MACE's "stage two": re-weight the loss towards energies and lower the lr."""
        due = self._stage_two_due()
        due = bool(self.trainer.strategy.broadcast(due, src=0))
        if not due:
            return
        self.stage_two_active = True
        self.loss_cfg = self._stage_two_loss()
        lr = self.stage_two.get("lr")
        opt = self.optimizers(use_pl_optimizer=False)
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = float(lr)
            for config in self.trainer.lr_scheduler_configs:
                sched = config.scheduler
                if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                    # a constant stage-two lr (as MACE's SWA stage), not the cosine's tail
                    sched.base_lrs = [float(lr)] * len(sched.base_lrs)
                    sched.lr_lambdas = [_constant_one] * len(sched.lr_lambdas)
        if self._plateau is not None:
            self._plateau._reset()
        # the validation loss changes scale: select the best checkpoint within stage two
        from lightning.pytorch.callbacks import ModelCheckpoint

        for cb in self.trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor == "val_loss":
                cb.best_k_models = {}
                cb.kth_best_model_path = ""
                cb.best_model_score = None
                cb.best_model_path = ""
                cb.kth_value = torch.tensor(float("inf"))
        if self.trainer.is_global_zero:
            print(f"\nstage two from epoch {self.current_epoch}: energy weight "
                  f"{self.loss_cfg.energy_weight}, forces weight {self.loss_cfg.forces_weight}"
                  + (f", lr {lr}" if lr is not None else ""), flush=True)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint_file(cls, path: str | Path, map_location="cpu") -> ForceFieldModule:
        return cls.from_checkpoint(load_checkpoint(path, map_location=map_location))

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> ForceFieldModule:
        """The module of a loaded checkpoint dict (the one rebuild path: any architecture)."""
        hp = ckpt["hyper_parameters"]
        module = cls(model_config=hp["model_config"], training=hp.get("training"),
                     dtype=hp.get("dtype", "float64"), oc20=hp.get("oc20", False),
                     model_class=hp.get("model_class"))
        module.load_state_dict(ckpt["state_dict"])
        return module


def _constant_one(step: int) -> float:
    return 1.0


def _all_reduce_counts(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum this step's loss element counts over DDP ranks (one small all-reduce)."""
    counts = local.clone()
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    counts = counts.to(device)
    torch.distributed.all_reduce(counts)
    return counts.cpu(), torch.distributed.get_world_size()


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by ``forcefield train`` (no pickled code; one-sentence
    :class:`~forcefield.model_files.ModelFileError` for anything else)."""
    from forcefield.model_files import read_checkpoint

    return read_checkpoint(path)


def _gather_predictions(buf: Mapping[str, list]) -> dict[str, np.ndarray]:
    local = {k: (np.concatenate(v) if v else np.zeros((0, 3) if k.startswith("f_") else (0,)))
             for k, v in buf.items()}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, local)
        return {k: np.concatenate([g[k] for g in gathered]) for k in local}
    return local
