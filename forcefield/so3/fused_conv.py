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
its derivatives are partials of T with one argument replaced by an incoming gradient:
the backward of Z is the four partials (one pass over sending nodes), and their backward
(the loss of force training) sums the substitutions of all arguments in one pass of two
kernels.  These are the ``forcefield::`` operators with registered autograd
(``forcefield.ops``), so the convolution compiles and exports like any torch operation.

The first layer (L1 = 0) uses the same kernels in coefficient space: the grid is replaced
by the (l2, m) coefficients (``ysh`` the identity) and ``hg`` is h repeated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from forcefield import ops
from forcefield.so3 import conv_kernel
from forcefield.so3.conv_kernel import EdgeIndex
from forcefield.so3.spherical_harmonics import spherical_harmonics
from forcefield.so3.tables import sphere_quadrature

__all__ = ["EdgeIndex", "conv_grid_tables", "convolution", "edge_index", "first_layer_tables"]

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


def convolution(hg: Tensor, wn: Tensor | None, r: Tensor, sh: Tensor, ysh: Tensor,
                index: EdgeIndex) -> Tensor:
    """Z [N, C, pp] on the fused kernels (``forcefield::conv_receivers``), differentiable
    twice: its backward is the sender partials (``conv_senders``), whose backward is the
    two double kernels (``conv_double_senders``, ``conv_double_receivers``)."""
    return conv_kernel.receivers(hg, wn, r, sh, ysh, index)


_cache: list = []


def edge_index(sender: Tensor, receiver: Tensor, num_nodes: int) -> EdgeIndex:
    """The CSR form of these edges, reused while the same edge tensors are passed again
    (the layers of one model call share it).  Identity, not value, is compared; the cache
    holds the tensors, so their memory cannot be reused by others meanwhile.  Inside
    ``torch.compile``, ``torch.export`` or ``forcefield.ops.tracing()`` it is built in the
    graph instead."""
    if ops.is_tracing():
        return EdgeIndex.build(sender, receiver, num_nodes)
    key = (sender._version, receiver._version, num_nodes)
    if _cache and _cache[0] is sender and _cache[1] is receiver and _cache[2] == key:
        return _cache[3]
    index = EdgeIndex.build(sender, receiver, num_nodes)
    _cache[:] = [sender, receiver, key, index]
    return index


def supports(x: Tensor) -> bool:
    """Whether the fused kernels take tensors like ``x``."""
    return conv_kernel.supports(x)
