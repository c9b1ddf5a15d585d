"""forcefield: equivariant interatomic potentials built on the Gaunt tensor product.

Heavy submodules (training, calculator) are imported lazily so that
``import forcefield`` and ``forcefield --help`` stay fast.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: libgomp's spin-wait, in iterations, that forcefield sets when it is imported before torch.
OPENMP_SPIN_COUNT = "10000"

# The fused CPU kernels (forcefield.so3) run on their own threads between torch's OpenMP
# regions. With libgomp's default spin-wait (300000 iterations) torch's idle OpenMP threads
# keep spinning on the cores those kernels need: measured on 2 cores, a 2-thread kernel call
# right after a torch op took as long as on 1 thread. libgomp reads the setting once, when
# torch loads it, so it is set here (as a default: a value in the environment wins).
if "torch" not in sys.modules:
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)

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
