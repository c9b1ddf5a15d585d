"""The fused CPU kernels of the Gaunt convolution (``_conv_kernel.c``), called via ctypes.

Built by ``pip install -e .`` like ``_grid_kernel.c`` and just as optional: where it was not
built, or with ``FORCEFIELD_NO_CPU_KERNEL=1``, ``available()`` is False and the convolution
takes its torch route.  Work is split over ``torch.get_num_threads()`` Python threads by
ranges of nodes (ctypes releases the GIL); every output entry is computed by one thread in
a fixed order, so results do not depend on the number of threads.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from forcefield.so3 import grid_kernel

_MIN_EDGES_PER_THREAD = 256
MAX_DEGREE = 7  # per operand of the convolution kernels (MAXL in _conv_kernel_body.h)
_POINTER = ctypes.c_void_p
_INT = ctypes.c_int64
#: argument types of every kernel ``gaunt_<name>_{f32,f64}`` in _conv_kernel.c
_ARGTYPES = {
    "conv_receivers": [_POINTER] * 4 + [_POINTER] * 2 + [_POINTER, _INT] + [_POINTER] * 5
    + [_INT] * 2,
    "conv_senders": [_POINTER] * 4 + [_POINTER] * 2 + [_POINTER, _INT] + [_POINTER] * 9
    + [_INT] * 2,
    "conv_double_senders": [_POINTER] * 19 + [_INT] * 2,
    "conv_double_receivers": [_POINTER] * 15 + [_INT] * 2,
    "powers_forward": [_POINTER] * 6 + [_INT] * 2,
    "powers_backward": [_POINTER] * 8 + [_INT] * 2,
    "powers_double": [_POINTER] * 11 + [_INT] * 2,
}


@cache
def _library() -> ctypes.CDLL | None:
    library = grid_kernel.load_extension("forcefield.so3._conv_kernel")
    if library is None:
        return None
    for dtype in ("f32", "f64"):
        for name, argtypes in _ARGTYPES.items():
            function = getattr(library, f"gaunt_{name}_{dtype}")
            function.restype = ctypes.c_int
            function.argtypes = argtypes
    return library


def available() -> bool:
    """True when the compiled convolution kernels can be used."""
    return _library() is not None


def supports(x: Tensor) -> bool:
    """Whether the kernels will take tensors like ``x`` (CPU float32/float64; not inside
    ``grid_kernel.disabled()``, which switches every fused kernel off)."""
    return (not grid_kernel._disabled and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and available())


@dataclass(frozen=True)
class EdgeIndex:
    """Edges in compressed-row form twice: grouped by receiver and grouped by sender.

    ``recv_perm[recv_ptr[i]:recv_ptr[i + 1]]`` are the edges into node i (in edge order),
    likewise ``send_*`` for the edges out of node i.
    """

    sender: Tensor
    receiver: Tensor
    num_nodes: int
    recv_ptr: Tensor
    recv_perm: Tensor
    send_ptr: Tensor
    send_perm: Tensor

    @staticmethod
    def build(sender: Tensor, receiver: Tensor, num_nodes: int) -> EdgeIndex:
        sender = sender.to(device="cpu", dtype=torch.int64).contiguous()
        receiver = receiver.to(device="cpu", dtype=torch.int64).contiguous()

        def csr(index: Tensor) -> tuple[Tensor, Tensor]:
            counts = torch.bincount(index, minlength=num_nodes)
            ptr = torch.zeros(num_nodes + 1, dtype=torch.int64)
            torch.cumsum(counts, 0, out=ptr[1:])
            return ptr, torch.argsort(index, stable=True)

        recv_ptr, recv_perm = csr(receiver)
        send_ptr, send_perm = csr(sender)
        return EdgeIndex(sender, receiver, num_nodes, recv_ptr, recv_perm, send_ptr, send_perm)


def _node_ranges(ptr: Tensor) -> list[tuple[int, int]]:
    """Node ranges with about equal numbers of edges, one per thread."""
    num_nodes = ptr.shape[0] - 1
    total = int(ptr[-1])
    workers = max(1, min(torch.get_num_threads(), total // _MIN_EDGES_PER_THREAD, num_nodes))
    if workers == 1:
        return [(0, num_nodes)]
    targets = torch.arange(1, workers, dtype=torch.int64) * total // workers
    cuts = torch.searchsorted(ptr, targets).tolist()
    bounds = [0, *cuts, num_nodes]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _run(function, ranges: list[tuple[int, int]], *args) -> None:
    def one(bounds: tuple[int, int]) -> int:
        return function(*args, bounds[0], bounds[1])

    if len(ranges) == 1:
        status = [one(ranges[0])]
    else:
        status = list(grid_kernel._pool(len(ranges)).map(one, ranges))
    if any(code == 2 for code in status):
        raise ValueError(f"the convolution kernel takes degrees up to {MAX_DEGREE} per operand")
    if any(status):
        raise MemoryError("the Gaunt convolution kernel could not allocate its scratch buffer")


def _pointer(x: Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _rows(x: Tensor | None) -> Tensor | None:
    """``x`` with unit stride in its last dimension (other strides may be anything, 0 too)."""
    return x if x is None or x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _strides(x: Tensor | None) -> ctypes.Array:
    return (_INT * 2)(0, 0) if x is None else (_INT * 2)(x.stride(0), x.stride(1))


def _dims(hg: Tensor, n2: int) -> ctypes.Array:
    n, c, n1, pp = hg.shape
    if pp % 8:
        raise ValueError(f"grid points must be padded to a multiple of 8, got {pp}")
    return (_INT * 6)(n, c, n1, n2, n2 * n2, pp)


def _function(name: str, dtype: torch.dtype):
    """The kernel ``gaunt_<name>`` for ``dtype`` (argument types set by ``_library``)."""
    return getattr(_library(), f"gaunt_{name}_{'f32' if dtype == torch.float32 else 'f64'}")


def _sender_outputs(hg: Tensor, wn: Tensor | None, sh: Tensor, n2: int,
                    want: tuple[bool, bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """Uninitialised outputs of the sender kernels (every element is written by them):
    [N, C, n1, pp], [E, C, n1] (only with node weights), [E, C, n2], [E, n2^2]."""
    n, c, n1, pp = hg.shape
    e = sh.shape[0]
    options = dict(dtype=hg.dtype)
    return (torch.empty(n, c, n1, pp, **options) if want[0] else None,
            torch.empty(e, c, n1, **options) if want[1] and wn is not None else None,
            torch.empty(e, c, n2, **options) if want[2] else None,
            torch.empty(e, n2 * n2, **options) if want[3] else None)


def receivers(hg: Tensor, wn: Tensor | None, r: Tensor, sh: Tensor, ysh: Tensor,
              index: EdgeIndex) -> Tensor:
    """Z [N, C, pp]: per receiving node, the sum over incoming edges of X * Yv on the grid
    (see ``_conv_kernel.c``).  ``hg`` [N, C, n1, pp] and ``ysh`` [n2^2, pp] contiguous;
    ``wn`` [E, C, n1] (or None), ``r`` [E, C, >= n2], ``sh`` [E, >= n2^2] strided rows."""
    hg, wn, r, sh = hg.contiguous(), _rows(wn), _rows(r), _rows(sh)
    n, c, _, pp = hg.shape
    n2 = int(round(ysh.shape[0] ** 0.5))
    z = torch.empty(n, c, pp, dtype=hg.dtype)
    if z.numel() == 0:
        return z
    function = _function("conv_receivers", hg.dtype)
    _run(function, _node_ranges(index.recv_ptr), _dims(hg, n2), hg.data_ptr(),
         _pointer(wn), _strides(wn), r.data_ptr(), _strides(r), sh.data_ptr(), sh.stride(0),
         ysh.data_ptr(), index.sender.data_ptr(), index.recv_ptr.data_ptr(),
         index.recv_perm.data_ptr(), z.data_ptr())
    return z


def senders(hg: Tensor, wn: Tensor | None, r: Tensor, sh: Tensor, ysh: Tensor, g: Tensor,
            index: EdgeIndex, want: tuple[bool, bool, bool, bool]
            ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Partials of sum(g * Z) with respect to (hg, wn, r, sh), those flagged in ``want``:
    [N, C, n1, pp], [E, C, n1], [E, C, n2], [E, n2^2]."""
    hg, wn, r, sh, g = hg.contiguous(), _rows(wn), _rows(r), _rows(sh), g.contiguous()
    n, c = hg.shape[:2]
    n2 = int(round(ysh.shape[0] ** 0.5))
    outputs = _sender_outputs(hg, wn, sh, n2, want)
    if n * c == 0 or not any(o is not None for o in outputs):
        return outputs
    function = _function("conv_senders", hg.dtype)
    _run(function, _node_ranges(index.send_ptr), _dims(hg, n2), hg.data_ptr(),
         _pointer(wn), _strides(wn), r.data_ptr(), _strides(r), sh.data_ptr(), sh.stride(0),
         ysh.data_ptr(), g.data_ptr(), index.receiver.data_ptr(), index.send_ptr.data_ptr(),
         index.send_perm.data_ptr(), *(_pointer(o) for o in outputs))
    return outputs


def _double_strides(wn: Tensor | None, r: Tensor, sh: Tensor, u1: Tensor | None, u2: Tensor,
                    u3: Tensor) -> ctypes.Array:
    return (_INT * 10)(*_strides(wn), *_strides(r), sh.stride(0), *_strides(u1), *_strides(u2),
                       u3.stride(0))


def double_senders(hg: Tensor, wn: Tensor | None, r: Tensor, sh: Tensor, ysh: Tensor,
                   g: Tensor, u: tuple[Tensor, Tensor | None, Tensor, Tensor],
                   index: EdgeIndex, want: tuple[bool, bool, bool, bool]
                   ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The backward of ``senders``' four partials in one pass: with ``u`` = (u0, u1, u2, u3)
    the incoming gradients of (dT/dhg, dT/dwn, dT/dr, dT/dsh) (u1 None exactly when wn is),
    the partials of S = sum_k <u_k, dT/d(argument k)> with respect to (hg, wn, r, sh), those
    flagged in ``want``; shapes as ``senders``."""
    hg, wn, r, sh, g = hg.contiguous(), _rows(wn), _rows(r), _rows(sh), g.contiguous()
    u0, u1, u2, u3 = u[0].contiguous(), _rows(u[1]), _rows(u[2]), _rows(u[3])
    n, c = hg.shape[:2]
    n2 = int(round(ysh.shape[0] ** 0.5))
    outputs = _sender_outputs(hg, wn, sh, n2, want)
    if n * c == 0 or not any(o is not None for o in outputs):
        return outputs
    function = _function("conv_double_senders", hg.dtype)
    _run(function, _node_ranges(index.send_ptr), _dims(hg, n2),
         _double_strides(wn, r, sh, u1, u2, u3), hg.data_ptr(), _pointer(wn), r.data_ptr(),
         sh.data_ptr(), ysh.data_ptr(), g.data_ptr(), u0.data_ptr(), _pointer(u1),
         u2.data_ptr(), u3.data_ptr(), index.receiver.data_ptr(), index.send_ptr.data_ptr(),
         index.send_perm.data_ptr(), *(_pointer(o) for o in outputs))
    return outputs


def double_receivers(hg: Tensor, wn: Tensor | None, r: Tensor, sh: Tensor, ysh: Tensor,
                     u: tuple[Tensor, Tensor | None, Tensor, Tensor], index: EdgeIndex
                     ) -> Tensor:
    """dS/dg [N, C, pp] for S as in ``double_senders``: per receiving node, the sum over its
    incoming edges of X' Yv + X Yv' (``_conv_kernel_body.h``)."""
    hg, wn, r, sh = hg.contiguous(), _rows(wn), _rows(r), _rows(sh)
    u0, u1, u2, u3 = u[0].contiguous(), _rows(u[1]), _rows(u[2]), _rows(u[3])
    n, c, _, pp = hg.shape
    n2 = int(round(ysh.shape[0] ** 0.5))
    z = torch.empty(n, c, pp, dtype=hg.dtype)
    if z.numel() == 0:
        return z
    function = _function("conv_double_receivers", hg.dtype)
    _run(function, _node_ranges(index.recv_ptr), _dims(hg, n2),
         _double_strides(wn, r, sh, u1, u2, u3), hg.data_ptr(), _pointer(wn), r.data_ptr(),
         sh.data_ptr(), ysh.data_ptr(), u0.data_ptr(), _pointer(u1), u2.data_ptr(),
         u3.data_ptr(), index.sender.data_ptr(), index.recv_ptr.data_ptr(),
         index.recv_perm.data_ptr(), z.data_ptr())
    return z


_MIN_ROWS_PER_THREAD = 2048  # (node, channel) rows of the powers kernels


def _even_ranges(count: int, channels: int) -> list[tuple[int, int]]:
    """Equal node ranges, one per thread, each with enough (node, channel) rows."""
    workers = max(1, min(torch.get_num_threads(), count * channels // _MIN_ROWS_PER_THREAD,
                         count))
    step = -(-count // workers)
    return [(start, min(count, start + step)) for start in range(0, count, step)]


def _powers_dims(a: Tensor, w: Tensor, y: Tensor, proj: Tensor, nu0: int) -> ctypes.Array:
    n, c, k1 = a.shape
    return (_INT * 8)(n, c, k1, w.shape[-1], w.shape[1], nu0, y.shape[1], proj.shape[0])


def powers_forward(a: Tensor, w: Tensor, y: Tensor, proj: Tensor, nu0: int) -> Tensor:
    """q [N, n_nu, C, K_out]: per node and channel, the projections of
    (sum_l w[nu, l] a_l)^nu on the grid, nu = nu0 .. nu0 + n_nu - 1 (``_conv_kernel.c``).
    ``a`` [N, C, K1], ``w`` [N, n_nu, C, L1+1], ``y`` [K1, pp], ``proj`` [K_out, pp]."""
    a, w = a.contiguous(), w.contiguous()
    q = torch.empty(a.shape[0], w.shape[1], a.shape[1], proj.shape[0], dtype=a.dtype)
    if q.numel() == 0:
        return q
    _run(_function("powers_forward", a.dtype), _even_ranges(a.shape[0], a.shape[1]),
         _powers_dims(a, w, y, proj, nu0), a.data_ptr(), w.data_ptr(), y.data_ptr(),
         proj.data_ptr(), q.data_ptr())
    return q


def powers_backward(a: Tensor, w: Tensor, y: Tensor, proj: Tensor, nu0: int, g: Tensor,
                    want: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of sum(g * powers_forward(a, w)) with respect to a and w (as flagged)."""
    a, w, g = a.contiguous(), w.contiguous(), g.contiguous()
    da = torch.empty_like(a) if want[0] else None
    dw = torch.empty_like(w) if want[1] else None
    if a.numel() == 0 or w.numel() == 0 or (da is None and dw is None):
        return (torch.zeros_like(a) if want[0] else None,
                torch.zeros_like(w) if want[1] else None)
    _run(_function("powers_backward", a.dtype), _even_ranges(a.shape[0], a.shape[1]),
         _powers_dims(a, w, y, proj, nu0), a.data_ptr(), w.data_ptr(), y.data_ptr(),
         proj.data_ptr(), g.data_ptr(), _pointer(da), _pointer(dw))
    return da, dw


def powers_double(a: Tensor, w: Tensor, y: Tensor, proj: Tensor, nu0: int, g: Tensor,
                  u: Tensor | None, vw: Tensor | None, want: tuple[bool, bool, bool]
                  ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of <u, da> + <vw, dw> ((da, dw) = ``powers_backward``) with respect to
    a, w and g, as flagged; u or vw None count as zero."""
    a, w, g = a.contiguous(), w.contiguous(), g.contiguous()
    u = None if u is None else u.contiguous()
    vw = None if vw is None else vw.contiguous()
    outputs = (torch.empty_like(a) if want[0] else None, torch.empty_like(w) if want[1] else None,
               torch.empty_like(g) if want[2] else None)
    if a.numel() == 0 or w.numel() == 0:
        return tuple(None if o is None else o.zero_() for o in outputs)
    _run(_function("powers_double", a.dtype), _even_ranges(a.shape[0], a.shape[1]),
         _powers_dims(a, w, y, proj, nu0), a.data_ptr(), w.data_ptr(), y.data_ptr(),
         proj.data_ptr(), g.data_ptr(), _pointer(u), _pointer(vw), *(_pointer(o) for o in outputs))
    return outputs
