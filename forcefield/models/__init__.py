"""forcefield.models: complete potentials, their registry, presets and ``build_model``.

``MODELS`` maps an architecture name (the ``architecture`` key of a model config; absent
means ``gaunt_mace``, as in files written before there were several) to its class.  Every
class takes its config as keyword arguments, keeps the complete config as ``model.config``
and lists its valid keys in ``config_keys()``.  A new family registers with one line.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from .gaunt_equiformer_v2 import GauntEquiformerV2
from .gaunt_mace import DEFAULT_CONFIG, GauntMACE

__all__ = ["GauntMACE", "GauntEquiformerV2", "DEFAULT_CONFIG", "MODELS", "PRESETS",
           "architecture_of", "build_model", "config_keys", "get_preset", "model_class",
           "preset_config", "preset_names"]

#: architecture name -> model class
MODELS: dict[str, type[torch.nn.Module]] = {
    "gaunt_mace": GauntMACE,
    "gaunt_equiformer_v2": GauntEquiformerV2,
}
DEFAULT_ARCHITECTURE = "gaunt_mace"


def architecture_of(model_cfg: Mapping[str, Any] | None) -> str:
    """The architecture a model config names (``gaunt_mace`` when it names none)."""
    name = (model_cfg or {}).get("architecture") or DEFAULT_ARCHITECTURE
    if name not in MODELS:
        raise ValueError(f"model.architecture={name!r} is not a known architecture; choose one "
                         f"of {sorted(MODELS)} (or a preset: model=<name>)")
    return str(name)


def model_class(name: str) -> type[torch.nn.Module]:
    """The class registered under an architecture name or a class name (model files store
    the class name)."""
    if name in MODELS:
        return MODELS[name]
    for cls in MODELS.values():
        if cls.__name__ == name:
            return cls
    raise KeyError(name)


def config_keys(architecture: str) -> set[str]:
    """The valid model config keys of an architecture."""
    return set(MODELS[architecture].config_keys())

#: Model hyperparameter presets (conf/model/<name>.yaml mirrors these).
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's 3BPA model: 256 channels, L=2, correlation 3, two interactions, r_max 5 A.
    "gaunt_mace": {
        "name": "gaunt_mace",
        "r_max": 5.0,
        "channels": 256,
        "lmax": 2,
        "lmax_sh": 3,
        "correlation": 3,
        "num_interactions": 2,
        "num_radial": 8,
        "radial_mlp": [64, 64, 64],
        "readout_mlp": 16,
        "gaunt_method": "auto",
    },
    # Small and fast on 2 CPU cores (the default for `forcefield train`).
    "gaunt_mace_small": {
        "name": "gaunt_mace_small",
        "r_max": 5.0,
        "channels": 32,
        "lmax": 2,
        "lmax_sh": 2,
        "correlation": 3,
        "num_interactions": 2,
        "num_radial": 8,
        "radial_mlp": [32, 32],
        "readout_mlp": 16,
        "gaunt_method": "auto",
    },
}


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def preset_names() -> list[str]:
    """Every preset ``model=<name>`` names: the files of conf/model/ (GauntMACE's are also
    ``PRESETS``)."""
    return sorted({*PRESETS, *(path.stem for path in _preset_dir().glob("*.yaml"))})


def preset_config(name: str) -> dict[str, Any]:
    """The preset's values as conf/model/<name>.yaml gives them (``architecture`` included);
    null values are those the training data's statistics fill."""
    import yaml

    path = _preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown model preset {name!r}; choose one of {preset_names()}")
    return dict(yaml.safe_load(path.read_text()))


def _preset_dir():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "conf" / "model"


def _plain(obj: Any) -> Any:
    """DictConfig/ListConfig/Mapping -> plain dict/list (without importing omegaconf)."""
    if isinstance(obj, Mapping) or hasattr(obj, "items"):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or (hasattr(obj, "__iter__") and hasattr(obj, "__len__")
                                          and not isinstance(obj, (str, bytes))):
        return [_plain(v) for v in obj]
    return obj


def _stat(statistics: Any, key: str) -> Any:
    if statistics is None:
        return None
    if isinstance(statistics, Mapping):
        return statistics.get(key)
    return getattr(statistics, key, None)


def build_model(model_cfg: Mapping[str, Any] | None, statistics: Any = None) -> torch.nn.Module:
    """Build the model a config names (``architecture``), filling in the dataset statistics.

    ``model_cfg`` may name a preset (``{"name": "gaunt_mace_small", ...}``: the preset's
    values are the defaults, explicit keys override them). ``statistics`` is a
    ``forcefield.data.DatasetStatistics`` (or a dict with the same fields): species, e0s,
    avg_num_neighbors, mean_interaction_energy_per_atom (-> energy_shift) and force_rms
    (-> energy_scale) fill every key that the config leaves unset (None or absent).
    """
    cfg = _plain(model_cfg) if model_cfg is not None else {}
    name = cfg.get("name")
    if name is not None and cfg.get("architecture") is None and name not in preset_names():
        raise ValueError(f"model name {name!r} is neither a preset ({', '.join(preset_names())})"
                         " nor given with an architecture; name a preset, or give "
                         "model.architecture and the hyperparameters")
    if name in PRESETS and architecture_of(cfg) == "gaunt_mace":
        # GauntMACE presets: a null value means the preset's
        cfg = {**get_preset(name), **{k: v for k, v in cfg.items() if v is not None}}
    elif name in preset_names() and name not in PRESETS:
        preset = preset_config(name)
        if cfg.get("architecture") in (None, preset["architecture"]):
            # the other presets (conf/model/*.yaml): keys absent from the config are the
            # preset's; a null given means the constructor's default (e.g. no neighbour cap)
            cfg = {**preset, **cfg}
    architecture = architecture_of(cfg)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    fill = {
        "species": _stat(statistics, "species"),
        "e0s": _stat(statistics, "e0s"),
        "avg_num_neighbors": _stat(statistics, "avg_num_neighbors"),
        "energy_shift": _stat(statistics, "mean_interaction_energy_per_atom"),
        "energy_scale": _stat(statistics, "force_rms"),
    }
    for key, value in fill.items():
        if cfg.get(key) in (None, {}, []) and value is not None:
            cfg[key] = _plain(value) if key in ("species", "e0s") else value
    if cfg.get("energy_scale") is not None and float(cfg["energy_scale"]) <= 0:
        cfg["energy_scale"] = 1.0
    unknown = sorted(set(cfg) - config_keys(architecture))
    if unknown:
        raise ValueError(f"unknown model config key(s) {unknown} for architecture "
                         f"{architecture!r}; valid keys are {sorted(config_keys(architecture))}")
    return MODELS[architecture](**cfg)
