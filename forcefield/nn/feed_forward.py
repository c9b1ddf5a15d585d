"""EquiformerV2's grid-MLP feed-forward network (``use_grid_mlp``, separable scalars)."""

from __future__ import annotations

import torch
from torch import nn

from .linear import DegreeLinear
from .s2_activation import GRID_NORMALIZATIONS, SphereGrid, component_factors

__all__ = ["GridFeedForward"]


class GridFeedForward(nn.Module):
    """Per-degree linear C -> hidden, a 3-layer channel MLP at every sphere grid point,
    degree 0 replaced by a SiLU MLP of the input scalars, per-degree linear -> C_out.

    Args:
        channels, hidden, channels_out: widths.  lmax: degrees.  grid_degree: quadrature.
        normalization: grid values of the coefficients, ``"integral"`` (orthonormal
            harmonics; variance ~(lmax+1)^2 / 4 pi) or ``"component"`` (unit variance, as
            EquiformerV2's e3nn grids), see :data:`~.s2_activation.GRID_NORMALIZATIONS`.
        quadrature: the sphere grid, see :data:`~.s2_activation.QUADRATURES`.

    ``forward(x [N, C, K]) -> [N, C_out, K]``.
    """

    def __init__(self, channels: int, hidden: int, channels_out: int, lmax: int,
                 grid_degree: int, normalization: str = "integral",
                 quadrature: str = "gauss_legendre"):
        super().__init__()
        if normalization not in GRID_NORMALIZATIONS:
            raise ValueError(f"model.grid_normalization={normalization!r} is not supported; "
                             f"use one of {', '.join(GRID_NORMALIZATIONS)}")
        self.channels, self.hidden, self.channels_out, self.lmax = (channels, hidden,
                                                                    channels_out, lmax)
        self.normalization = normalization
        self.linear_in = DegreeLinear(channels, hidden, lmax, lmax)
        self.bias_in = nn.Parameter(torch.zeros(hidden))
        scale = component_factors(lmax) if normalization == "component" else None
        self.grid = SphereGrid(lmax, grid_degree, degree_scale=scale, quadrature=quadrature)
        self.grid_mlp = nn.Sequential(
            nn.Linear(hidden, hidden, bias=False), nn.SiLU(),
            nn.Linear(hidden, hidden, bias=False), nn.SiLU(),
            nn.Linear(hidden, hidden, bias=False))
        self.scalar_mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU())
        self.linear_out = DegreeLinear(hidden, channels_out, lmax, lmax)
        self.bias_out = nn.Parameter(torch.zeros(channels_out))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden={self.hidden}, "
                f"channels_out={self.channels_out}, lmax={self.lmax}, "
                f"normalization={self.normalization}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_in(x)
        h = torch.cat([(h[:, :, 0] + self.bias_in).unsqueeze(-1), h[:, :, 1:]], dim=-1)
        g = self.grid.to_grid(h).transpose(1, 2)  # [N, P, H]
        g = self.grid_mlp(g).transpose(1, 2)
        h = self.grid.from_grid(g)
        s = self.scalar_mlp(x[:, :, 0]).to(h.dtype)
        h = torch.cat([s.unsqueeze(-1), h[:, :, 1:]], dim=-1)
        out = self.linear_out(h)
        return torch.cat([(out[:, :, 0] + self.bias_out).unsqueeze(-1), out[:, :, 1:]], dim=-1)
