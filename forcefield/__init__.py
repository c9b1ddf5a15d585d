"""forcefield: equivariant interatomic potentials built on the Gaunt tensor product.

Heavy submodules (training, calculator) are imported lazily so that
``import forcefield`` and ``forcefield --help`` stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ForceFieldCalculator": "forcefield.calculator",
    "load_model": "forcefield.export",
    "save_model": "forcefield.export",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'forcefield' has no attribute {name!r}")
