"""Optimiser and learning-rate scheduler factories (config -> torch objects).

Optimiser config (``training.optimizer``)::

    name: adam | adamw
    lr: 0.01
    amsgrad: true
    betas: [0.9, 0.999]
    eps: 1.0e-8
    weight_decay: 5.0e-7         # applied to weight matrices (ndim >= 2)
    no_decay: [bias, ...]        # name substrings that never decay
    param_groups:                # optional per-group settings, first match wins
      - {match: "readout", weight_decay: 0.0, lr: 0.005}

Scheduler config (``training.scheduler``)::

    name: plateau | cosine | none
    # plateau: factor, patience, min_lr, threshold, monitor (default val_loss)
    # cosine: warmup_steps (or warmup_epochs), min_lr_ratio, total_steps (optional; with
    #   trainer.max_time the decay follows the time budget: see CosineFactor)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def parameter_groups(model: nn.Module, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Split trainable parameters into groups with their own weight decay / lr."""
    weight_decay = float(cfg.get("weight_decay", 0.0) or 0.0)
    no_decay = list(cfg.get("no_decay", None) or [])
    custom = list(cfg.get("param_groups", None) or [])
    for g in custom:
        if "match" not in g:
            raise ValueError("every training.optimizer.param_groups entry needs a 'match' regex")
    groups: dict[tuple, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        options: dict[str, Any] = {}
        rule = next((g for g in custom if re.search(str(g["match"]), name)), None)
        if rule is not None:
            options = {k: v for k, v in dict(rule).items() if k != "match"}
        if "weight_decay" not in options:
            decays = param.ndim >= 2 and not any(s in name for s in no_decay)
            options["weight_decay"] = weight_decay if decays else 0.0
        key = tuple(sorted((k, float(v)) for k, v in options.items()))
        group = groups.setdefault(key, {"params": [], "names": [], **options})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = str(cfg.get("name", "adam")).lower()
    if name not in _OPTIMIZERS:
        raise ValueError(
            f"training.optimizer.name={name!r} is not supported; "
            f"choose one of {sorted(_OPTIMIZERS)}"
        )
    groups = parameter_groups(model, cfg)
    for g in groups:
        g.pop("names", None)
    kwargs = {
        "lr": float(cfg.get("lr", 1e-3)),
        "amsgrad": bool(cfg.get("amsgrad", False)),
        "betas": tuple(float(b) for b in cfg.get("betas", (0.9, 0.999))),
        "eps": float(cfg.get("eps", 1e-8)),
    }
    return _OPTIMIZERS[name](groups, **kwargs)


class CosineFactor:
    """The lr factor of step ``step``: a linear warm-up from 0 to 1 over ``warmup_steps``,
    then a cosine decay to ``min_lr_ratio`` at ``total_steps``.

    ``total_steps`` may change while training: a time-limited run re-estimates it every
    epoch from its pace (:meth:`follow`), so that the decay ends when the time does, on a
    slow machine as on a fast one. An object rather than a closure so that ``LambdaLR``
    saves its state in checkpoints (an exact resume keeps the re-estimated length).
    """

    def __init__(self, warmup_steps: int, total_steps: float, min_lr_ratio: float = 0.0):
        self.warmup_steps = max(0, int(warmup_steps))
        self.max_steps = float(total_steps)      # the step limit (inf: none)
        self.total_steps = max(self.warmup_steps + 1.0, self.max_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    def follow(self, steps_in_budget: float) -> None:
        """Decay over ``steps_in_budget`` steps (those the time budget allows), or over the
        step limit when that comes first."""
        self.total_steps = max(self.warmup_steps + 1.0, min(self.max_steps, steps_in_budget))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if not math.isfinite(self.total_steps):
            return 1.0  # no estimate yet (the first epoch of a time-limited run)
        span = max(1.0, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (
            1.0 + math.cos(math.pi * progress))


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: float,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base lr, then a cosine decay to ``min_lr_ratio`` x base
    (``total_steps`` may be ``inf`` for a time-limited run: see :class:`CosineFactor`)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, CosineFactor(warmup_steps, total_steps, min_lr_ratio))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: Mapping[str, Any] | None,
    total_steps: int | None = None,
    steps_per_epoch: int | None = None,
    time_limited: bool = False,
) -> dict[str, Any] | None:
    """A Lightning ``lr_scheduler`` config dict, or None for a constant lr.

    ``time_limited``: the run stops by ``trainer.max_time``; a cosine then needs no step
    count (the trainer module re-estimates it every epoch from the pace of the run)."""
    if not cfg:
        return None
    name = str(cfg.get("name", "none")).lower()
    if name in ("none", "null", "constant"):
        return None
    if name == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=float(cfg.get("factor", 0.8)),
            patience=int(cfg.get("patience", 50)),
            threshold=float(cfg.get("threshold", 1e-4)),
            min_lr=float(cfg.get("min_lr", 0.0)),
        )
        return {"scheduler": sched, "monitor": str(cfg.get("monitor", "val_loss")),
                "interval": "epoch", "frequency": 1, "strict": True}
    if name == "cosine":
        warmup = cfg.get("warmup_steps")
        if warmup is None:
            # fractional epochs allowed (OC20 recipes warm up for 0.1 epoch)
            warmup = int(float(cfg.get("warmup_epochs", 0) or 0) * int(steps_per_epoch or 0))
        total = cfg.get("total_steps") or total_steps
        if total is None or not math.isfinite(float(total)):
            if not time_limited:
                raise ValueError(
                    "training.scheduler.name=cosine needs a finite number of steps: set "
                    "trainer.max_epochs, trainer.max_time or training.scheduler.total_steps"
                )
            total = math.inf  # follows the time budget (CosineFactor.follow)
        sched = cosine_with_warmup(optimizer, int(warmup), float(total),
                                   float(cfg.get("min_lr_ratio", 0.0)))
        return {"scheduler": sched, "interval": "step", "frequency": 1}
    raise ValueError(
        f"training.scheduler.name={name!r} is not supported; choose plateau, cosine or none"
    )


def trainable_names(groups: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    return [list(g.get("names", [])) for g in groups]
