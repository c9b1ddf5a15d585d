"""The fused CPU kernel of the grid Gaunt product: the ``forcefield::gaunt_grid`` operator.

The operator library is built when the package is installed (``forcefield.ops``).  It is
optional: where it was not built, or with ``FORCEFIELD_NO_CPU_KERNEL=1`` in the environment,
``available()`` is False and the grid method falls back to three torch matrix products
(same numbers to round-off, 2-6x slower on CPU).  GPU tensors always take the torch route.
The operator splits rows over ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from forcefield import ops

_disabled = False


def available() -> bool:
    """True when the compiled kernel can be used (CPU float32/float64 tensors)."""
    return ops.available()


def supports(x: Tensor) -> bool:
    """Whether the kernel will compute products of tensors like ``x``."""
    return (not _disabled and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and available())


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inside the block the grid product takes the torch route (for comparisons and tests)."""
    global _disabled
    previous, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = previous


def _rows_view(x: Tensor, lead: torch.Size) -> Tensor:
    """``x`` broadcast to ``lead`` as [outer, inner, D].

    Broadcast dimensions keep stride 0, so a [nodes, 1, D] operand is not copied against a
    [nodes, channels, D] one.
    """
    expanded = x.expand(*lead, x.shape[-1])
    inner = lead[-1] if lead else 1
    outer = math.prod(lead[:-1])
    return expanded.reshape(outer, inner, x.shape[-1])  # copies only if the dims cannot merge


def gaunt_grid(x1: Tensor, x2: Tensor, tables: dict[str, Tensor]) -> Tensor:
    """The grid Gaunt product of ``x1`` and ``x2`` (leading dimensions broadcast) by the
    fused kernel; ``tables`` are ``separable_grid_tables`` in the inputs' dtype."""
    lead = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    names = ("legendre1", "legendre2", "legendre_out", "azimuth_cos", "azimuth_sin",
             "output_cos", "output_sin")
    out = torch.ops.forcefield.gaunt_grid(_rows_view(x1, lead), _rows_view(x2, lead),
                                          tables["dims"], *(tables[name] for name in names))
    return out.reshape(*lead, out.shape[-1])
