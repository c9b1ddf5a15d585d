"""The Gaunt convolution of GauntMACE on fused CPU kernels, differentiable to any order.

For a layer with node features of degree <= L1 and edge harmonics of degree <= L2, the
message of edge s -> i is Gaunt(w h_s, R Y) (per channel, with per-degree radial weights
w and R), and node i receives their sum.  On the exact quadrature grid of the product this
is ``Z[i, c, p] = sum_e X[e, c, p] Yv[e, c, p]`` with

* ``X = sum_l1 wn[l1] hg[s, l1]`` where ``hg`` holds the grid values of each degree of h,
  computed once per node (not per edge);
* ``Yv = sum_l2 r[l2] Yg[e, l2]``, the grid values of each degree of the edge harmonics.

``Z`` is then projected onto the output harmonics once per node by the caller.  The
kernels (``conv_kernel``) never write a per-edge grid tensor.  Because Z is linear in each
of (hg, wn, r, sh), the scalar ``T = sum g * Z`` is multilinear in (hg, wn, r, sh, g) and
every derivative of every order is a partial of T with one argument replaced by an
incoming gradient: ``ConvPartials`` computes such partials, and its backward is made of
``ConvPartials`` again (double backward for force training).  A plain backward of the
partials (the loss of force training, not differentiated further) sums the substitutions
of all arguments in one pass of two kernels (``conv_kernel.double_senders`` and
``double_receivers``) instead of one pass per argument.

The first layer (L1 = 0) uses the same kernels in coefficient space: the grid is replaced
by the (l2, m) coefficients (``ysh`` the identity) and ``hg`` is h repeated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from forcefield.so3 import conv_kernel
from forcefield.so3.conv_kernel import EdgeIndex
from forcefield.so3.spherical_harmonics import spherical_harmonics
from forcefield.so3.tables import sphere_quadrature

__all__ = ["ConvPartials", "EdgeIndex", "conv_grid_tables", "edge_index", "first_layer_tables"]

_PAD = 8  # grid points are padded to a multiple of this (one float32 AVX vector)


def _padded(size: int) -> int:
    return -(-size // _PAD) * _PAD


def conv_grid_tables(lmax_in: int, lmax_sh: int, lmax_out: int) -> dict[str, Tensor]:
    """Float64 tables on the quadrature exact for degree lmax_in + lmax_sh + lmax_out.

    ``node_grid`` [K1, (L1+1) pp]: h [N, C, K1] @ node_grid gives hg [N, C, L1+1, pp];
    ``ysh`` [K2, pp]: Y_l2m at the points; ``projection`` [pp, K_out]: Y_lm times the
    quadrature weight.  Padded points have zero rows and columns.
    """
    points, weights = sphere_quadrature(lmax_in + lmax_sh + lmax_out)
    pts = torch.as_tensor(points, dtype=torch.float64)
    y = spherical_harmonics(max(lmax_in, lmax_sh, lmax_out), pts)  # [P, K]
    n_points = pts.shape[0]
    pp = _padded(n_points)
    k1, k2, ko = (lmax_in + 1) ** 2, (lmax_sh + 1) ** 2, (lmax_out + 1) ** 2
    node_grid = torch.zeros(k1, lmax_in + 1, pp, dtype=torch.float64)
    for l1 in range(lmax_in + 1):
        block = slice(l1 * l1, (l1 + 1) ** 2)
        node_grid[block, l1, :n_points] = y[:, block].T
    ysh = torch.zeros(k2, pp, dtype=torch.float64)
    ysh[:, :n_points] = y[:, :k2].T
    projection = torch.zeros(pp, ko, dtype=torch.float64)
    projection[:n_points] = y[:, :ko] * torch.as_tensor(weights)[:, None]
    return {"node_grid": node_grid.reshape(k1, -1), "ysh": ysh, "projection": projection}


def first_layer_tables(lmax: int) -> dict[str, Tensor]:
    """``ysh`` for the first layer: the identity on the (lmax+1)^2 coefficients, padded."""
    k = (lmax + 1) ** 2
    ysh = torch.zeros(k, _padded(k), dtype=torch.float64)
    ysh[:, :k] = torch.eye(k, dtype=torch.float64)
    return {"ysh": ysh}


class ConvPartials(torch.autograd.Function):
    """Partials of ``T = sum g * Z(hg, wn, r, sh)`` for the argument numbers in ``which``
    (0 hg, 1 wn, 2 r, 3 sh, 4 g; the partial for g is Z itself).

    ``ConvPartials.apply(which, ysh, index, hg, wn, r, sh, g)`` -> tuple in ``which`` order;
    ``wn`` may be None (no node weights), ``g`` may be None when only Z is asked for.
    """

    @staticmethod
    def forward(ctx, which: tuple[int, ...], ysh: Tensor, index: EdgeIndex, hg: Tensor,
                wn: Tensor | None, r: Tensor, sh: Tensor, g: Tensor | None
                ) -> tuple[Tensor, ...]:
        ctx.which, ctx.ysh, ctx.index = which, ysh, index
        ctx.save_for_backward(hg, wn, r, sh, g)
        results: dict[int, Tensor | None] = {}
        if 4 in which:
            results[4] = conv_kernel.receivers(hg, wn, r, sh, ysh, index)
        want = tuple(j in which for j in range(4))
        if any(want):
            partials = conv_kernel.senders(hg, wn, r, sh, ysh, g, index, want)
            results.update(_padded_partials(partials, (hg, wn, r, sh), want))
        return tuple(results[j] for j in which)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        args = list(ctx.saved_tensors)
        needs = ctx.needs_input_grad[3:]
        if 4 not in ctx.which and not torch.is_grad_enabled():
            # the backward of the partials (training on forces), not differentiated further:
            # every substituted argument in one pass of two fused kernels
            return (None, None, None, *_partials_backward(ctx, args, needs, grads))
        total: list[Tensor | None] = [None] * 5
        for k, grad in zip(ctx.which, grads, strict=True):
            if grad is None:
                continue
            targets = tuple(j for j in range(5)
                            if needs[j] and j != k and args[j] is not None)
            if not targets:
                continue
            substituted = list(args)
            substituted[k] = grad
            outputs = ConvPartials.apply(targets, ctx.ysh, ctx.index, *substituted)
            for j, out in zip(targets, outputs, strict=True):
                total[j] = out if total[j] is None else total[j] + out
        return (None, None, None, *total)


def _padded_partials(partials, arguments, want) -> dict[int, Tensor]:
    """The kernel's partials by argument number, with zeros for the degrees the kernel does
    not read (first layer: sh and r beyond the output degree)."""
    results = {}
    for j, argument in enumerate(arguments):
        if want[j] and partials[j] is not None:
            extra = argument.shape[-1] - partials[j].shape[-1]
            results[j] = torch.nn.functional.pad(partials[j], (0, extra)) if extra \
                else partials[j]
    return results


def _partials_backward(ctx, args: list, needs: tuple[bool, ...],
                       grads: tuple[Tensor | None, ...]) -> list[Tensor | None]:
    """Gradients of S = sum_k <u_k, dT/d(argument k)> (u_k the incoming gradient of the
    partial k, zero where it was not asked for or got none) with respect to hg, wn, r, sh
    and g, from ``conv_kernel.double_senders`` and ``double_receivers``."""
    hg, wn, r, sh, g = args
    u: list[Tensor | None] = [None] * 4
    for k, grad in zip(ctx.which, grads, strict=True):
        u[k] = grad
    u0, u1, u2, u3 = (torch.zeros_like(a) if a is not None and uk is None else uk
                      for a, uk in zip((hg, wn, r, sh), u, strict=True))
    want = tuple(needs[j] and args[j] is not None for j in range(4))
    total: list[Tensor | None] = [None] * 5
    if any(want):
        partials = conv_kernel.double_senders(hg, wn, r, sh, ctx.ysh, g, (u0, u1, u2, u3),
                                              ctx.index, want)
        for j, value in _padded_partials(partials, (hg, wn, r, sh), want).items():
            total[j] = value
    if needs[4]:
        total[4] = conv_kernel.double_receivers(hg, wn, r, sh, ctx.ysh, (u0, u1, u2, u3),
                                                ctx.index)
    return total


_cache: list = []


def edge_index(sender: Tensor, receiver: Tensor, num_nodes: int) -> EdgeIndex:
    """The CSR form of these edges, reused while the same edge tensors are passed again
    (the layers of one model call share it).  Identity, not value, is compared; the cache
    holds the tensors, so their memory cannot be reused by others meanwhile."""
    key = (sender._version, receiver._version, num_nodes)
    if _cache and _cache[0] is sender and _cache[1] is receiver and _cache[2] == key:
        return _cache[3]
    index = EdgeIndex.build(sender, receiver, num_nodes)
    _cache[:] = [sender, receiver, key, index]
    return index


def supports(x: Tensor) -> bool:
    """Whether the fused kernels take tensors like ``x``."""
    return conv_kernel.supports(x)
