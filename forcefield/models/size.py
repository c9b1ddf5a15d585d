"""Parameter counts of large presets without building them: blocks are identical, so
count(L layers) = count(1) + (L - 1) * (count(2) - count(1)), from two small models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def _count(config: Mapping[str, Any]) -> int:
    from forcefield.models import build_model

    return sum(p.numel() for p in build_model(dict(config)).parameters())


def parameter_count(config: Mapping[str, Any]) -> int:
    """Trainable parameters of the model ``config`` describes (complete: species and
    statistics given), built with one and two blocks only (``num_layers``) to save memory."""
    layers = int(config["num_layers"])
    with torch.random.fork_rng():
        one = _count({**config, "num_layers": 1})
        if layers == 1:
            return one
        two = _count({**config, "num_layers": 2})
    return one + (layers - 1) * (two - one)


__all__ = ["parameter_count"]
