"""The fused kernels of the Gaunt convolution and the many-body powers, as called by
``fused_conv`` and ``fused_powers``: thin wrappers of the ``forcefield::`` operators
(``forcefield.ops``) that take an ``EdgeIndex`` and return None for partials not asked for.

The operators split the work over ``torch.get_num_threads()`` threads by ranges of nodes;
every output entry is computed by one thread in a fixed order, so results do not depend on
the number of threads.  Where the operator library was not built, ``available()`` is False
and the callers take their torch route.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from forcefield import ops
from forcefield.so3 import grid_kernel

MAX_DEGREE = 7  # per operand of the convolution kernels (MAXL in conv_kernel_body.h)


def available() -> bool:
    """True when the compiled convolution kernels can be used."""
    return ops.available()


def supports(x: Tensor) -> bool:
    """Whether the kernels will take tensors like ``x`` (CPU float32/float64; not inside
    ``grid_kernel.disabled()``, which switches every fused kernel off)."""
    return (not grid_kernel._disabled and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and available())


@dataclass(frozen=True)
class EdgeIndex:
    """Edges in compressed-row form twice: grouped by receiver and grouped by sender.

    ``recv_perm[recv_ptr[i]:recv_ptr[i + 1]]`` are the edges into node i (in edge order),
    likewise ``send_*`` for the edges out of node i.  Built with traceable operations only
    (no data-dependent shapes), so it compiles and exports with the model.
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
        nodes = torch.arange(num_nodes + 1, dtype=torch.int64)

        def csr(index: Tensor) -> tuple[Tensor, Tensor]:
            perm = torch.argsort(index, stable=True)
            return torch.searchsorted(index[perm], nodes), perm

        recv_ptr, recv_perm = csr(receiver)
        send_ptr, send_perm = csr(sender)
        return EdgeIndex(sender, receiver, num_nodes, recv_ptr, recv_perm, send_ptr, send_perm)

    def tensors(self) -> tuple[Tensor, ...]:
        """The six index tensors in the operators' argument order."""
        return (self.sender, self.receiver, self.recv_ptr, self.recv_perm, self.send_ptr,
                self.send_perm)


def _given(outputs: tuple[Tensor, ...], want) -> tuple[Tensor | None, ...]:
    return tuple(o if w else None for o, w in zip(outputs, want, strict=True))


def receivers(hg: Tensor, wn: Tensor | None, r: Tensor, sh: Tensor, ysh: Tensor,
              index: EdgeIndex) -> Tensor:
    """Z [N, C, pp]: per receiving node, the sum over incoming edges of X * Yv on the grid
    (see ``conv_kernel.c``).  ``hg`` [N, C, n1, pp], ``ysh`` [n2^2, pp], ``wn`` [E, C, n1]
    (or None), ``r`` [E, C, >= n2], ``sh`` [E, >= n2^2]."""
    return torch.ops.forcefield.conv_receivers(hg, wn, r, sh, ysh, *index.tensors())


def senders(hg: Tensor, wn: Tensor | None, r: Tensor, sh: Tensor, ysh: Tensor, g: Tensor,
            index: EdgeIndex, want: tuple[bool, bool, bool, bool]
            ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Partials of sum(g * Z) with respect to (hg, wn, r, sh), those flagged in ``want``,
    shaped as the arguments (None for the others, and for wn when it is None)."""
    want = (want[0], want[1] and wn is not None, want[2], want[3])
    out = torch.ops.forcefield.conv_senders(hg, wn, r, sh, ysh, g, *index.tensors(), want)
    return _given(out, want)


def double_senders(hg: Tensor, wn: Tensor | None, r: Tensor, sh: Tensor, ysh: Tensor,
                   g: Tensor, u: tuple[Tensor, Tensor | None, Tensor, Tensor],
                   index: EdgeIndex, want: tuple[bool, bool, bool, bool]
                   ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The backward of ``senders``' four partials in one pass: with ``u`` = (u0, u1, u2, u3)
    the incoming gradients of (dT/dhg, dT/dwn, dT/dr, dT/dsh) (u1 None exactly when wn is),
    the partials of S = sum_k <u_k, dT/d(argument k)> with respect to (hg, wn, r, sh), those
    flagged in ``want``; shapes as ``senders``."""
    want = (want[0], want[1] and wn is not None, want[2], want[3])
    out = torch.ops.forcefield.conv_double_senders(hg, wn, r, sh, ysh, g, *u,
                                                   *index.tensors(), want)
    return _given(out, want)


def double_receivers(hg: Tensor, wn: Tensor | None, r: Tensor, sh: Tensor, ysh: Tensor,
                     u: tuple[Tensor, Tensor | None, Tensor, Tensor], index: EdgeIndex
                     ) -> Tensor:
    """dS/dg [N, C, pp] for S as in ``double_senders``: per receiving node, the sum over its
    incoming edges of X' Yv + X Yv' (``conv_kernel_body.h``)."""
    return torch.ops.forcefield.conv_double_receivers(hg, wn, r, sh, ysh, *u, *index.tensors())


def powers_forward(a: Tensor, w: Tensor, y: Tensor, proj: Tensor, nu0: int) -> Tensor:
    """q [N, n_nu, C, K_out]: per node and channel, the projections of
    (sum_l w[nu, l] a_l)^nu on the grid, nu = nu0 .. nu0 + n_nu - 1 (``conv_kernel.c``).
    ``a`` [N, C, K1], ``w`` [N, n_nu, C, L1+1], ``y`` [K1, pp], ``proj`` [K_out, pp]."""
    return torch.ops.forcefield.powers_forward(a, w, y, proj, nu0)


def powers_backward(a: Tensor, w: Tensor, y: Tensor, proj: Tensor, nu0: int, g: Tensor,
                    want: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of sum(g * powers_forward(a, w)) with respect to a and w (as flagged)."""
    return _given(torch.ops.forcefield.powers_backward(a, w, y, proj, nu0, g, want), want)


def powers_double(a: Tensor, w: Tensor, y: Tensor, proj: Tensor, nu0: int, g: Tensor,
                  u: Tensor | None, vw: Tensor | None, want: tuple[bool, bool, bool]
                  ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of <u, da> + <vw, dw> ((da, dw) = ``powers_backward``) with respect to
    a, w and g, as flagged; u or vw None count as zero."""
    out = torch.ops.forcefield.powers_double(a, w, y, proj, nu0, g, u, vw, want)
    return _given(out, want)
