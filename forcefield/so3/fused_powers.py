"""Gaunt powers of the many-body product on the fused CPU kernel, with double backward.

``GauntManyBodyProduct`` needs, per node and channel, the degree-<=L_out projections of
``x_nu^nu`` with ``x_nu = sum_l w[nu, l] a_l`` (per-degree weights of the input a), for
nu = 2 .. correlation.  On one sphere grid exact for degree correlation * L + L_out (the
highest power; lower powers are exact on it too) this is

    q[nu, k] = sum_p proj[k, p] (sum_l w[nu, l] A[l, p])^nu,   A[l, p] = sum_m a[l m] Y_lm(p)

The kernel computes it per (node, channel) in registers (``conv_kernel.powers_forward``),
and its backward and double backward (force training) likewise; ``powers_torch`` is the
same formula in torch, a test oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from forcefield.so3 import conv_kernel
from forcefield.so3.fused_conv import _padded
from forcefield.so3.spherical_harmonics import spherical_harmonics
from forcefield.so3.tables import sphere_quadrature

__all__ = ["powers", "powers_tables", "powers_torch"]


def powers_tables(lmax_in: int, correlation: int, lmax_out: int) -> dict[str, Tensor]:
    """Float64 ``y`` [K1, pp] (Y at the points), ``proj`` [K_out, pp] (Y times quadrature
    weights) and ``node_grid`` [K1, (L1+1) pp] (per-degree grid values of a, for torch)."""
    points, weights = sphere_quadrature(correlation * lmax_in + lmax_out)
    pts = torch.as_tensor(points, dtype=torch.float64)
    values = spherical_harmonics(max(lmax_in, lmax_out), pts)  # [P, K]
    n_points, pp = pts.shape[0], _padded(pts.shape[0])
    k1, ko = (lmax_in + 1) ** 2, (lmax_out + 1) ** 2
    y = torch.zeros(k1, pp, dtype=torch.float64)
    y[:, :n_points] = values[:, :k1].T
    proj = torch.zeros(ko, pp, dtype=torch.float64)
    proj[:, :n_points] = (values[:, :ko] * torch.as_tensor(weights)[:, None]).T
    node_grid = torch.zeros(k1, lmax_in + 1, pp, dtype=torch.float64)
    for l in range(lmax_in + 1):
        node_grid[l * l : (l + 1) ** 2, l] = y[l * l : (l + 1) ** 2]
    return {"y": y, "proj": proj, "node_grid": node_grid.reshape(k1, -1)}


def powers_torch(a: Tensor, w: Tensor, tables: dict[str, Tensor], nu0: int) -> Tensor:
    """The same q [N, n_nu, C, K_out] by torch operations (differentiable to any order)."""
    n, c, _ = a.shape
    n1, pp = w.shape[-1], tables["y"].shape[1]
    grid = (a @ tables["node_grid"]).view(n, c, n1, pp).unsqueeze(1)  # [N, 1, C, n1, pp]
    x = w[..., 0, None] * grid[..., 0, :]  # [N, n_nu, C, pp]
    for l in range(1, n1):
        x = x + w[..., l, None] * grid[..., l, :]
    powers = []
    for j in range(w.shape[1]):
        value = x[:, j]
        for _ in range(nu0 + j - 1):
            value = value * x[:, j]
        powers.append(value)
    return torch.stack(powers, 1) @ tables["proj"].T


def powers(a: Tensor, w: Tensor, tables: dict[str, Tensor], nu0: int) -> Tensor:
    """q = the projected powers of a weighted by w, on the kernel (``forcefield::
    powers_forward``); differentiable twice (``powers_backward``, then ``powers_double``)."""
    return conv_kernel.powers_forward(a, w, tables["y"], tables["proj"], nu0)
