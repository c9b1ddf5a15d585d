"""Checking a composed training config (composing it is the command layer's job:
:mod:`forcefield.cli.compose`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from forcefield.errors import ConfigError

DTYPES = ("float32", "float64")
"""The dtypes a model can be trained, evaluated and exported in."""


def check_dtype(dtype: object, key: str = "dtype") -> None:
    """Raise ConfigError unless ``dtype`` is None or one of :data:`DTYPES`."""
    if dtype is not None and str(dtype) not in DTYPES:
        raise ConfigError(f"{key}={dtype!r} is not supported; use float32 or float64")


def check_keys(cfg: DictConfig, allowed: Iterable[str], where: str = "") -> None:
    """Raise ConfigError naming keys of ``cfg`` that are not in ``allowed``."""
    unknown = sorted(set(cfg.keys()) - set(allowed) - {"hydra"})
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + str(k) for k in unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def check_missing(cfg: DictConfig) -> None:
    """Raise ConfigError naming mandatory values (``???``) left unset."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"missing value(s) for {', '.join(missing)}; set them on the command line, "
            f"e.g. {missing[0]}=..."
        )


def to_container(cfg) -> dict:
    """The config as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_yaml(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config to ``path`` atomically."""
    from forcefield.training.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


__all__ = ["DTYPES", "ConfigError", "check_dtype", "check_keys", "check_missing", "save_yaml",
           "to_container"]
