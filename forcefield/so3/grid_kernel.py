"""The fused CPU kernel of the grid Gaunt product (``_grid_kernel.c``), called via ctypes.

The C extension is built when the package is installed (``pip install -e .`` compiles it
with the system C compiler).  It is optional: where it was not built, or with
``FORCEFIELD_NO_CPU_KERNEL=1`` in the environment, ``available()`` is False and the grid
method falls back to three torch matrix products (same numbers to round-off, 2-6x slower
on CPU; see README, Benchmarks).  GPU tensors always take the torch route.

ctypes releases the GIL during a call, so large batches are split into row ranges run on
``torch.get_num_threads()`` Python threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import torch
from torch import Tensor

_BLOCK_ROWS = 32  # rows per kernel block (float32; 16 in float64): threads get whole blocks
_MIN_ROWS_PER_THREAD = 1024
_POINTER = ctypes.c_void_p
_ARGTYPES = [_POINTER] * 6 + [ctypes.c_int64] * 2 + [_POINTER] * 8


def load_extension(module: str) -> ctypes.CDLL | None:
    """The compiled C extension ``module`` through ctypes, or None (not built, fails to load,
    or ``FORCEFIELD_NO_CPU_KERNEL`` set): callers then take the torch route."""
    if os.environ.get("FORCEFIELD_NO_CPU_KERNEL"):
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    try:
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None


@cache
def _library() -> ctypes.CDLL | None:
    library = load_extension("forcefield.so3._grid_kernel")
    if library is None:
        return None
    for name in ("gaunt_grid_f32", "gaunt_grid_f64"):
        function = getattr(library, name)
        function.restype = ctypes.c_int
        function.argtypes = _ARGTYPES
    return library


_disabled = False


def available() -> bool:
    """True when the compiled kernel can be used (CPU float32/float64 tensors)."""
    return _library() is not None


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


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forcefield-gaunt")


if hasattr(os, "register_at_fork"):  # a forked child (data-loader worker) has no pool threads
    os.register_at_fork(after_in_child=_pool.cache_clear)


def _rows_view(x: Tensor, lead: torch.Size) -> tuple[Tensor, tuple[int, int]]:
    """``x`` broadcast to ``lead`` as [outer, inner, D] with (outer, inner) row strides.

    Broadcast dimensions keep stride 0, so a [nodes, 1, D] operand is not copied against a
    [nodes, channels, D] one.
    """
    expanded = x.expand(*lead, x.shape[-1])
    inner = lead[-1] if lead else 1
    rows = expanded.reshape(-1, inner, x.shape[-1])  # copies only if the dims cannot merge
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows, (rows.stride(0), rows.stride(1))


def gaunt_grid(x1: Tensor, x2: Tensor, tables: dict[str, Tensor]) -> Tensor:
    """The grid Gaunt product of ``x1`` and ``x2`` (leading dimensions broadcast) by the
    fused kernel; ``tables`` are ``separable_grid_tables`` in the inputs' dtype."""
    library = _library()
    if library is None:
        raise RuntimeError("the compiled Gaunt grid kernel is not available")
    dims = tables["dims"]
    lmax_out = int(dims[2])
    lead = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    out = torch.empty(*lead, (lmax_out + 1) ** 2, dtype=x1.dtype)
    if out.numel() == 0:
        return out
    rows1, strides1 = _rows_view(x1, lead)
    rows2, strides2 = _rows_view(x2, lead)
    n_outer, n_inner = rows1.shape[0], rows1.shape[1]
    total = n_outer * n_inner
    function = library.gaunt_grid_f32 if x1.dtype == torch.float32 else library.gaunt_grid_f64
    shape = (ctypes.c_int64 * 2)(n_outer, n_inner)
    s1 = (ctypes.c_int64 * 2)(*strides1)
    s2 = (ctypes.c_int64 * 2)(*strides2)
    fixed = [tables[name].data_ptr() for name in (
        "legendre1", "legendre2", "legendre_out", "azimuth_cos", "azimuth_sin",
        "output_cos", "output_sin")]

    def run(bounds: tuple[int, int]) -> int:
        return function(shape, rows1.data_ptr(), s1, rows2.data_ptr(), s2, out.data_ptr(),
                        bounds[0], bounds[1], dims.data_ptr(), *fixed)

    workers = max(1, min(torch.get_num_threads(), total // _MIN_ROWS_PER_THREAD))
    if workers == 1:
        status = [run((0, total))]
    else:
        step = math.ceil(total / workers / _BLOCK_ROWS) * _BLOCK_ROWS
        ranges = [(start, min(total, start + step)) for start in range(0, total, step)]
        status = list(_pool(workers).map(run, ranges))
    if any(status):
        raise MemoryError("the Gaunt grid kernel could not allocate its scratch buffer")
    return out
