"""Whether an optional package is importable, without importing it."""

from __future__ import annotations

import importlib.util


def installed(module: str) -> bool:
    """True when ``module`` (dotted names too) can be imported. ``find_spec`` of a dotted
    name imports its parent and raises when that is missing (``hydra_plugins`` exists only
    once some Hydra plugin is installed); that counts as not installed."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
