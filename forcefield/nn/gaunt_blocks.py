"""Gaunt convolution and Gaunt many-body product, with their output normalisation.

Feature layout: [N, channels, (lmax+1)**2] (e3nn order of the coefficients, real basis).

Normalisation (documented in the README): every Gaunt output degree l is multiplied by a
constant c_l chosen so that, when the inputs have independent unit-variance coefficients,
each output coefficient of degree l has unit variance. For a product of two independent
inputs this is exact: c_l^-2 = mean over m of sum_{k1,k2} G[k1, k2, lm]^2. For the powers
x^nu of one input it is estimated once, in float64, from 4096 fixed-seed Gaussian samples
(a deterministic buffer). Edge spherical harmonics use "component" normalisation
(sqrt(4 pi) * Y, so Y_00 = 1 and each degree has unit mean square per component).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.utils import scatter

from forcefield import so3

from .linear import DegreeLinear
from .radial import RadialMLP

__all__ = ["GauntConvolution", "GauntManyBodyProduct", "degree_expand"]


def degree_expand(lmax: int) -> torch.Tensor:
    return so3.degree_index(lmax)


def _per_degree_mean(sq: torch.Tensor, lmax: int) -> torch.Tensor:
    """Average a [..., (lmax+1)**2] tensor over m within each degree -> [..., lmax+1]."""
    return torch.stack([sq[..., l * l : (l + 1) ** 2].mean(-1) for l in range(lmax + 1)], -1)


def _inv_sqrt_safe(var: torch.Tensor) -> torch.Tensor:
    return torch.where(var > 1e-12, var.clamp_min(1e-12).rsqrt(), torch.ones_like(var))


@torch.no_grad()
def product_normalisation(tp: nn.Module, lmax1: int, lmax2: int, lmax_out: int) -> torch.Tensor:
    """Exact per-coefficient scale for Gaunt(x1, x2) with independent unit-variance inputs."""
    k1, k2 = (lmax1 + 1) ** 2, (lmax2 + 1) ** 2
    tp = tp.to(torch.float64)
    e1 = torch.eye(k1, dtype=torch.float64)[:, None, :]
    e2 = torch.eye(k2, dtype=torch.float64)[None, :, :]
    out = tp(e1.expand(k1, k2, k1), e2.expand(k1, k2, k2))  # [k1, k2, K_out]
    var = _per_degree_mean((out**2).sum((0, 1)), lmax_out)
    return _inv_sqrt_safe(var)[so3.degree_index(lmax_out)]


@torch.no_grad()
def power_normalisation(
    powers: nn.Module, lmax_in: int, correlation: int, lmax_out: int, samples: int = 4096
) -> torch.Tensor:
    """Per (order, coefficient) scale for x^nu, x with i.i.d. unit-variance coefficients."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(samples, (lmax_in + 1) ** 2, generator=gen, dtype=torch.float64)
    out = powers.to(torch.float64)(x)  # [S, correlation, K_out]
    var = _per_degree_mean((out**2).mean(0), lmax_out)  # [correlation, lmax_out+1]
    return _inv_sqrt_safe(var)[:, so3.degree_index(lmax_out)]


class GauntConvolution(nn.Module):
    """Equivariant convolution: A_i = 1/avg_nn sum_j c * Gaunt(w(r_ij) h_j, R(r_ij) Y(r_ij)).

    ``w`` (node side) and ``R`` (filter side) are per (channel, degree) radial weights from
    one bias-free radial MLP. Then a per-degree linear channel mix. Input features of degree
    <= lmax_in (0 for the first layer: then the product is just h_j * R * Y), output <= lmax_out.
    """

    def __init__(
        self,
        channels: int,
        lmax_in: int,
        lmax_sh: int,
        lmax_out: int,
        num_radial: int,
        radial_mlp: list[int],
        avg_num_neighbors: float,
        method: str = "auto",
    ):
        super().__init__()
        self.channels = channels
        self.lmax_in, self.lmax_sh, self.lmax_out = lmax_in, lmax_sh, lmax_out
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.linear_up = DegreeLinear(channels, channels, lmax_in, lmax_in)
        self.num_node_weights = 0 if lmax_in == 0 else channels * (lmax_in + 1)
        self.num_filter_weights = channels * (lmax_sh + 1)
        self.radial = RadialMLP(
            [num_radial, *radial_mlp, self.num_node_weights + self.num_filter_weights]
        )
        self.register_buffer("deg_in", so3.degree_index(lmax_in), persistent=False)
        self.register_buffer("deg_sh", so3.degree_index(lmax_sh), persistent=False)
        if lmax_in > 0:
            self.tp = so3.GauntTensorProduct(lmax_in, lmax_sh, lmax_out, method=method)
            norm = product_normalisation(self.tp, lmax_in, lmax_sh, lmax_out)
            self.register_buffer("norm", norm.to(torch.get_default_dtype()))
        else:
            self.tp = None
        self.linear = DegreeLinear(channels, channels, lmax_out, lmax_out)

    def forward(
        self,
        h: torch.Tensor,  # [N, C, (lmax_in+1)^2]
        radial: torch.Tensor,  # [E, num_radial]
        sh: torch.Tensor,  # [E, (lmax_sh+1)^2] component-normalised
        sender: torch.Tensor,
        receiver: torch.Tensor,
    ) -> torch.Tensor:
        num_nodes = h.shape[0]
        num_edges = sh.shape[0]
        c = self.channels
        h = self.linear_up(h)
        w = self.radial(radial)
        r = w[:, self.num_node_weights :].reshape(num_edges, c, self.lmax_sh + 1)
        y = r[:, :, self.deg_sh] * sh[:, None, :]  # [E, C, K_sh]
        hj = h[sender]
        k_out = (self.lmax_out + 1) ** 2
        if self.tp is None:
            m = hj * y[:, :, :k_out]
            if m.shape[-1] < k_out:
                m = torch.nn.functional.pad(m, (0, k_out - m.shape[-1]))
        else:
            wn = w[:, : self.num_node_weights].reshape(num_edges, c, self.lmax_in + 1)
            x = hj * wn[:, :, self.deg_in]
            m = self.tp(x, y) * self.norm
        a = scatter(m, receiver, dim=0, dim_size=num_nodes, reduce="sum")
        a = a / self.avg_num_neighbors
        return self.linear(a)


class GauntManyBodyProduct(nn.Module):
    """B_i = sum_nu b[z_i, nu, c, l_out] * c_nu,l * ( (a[z_i, nu, c, l_in] * A_i)^nu )_l_out.

    Gaunt powers (``forcefield.so3.GauntPowers``) up to ``correlation``; learnable weights per
    (element, channel, order, input degree) before the power and per (element, channel, order,
    output degree) after it (a separable form of per (input degree, output degree) weights).
    """

    def __init__(
        self,
        num_elements: int,
        channels: int,
        lmax_in: int,
        lmax_out: int,
        correlation: int,
        method: str = "auto",
    ):
        super().__init__()
        self.lmax_in, self.lmax_out, self.correlation = lmax_in, lmax_out, correlation
        self.powers = nn.ModuleList(
            [
                so3.GauntPowers(lmax_in, nu, lmax_out, method=method)
                for nu in range(2, correlation + 1)
            ]
        )
        norms = [torch.ones((lmax_out + 1) ** 2, dtype=torch.float64)]
        for nu, mod in zip(range(2, correlation + 1), self.powers, strict=False):
            norms.append(power_normalisation(mod, lmax_in, nu, lmax_out)[nu - 1])
        self.register_buffer("norm", torch.stack(norms).to(torch.get_default_dtype()))
        self.weight_in = nn.Parameter(torch.ones(num_elements, correlation, channels, lmax_in + 1))
        self.weight_out = nn.Parameter(
            torch.randn(num_elements, correlation, channels, lmax_out + 1) / math.sqrt(correlation)
        )
        self.register_buffer("deg_in", so3.degree_index(lmax_in), persistent=False)
        self.register_buffer("deg_out", so3.degree_index(lmax_out), persistent=False)

    def forward(self, a: torch.Tensor, species_idx: torch.Tensor) -> torch.Tensor:
        k_out = (self.lmax_out + 1) ** 2
        w_in = self.weight_in[species_idx]  # [N, nu, C, L_in+1]
        w_out = self.weight_out[species_idx][..., self.deg_out]  # [N, nu, C, K_out]
        out = a[:, :, :k_out] * w_out[:, 0] * self.norm[0]
        for nu in range(2, self.correlation + 1):
            x = a * w_in[:, nu - 1][..., self.deg_in]
            p = self.powers[nu - 2](x)[..., nu - 1, :]
            out = out + p * (self.norm[nu - 1] * w_out[:, nu - 1])
        return out
