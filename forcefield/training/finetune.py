"""Fine-tuning: ``forcefield train init_from=PATH`` starts from a trained model.

The architecture, its hyperparameters and the weights come from ``PATH`` (a ``model.pt`` or
a training checkpoint: its EMA weights); ``model.*`` of the config is not used. The data
given trains the model further. ``finetune`` settings::

    reset_statistics: []   # e0s | shift | scale: take these from the new training data
    freeze: []             # regexes of parameter names kept fixed (bit-identical)
    reinitialize: []       # regexes of parameters started afresh (at training.optimizer.lr)
    pretrained_lr: null    # lr of the weights taken from PATH (null: training.optimizer.lr)
    recipe: {...}          # training.* values of a fine-tune (recipe.py)
    replay: null           # original data mixed into every epoch (replay.py)
    replay_fraction: 0.25
    replay_holdout: 50

Every element of the new training data must be one the model knows. Resuming a fine-tune
(``ckpt_path=``) rebuilds the model from the run's config.yaml and the checkpoint, as any
resume does; the same parameters stay frozen.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from forcefield.training.config import ConfigError

FINETUNE_KEYS = ("reset_statistics", "freeze", "reinitialize", "pretrained_lr", "recipe",
                 "replay", "replay_fraction", "replay_holdout")
"""``recipe`` is merged into ``training`` when the config is composed (recipe.py); the
``replay*`` keys are read by replay.py."""
RESETTABLE = {"e0s": "e0s", "shift": "mean_interaction_energy_per_atom",
              "scale": "force_rms"}
"""``finetune.reset_statistics`` entry -> the DatasetStatistics field that replaces it."""
_CONFIG_KEY = {"e0s": "e0s", "shift": "energy_shift", "scale": "energy_scale"}


def _list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [str(v) for v in value]
    raise ConfigError(f"finetune.{key} must be a list, got {value!r}")


def check_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``finetune`` settings as plain values; unknown entries are one sentence."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(FINETUNE_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join('finetune.' + k for k in unknown)}; "
                          f"allowed: {', '.join(FINETUNE_KEYS)}")
    out = {key: _list(cfg.get(key), key) for key in ("reset_statistics", "freeze",
                                                      "reinitialize")}
    bad = sorted(set(out["reset_statistics"]) - set(RESETTABLE))
    if bad:
        raise ConfigError(f"finetune.reset_statistics: {bad[0]!r} cannot be reset; choose from "
                          f"{', '.join(RESETTABLE)}")
    for key in ("freeze", "reinitialize"):
        for pattern in out[key]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"finetune.{key}: {pattern!r} is not a regex ({exc})") from exc
    lr = cfg.get("pretrained_lr")
    out["pretrained_lr"] = None if lr is None else float(lr)
    out["replay"] = cfg.get("replay")
    out["replay_fraction"] = cfg.get("replay_fraction", 0.25)
    holdout = cfg.get("replay_holdout", 50)
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise ConfigError(f"finetune.replay_holdout={holdout!r} must be a whole number >= 0 "
                          "(replay structures kept out of training to report their error)")
    out["replay_holdout"] = holdout
    return out


def load_pretrained(path: str) -> torch.nn.Module:
    """The network stored in ``path`` (model.pt or checkpoint), weights as trained."""
    from forcefield.model_files import load_network

    try:
        net, _ = load_network(path)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"init_from={path}: {exc}") from exc
    return net


def check_elements(species: Sequence[int], known: Sequence[int], path: str) -> None:
    """Every element of the new training data must be one the pretrained model knows."""
    from forcefield.data.elements import element_names, symbol_list

    unknown = sorted({int(z) for z in species} - {int(z) for z in known})
    if unknown:
        raise ConfigError(
            f"init_from={path}: the training data contains {element_names(unknown)}, which "
            f"the pretrained model does not know (it knows {symbol_list(known)}); fine-tune "
            "on data of those elements, or train a new model without init_from")


def _stat(statistics: Any, field: str) -> Any:
    if isinstance(statistics, Mapping):
        return statistics.get(field)
    return getattr(statistics, field, None)


def finetuned_model(pretrained: torch.nn.Module, statistics: Any, settings: Mapping[str, Any],
                    path: str, seed: int = 0) -> torch.nn.Module:
    """A trainable copy of ``pretrained`` with the statistics the user asked to reset
    replaced by the new data's, and the ``reinitialize`` parameters started afresh."""
    config = copy.deepcopy(dict(pretrained.config))
    data_species = _stat(statistics, "species")
    if data_species is not None:
        check_elements(data_species, config["species"], path)
    for entry in settings["reset_statistics"]:
        value = _stat(statistics, RESETTABLE[entry])
        if value is None:
            raise ConfigError(f"finetune.reset_statistics: the training data gives no {entry} "
                              "(no statistics computed); leave it out")
        if entry == "e0s":  # elements absent from the new data keep the model's E0
            value = {**{int(k): float(v) for k, v in dict(config.get("e0s") or {}).items()},
                     **{int(k): float(v) for k, v in dict(value).items()}}
        elif entry == "scale" and float(value) <= 0:
            raise ConfigError("finetune.reset_statistics: the new training data has no forces, "
                              "so it gives no scale; leave 'scale' out")
        config[_CONFIG_KEY[entry]] = value
    dtype = next(pretrained.parameters()).dtype
    model = type(pretrained)(**config).to(dtype)
    model.load_state_dict(pretrained.state_dict())
    if settings["reinitialize"]:
        torch.manual_seed(seed)
        fresh = type(pretrained)(**config).to(dtype).state_dict()
        names = _matching(model, settings["reinitialize"], "reinitialize")
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in names:
                    param.copy_(fresh[name])
    model.train()
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def _matching(model: torch.nn.Module, patterns: Sequence[str], key: str) -> set[str]:
    names = [name for name, _ in model.named_parameters()]
    out: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if re.search(pattern, n)}
        if not hits:
            raise ConfigError(
                f"finetune.{key}: {pattern!r} matches no parameter; names look like "
                f"{', '.join(names[:4])}, ... (regexes searched in each name)")
        out |= hits
    return out


def freeze(model: torch.nn.Module, settings: Mapping[str, Any]) -> list[str]:
    """Stop training the parameters matched by ``finetune.freeze``; return their names."""
    names = _matching(model, settings["freeze"], "freeze") if settings["freeze"] else set()
    for name, param in model.named_parameters():
        if name in names:
            param.requires_grad_(False)
    if names and all(not p.requires_grad for p in model.parameters()):
        raise ConfigError("finetune.freeze matches every parameter: nothing would train")
    return sorted(names)


def training_config(training: Mapping[str, Any], settings: Mapping[str, Any]
                    ) -> dict[str, Any]:
    """``training`` with the pretrained weights' lr as optimiser parameter groups: the
    ``reinitialize`` parameters keep training.optimizer.lr, all others get pretrained_lr."""
    training = copy.deepcopy(dict(training))
    lr = settings["pretrained_lr"]
    if lr is None:
        return training
    optimizer = dict(training.get("optimizer") or {})
    groups = list(optimizer.get("param_groups") or [])
    base_lr = float(optimizer.get("lr", 1e-3))
    # first match wins: the user's groups, then the fresh parts, then everything else
    groups += [{"match": pattern, "lr": base_lr} for pattern in settings["reinitialize"]]
    groups.append({"match": ".", "lr": float(lr)})
    optimizer["param_groups"] = groups
    training["optimizer"] = optimizer
    return training


__all__ = ["FINETUNE_KEYS", "check_config", "check_elements", "finetuned_model", "freeze",
           "load_pretrained", "training_config"]
