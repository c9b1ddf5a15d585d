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
from forcefield.so3 import conv_kernel, fused_conv, fused_powers

from .constants import ConstantTables
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
    On CPU the fused kernels of ``forcefield.so3.fused_conv`` compute it (``use_kernel``);
    elsewhere the torch route below, with the same numbers.
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
        self.method = method
        self.tp = None
        self.fused = False
        l_first = min(lmax_sh, lmax_out)
        self._tables = ConstantTables(expand_first=_expansion(l_first),
                                      **fused_conv.first_layer_tables(l_first))
        if lmax_in > 0:
            reference = so3.GauntTensorProduct(lmax_in, lmax_sh, lmax_out, method="dense")
            norm = product_normalisation(reference, lmax_in, lmax_sh, lmax_out)
            if method in ("auto", "fused"):
                self.fused = True
                kernel = fused_conv.conv_grid_tables(lmax_in, lmax_sh, lmax_out)
                kernel["projection"] = kernel["projection"] * norm
                self._tables = ConstantTables(
                    norm=norm, **_fused_grid_tables(lmax_in, lmax_sh, lmax_out, norm),
                    **{f"kernel_{k}": v for k, v in kernel.items()},
                )
            else:
                self.tp = so3.GauntTensorProduct(lmax_in, lmax_sh, lmax_out, method=method)
                self._tables = ConstantTables(norm=norm)
        self.linear = DegreeLinear(channels, channels, lmax_out, lmax_out)

    def forward(
        self,
        h: torch.Tensor,  # [N, C, (lmax_in+1)^2]
        radial: torch.Tensor,  # [E, num_radial], or [U, num_radial] with edge_slot
        sh: torch.Tensor,  # [E, (lmax_sh+1)^2] component-normalised
        sender: torch.Tensor,
        receiver: torch.Tensor,
        edge_slot: torch.Tensor | None = None,  # [E]: the row of radial of each edge
    ) -> torch.Tensor:
        """``edge_slot`` lets edges share a row of ``radial`` (the two directions of a
        neighbour pair, ``forcefield.nn.edge_pairs``): the radial MLP then runs once per row."""
        num_nodes = h.shape[0]
        num_edges = sh.shape[0]
        c = self.channels
        h = self.linear_up(h)
        w = self.radial(radial)
        if edge_slot is not None:
            w = w.index_select(0, edge_slot)
        if self.use_kernel(h):
            return self._kernel(h, w, sh, sender, receiver)
        r = w[:, self.num_node_weights :].reshape(num_edges, c, self.lmax_sh + 1)
        hj = h[sender]
        k_out = (self.lmax_out + 1) ** 2
        if self.fused:
            return self._fused(hj, w, r, sh, receiver, num_nodes)
        if self.lmax_in == 0:
            # h_j is a scalar per channel: Gaunt(h_j, R Y) = h_j R Y / sqrt(4 pi); with the
            # normalisation this is just h_j * R * Y, kept only up to the degree we need.
            l_first = min(self.lmax_sh, self.lmax_out)
            k_first = (l_first + 1) ** 2
            expand = self._tables.get(hj)["expand_first"]
            m = hj * ((r[:, :, : l_first + 1] @ expand) * sh[:, None, :k_first])
            if k_first < k_out:
                m = torch.nn.functional.pad(m, (0, k_out - k_first))
            a = scatter(m, receiver, dim=0, dim_size=num_nodes, reduce="sum")
            return self.linear(a / self.avg_num_neighbors)
        # reference path: the so3 Gaunt tensor product with the requested method
        wn = w[:, : self.num_node_weights].reshape(num_edges, c, self.lmax_in + 1)
        x = hj * wn[:, :, self.deg_in]
        y = r[:, :, self.deg_sh] * sh[:, None, :]  # [E, C, K_sh]
        m = self.tp(x, y) * self._tables.get(x)["norm"]
        a = scatter(m, receiver, dim=0, dim_size=num_nodes, reduce="sum")
        a = a / self.avg_num_neighbors
        return self.linear(a)

    def use_kernel(self, h: torch.Tensor) -> bool:
        """Whether this call takes the fused CPU kernels (``forcefield.so3.fused_conv``):
        method "auto"/"fused" (every method in the first layer), CPU float32/float64,
        degrees <= 7 and the kernels built; else the torch route below."""
        return ((self.fused or self.lmax_in == 0) and fused_conv.supports(h)
                and max(self.lmax_in, self.lmax_sh) <= conv_kernel.MAX_DEGREE)

    def _kernel(self, h: torch.Tensor, w: torch.Tensor, sh: torch.Tensor,
                sender: torch.Tensor, receiver: torch.Tensor) -> torch.Tensor:
        """The convolution on the fused kernels: per receiving node, the grid products of
        its incoming edges are accumulated in place and projected once (no per-edge grid or
        message tensor); see ``forcefield.so3.fused_conv``."""
        num_nodes, num_edges, c = h.shape[0], w.shape[0], self.channels
        # views into w (split: its backward is one concatenation, not zero-filled slices)
        wn, r = w.split([self.num_node_weights, self.num_filter_weights], dim=1)
        r = r.view(num_edges, c, self.lmax_sh + 1)
        index = fused_conv.edge_index(sender, receiver, num_nodes)
        t = self._tables.get(h)
        if self.lmax_in == 0:
            ysh = t["ysh"]
            hg = h[:, :, :1, None].expand(num_nodes, c, 1, ysh.shape[1])
            z = fused_conv.convolution(hg, None, r, sh, ysh, index)
            a = z[..., : ysh.shape[0]]
            k_out = (self.lmax_out + 1) ** 2
            if a.shape[-1] < k_out:
                a = torch.nn.functional.pad(a, (0, k_out - a.shape[-1]))
            return self.linear(a / self.avg_num_neighbors)
        ysh = t["kernel_ysh"]
        wn = wn.view(num_edges, c, self.lmax_in + 1)
        hg = (h @ t["kernel_node_grid"]).reshape(num_nodes, c, self.lmax_in + 1, ysh.shape[1])
        z = fused_conv.convolution(hg, wn, r, sh, ysh, index)
        return self.linear((z @ t["kernel_projection"]) / self.avg_num_neighbors)

    def _fused(self, hj, w, r, sh, receiver, num_nodes):
        """The same Gaunt product on an exact sphere quadrature, exploiting its structure.

        x = w * h_j is evaluated on the P grid points ([E, C, K1] @ [K1, P]); the filter
        R * Y needs only the channel-independent per-degree grid values of Y
        (Yg[e, l2, p] = sum_m2 Y[e, l2 m2] Y_l2m2(p)) and one [C, L2+1] @ [L2+1, P] per edge;
        the pointwise product is summed over neighbours on the grid and projected to
        degree <= lmax_out once per node (projection, quadrature weights and the output
        normalisation are one [P, K_out] matrix).
        """
        num_edges = hj.shape[0]
        c = self.channels
        wn = w[:, : self.num_node_weights].reshape(num_edges, c, self.lmax_in + 1)
        t = self._tables.get(hj)
        x = hj * (wn @ t["expand_in"])  # [E, C, K1]
        xg = x @ t["grid_in"]  # [E, C, P]
        yg_deg = t["collapse_sh"] @ (sh.unsqueeze(-1) * t["grid_sh"])  # [E, L2+1, P]
        yg = torch.bmm(r, yg_deg)  # [E, C, P]
        zg = scatter(xg * yg, receiver, dim=0, dim_size=num_nodes, reduce="sum")
        a = (zg @ t["projection"]) / self.avg_num_neighbors
        return self.linear(a)


def _expansion(lmax: int) -> torch.Tensor:
    """0/1 matrix [lmax+1, (lmax+1)^2] copying a per-degree value to each of its 2l+1 slots."""
    deg = so3.degree_index(lmax)
    return (torch.arange(lmax + 1)[:, None] == deg[None, :]).to(torch.float64)


def _fused_grid_tables(lmax1: int, lmax2: int, lmax_out: int, norm: torch.Tensor):
    points, weights = so3.sphere_quadrature(lmax1 + lmax2 + lmax_out)
    pts = torch.as_tensor(points, dtype=torch.float64)
    wts = torch.as_tensor(weights, dtype=torch.float64)
    y_all = so3.spherical_harmonics(max(lmax1, lmax2, lmax_out), pts)  # [P, K]
    k1, k2, ko = (lmax1 + 1) ** 2, (lmax2 + 1) ** 2, (lmax_out + 1) ** 2
    return {
        "expand_in": _expansion(lmax1),
        "grid_in": y_all[:, :k1].T.contiguous(),
        "grid_sh": y_all[:, :k2].T.contiguous(),
        "collapse_sh": _expansion(lmax2),
        "projection": (y_all[:, :ko] * wts[:, None] * norm[None, :]).contiguous(),
    }


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
        # method auto/fused on CPU: all orders from one grid on the C kernel (fused_powers);
        # elsewhere (GPU, no compiler) the GauntPowers modules
        self.fused = method in ("auto", "fused") and correlation > 1
        grid = fused_powers.powers_tables(lmax_in, correlation, lmax_out) if self.fused else {}
        self._tables = ConstantTables(norm=torch.stack(norms), **grid)
        self.weight_in = nn.Parameter(torch.ones(num_elements, correlation, channels, lmax_in + 1))
        self.weight_out = nn.Parameter(
            torch.randn(num_elements, correlation, channels, lmax_out + 1) / math.sqrt(correlation)
        )
        self.register_buffer("deg_in", so3.degree_index(lmax_in), persistent=False)
        self.register_buffer("deg_out", so3.degree_index(lmax_out), persistent=False)

    def use_kernel(self, a: torch.Tensor) -> bool:
        """Whether this call takes the fused CPU kernel (method auto/fused, CPU, built)."""
        return self.fused and fused_conv.supports(a)

    def forward(self, a: torch.Tensor, species_idx: torch.Tensor) -> torch.Tensor:
        k_out = (self.lmax_out + 1) ** 2
        w_in = self.weight_in[species_idx]  # [N, nu, C, L_in+1]
        w_out = self.weight_out[species_idx][..., self.deg_out]  # [N, nu, C, K_out]
        t = self._tables.get(a)
        norm = t["norm"]
        out = a[:, :, :k_out] * w_out[:, 0] * norm[0]
        if self.use_kernel(a):
            # q [N, nu, C, K_out]: the projected powers x_nu^nu, nu = 2 .. correlation
            q = fused_powers.powers(a, w_in[:, 1:], t, 2)
            return out + (q * (norm[1:, None, :] * w_out[:, 1:])).sum(1)
        for nu in range(2, self.correlation + 1):
            x = a * w_in[:, nu - 1][..., self.deg_in]
            p = self.powers[nu - 2](x)[..., nu - 1, :]
            out = out + p * (norm[nu - 1] * w_out[:, nu - 1])
        return out
