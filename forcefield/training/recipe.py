"""The fine-tuning recipe: with ``init_from``, ``finetune.recipe`` replaces the from-scratch
``training.*`` values, and the weights keep the model file's dtype.

The from-scratch defaults of conf/train.yaml (lr 0.01, stage two with energy weight 1000,
an EMA that forgets its start within ten steps) throw away what a trained model knows in
the first epoch of a short fine-tune. The recipe is plain config: it is merged into
``training`` when the config is composed, so ``forcefield train init_from=... --cfg`` shows
the values a run will use, and every key given on the command line wins over it
(``training.optimizer.lr=...``; ``finetune.recipe.X=...`` changes the recipe itself;
``finetune.recipe=null`` turns it off). A resumed run starts from its saved config.yaml, where
the recipe is already applied, so nothing here runs twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from forcefield.errors import ConfigError


def given_keys(overrides: Iterable[str]) -> set[str]:
    """The dotted keys a command line sets (``+a.b=1`` -> ``a.b``; groups too)."""
    return {item.partition("=")[0].lstrip("+~") for item in overrides if "=" in item
            or item.startswith("~")}


def _leaves(node: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested mapping."""
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        path = f"{prefix}.{key}"
        if isinstance(value, Mapping) and value:
            out += _leaves(value, path)
        else:
            out.append((path, value))
    return out


def _overridden(path: str, given: set[str]) -> bool:
    """Whether the command line set ``path``, a parent of it or a key below it."""
    return any(path == k or path.startswith(k + ".") or k.startswith(path + ".")
               for k in given)


def recipe_entries(cfg: DictConfig, given: set[str]) -> list[tuple[str, Any]]:
    """The ``training.*`` values of ``finetune.recipe`` that apply (not given by the user)."""
    recipe = OmegaConf.select(cfg, "finetune.recipe")
    if recipe is None:
        return []
    if not isinstance(recipe, DictConfig):
        raise ConfigError(f"finetune.recipe must be a mapping of training.* values, got "
                          f"{recipe!r}; use finetune.recipe=null to train with training.* as is")
    plain = OmegaConf.to_container(recipe, resolve=True)
    entries = []
    for path, value in _leaves(plain, "training"):
        parent, _, key = path.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None)
        if not isinstance(node, DictConfig) or key not in node:
            raise ConfigError(
                f"finetune.recipe{path.removeprefix('training')} names no training setting "
                f"({path} is not in conf/train.yaml); check the spelling")
        if not _overridden(path, given):
            entries.append((path, value))
    return entries


def model_file_dtype(path: str) -> str | None:
    """The dtype stored in a model file or checkpoint (None when it cannot be read: the
    training command then names the problem with the file)."""
    from forcefield.model_files import read_any

    try:
        kind, raw = read_any(path)
    except (OSError, ValueError):
        return None
    dtype = raw.get("dtype") if kind == "model" else raw.get("hyper_parameters", {}).get(
        "dtype")
    return str(dtype) if dtype in ("float32", "float64") else None


def apply_recipe(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """Merge ``finetune.recipe`` into ``training`` and take the model file's dtype, for a
    fine-tune (``init_from`` set, not resuming); return the ``key=value`` texts applied."""
    if not cfg.get("init_from") or cfg.get("ckpt_path"):
        return []
    given = given_keys(overrides)
    applied = []
    with open_dict(cfg):
        for path, value in recipe_entries(cfg, given):
            OmegaConf.update(cfg, path, value, merge=False)
            applied.append(f"{path}={value}")
        if "dtype" not in given:
            dtype = model_file_dtype(str(cfg.init_from))
            if dtype is not None and dtype != cfg.get("dtype"):
                cfg.dtype = dtype
                applied.append(f"dtype={dtype}")
    return applied


__all__ = ["apply_recipe", "given_keys", "model_file_dtype", "recipe_entries"]
