"""forcefield.models: complete potentials (GauntMACE), presets and ``build_model``."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .gaunt_mace import DEFAULT_CONFIG, GauntMACE

__all__ = ["GauntMACE", "DEFAULT_CONFIG", "PRESETS", "build_model", "get_preset"]

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


def build_model(model_cfg: Mapping[str, Any] | None, statistics: Any = None) -> GauntMACE:
    """Build a GauntMACE from a model config, filling in the dataset statistics.

    ``model_cfg`` may name a preset (``{"name": "gaunt_mace_small", ...}``: the preset's
    values are the defaults, explicit keys override them). ``statistics`` is a
    ``forcefield.data.DatasetStatistics`` (or a dict with the same fields): species, e0s,
    avg_num_neighbors, mean_interaction_energy_per_atom (-> energy_shift) and force_rms
    (-> energy_scale) fill every key that the config leaves unset (None or absent).
    """
    cfg = _plain(model_cfg) if model_cfg is not None else {}
    name = cfg.get("name")
    base = get_preset(name) if name in PRESETS else {}
    cfg = {**base, **{k: v for k, v in cfg.items() if v is not None}}
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
    return GauntMACE(**cfg)
