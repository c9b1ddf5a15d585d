"""Fine-tuning into another force mode: ``forcefield train init_from=M model.forces=gradient``.

The eSEN recipe: train a direct-force model (fast; no second derivatives), then fine-tune
it with gradient forces (F = -dE/dx) so that it conserves energy in MD.  With ``init_from``
the model config is the file's (:func:`model_config_for_finetune`); ``model.forces`` is the
one model key the command line may change, since every weight of the energy path carries
over.  Direct -> gradient drops the force head; gradient -> direct starts one afresh.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from forcefield.errors import ConfigError

CHANGEABLE = ("forces",)
"""Model keys a fine-tune may change: they leave the energy path's weights as they are."""


def stored_model_config(path: str) -> dict[str, Any]:
    """The constructor arguments stored in a model file or checkpoint (one sentence for a
    file that is not one)."""
    from forcefield.model_files import read_any

    try:
        kind, raw = read_any(path)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"init_from={path}: {exc}") from exc
    config = raw["config"] if kind == "model" else raw["hyper_parameters"]["model_config"]
    return copy.deepcopy(dict(config))


def model_config_for_finetune(path: str, overrides: Sequence[tuple[str, Any]]
                              ) -> dict[str, Any]:
    """The model config of ``init_from=path`` with the command line's ``model.KEY=VALUE``
    ``overrides`` applied; only the keys in :data:`CHANGEABLE` may be given."""
    config = stored_model_config(path)
    for key, value in overrides:
        if key not in CHANGEABLE:
            raise ConfigError(
                f"model.{key} cannot change with init_from={path}: the architecture and "
                "weights come from that file; only model.forces can (direct -> gradient "
                "fine-tunes a conservative model)")
        if key not in config:
            raise ConfigError(f"model.{key}={value}: the model in {path} has no '{key}' "
                              "setting (its forces are always -dE/dx)")
        config[key] = value
    return config


def with_force_mode(model: torch.nn.Module, forces: str | None, path: str) -> torch.nn.Module:
    """``model`` rebuilt with ``forces`` ("direct" | "gradient") and its weights; the force
    head is dropped (direct -> gradient) or freshly initialised (gradient -> direct)."""
    current = model.config.get("forces")
    if forces is None or forces == current:
        return model
    config = {**model.config, "forces": forces}
    dtype = next(model.parameters()).dtype
    try:
        rebuilt = type(model)(**config).to(dtype)
    except ValueError as exc:
        raise ConfigError(f"model.forces={forces} with init_from={path}: {exc}") from exc
    result = rebuilt.load_state_dict(model.state_dict(), strict=False)
    # only the force head may be missing (new) or left over (dropped)
    others = [k for k in [*result.missing_keys, *result.unexpected_keys]
              if not k.startswith("force_")]
    if others:
        raise ConfigError(f"init_from={path}: its weights do not fit model.forces={forces} "
                          f"({others[0]}); fine-tune without changing model.forces")
    return rebuilt.train(model.training)


__all__ = ["CHANGEABLE", "model_config_for_finetune", "stored_model_config", "with_force_mode"]
