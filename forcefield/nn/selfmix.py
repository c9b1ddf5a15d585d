"""Gaunt Selfmix: a channel-wise Gaunt product of a node feature with itself.

    y = Lin_o( c * Gaunt(Lin_a h, Lin_b h) ),   h = norm(x),  truncated to degree lmax

``Gaunt`` is ``forcefield.so3.GauntTensorProduct`` (exact: its grid method integrates the
product on a quadrature exact for degree 3 lmax, never an aliasing grid); ``c`` is the
per-degree constant that gives unit-variance outputs for unit-variance inputs.  ``Lin_o``
is zero at initialisation, so a block with selfmix starts as plain EquiformerV2.
The product runs with autocast off in float32 or wider (half-precision products lose
accuracy fast with the degree).
"""

from __future__ import annotations

import torch
from torch import nn

from forcefield import so3

from .constants import ConstantTables
from .gaunt_blocks import product_normalisation
from .linear import DegreeLinear
from .norm import wide

__all__ = ["GauntSelfmix"]


class GauntSelfmix(nn.Module):
    """``forward(h [N, C, (lmax+1)^2]) -> [N, C, (lmax+1)^2]`` (the residual increment).

    Args:
        channels: C (the product is channel-wise: channel c of Lin_a h times channel c of
            Lin_b h).
        lmax: input and output degree.
        method: the so3 product method ("auto", "grid", "dense", "fourier"; all exact).
    """

    def __init__(self, channels: int, lmax: int, method: str = "auto"):
        super().__init__()
        self.channels, self.lmax = channels, lmax
        self.linear_a = DegreeLinear(channels, channels, lmax, lmax)
        self.linear_b = DegreeLinear(channels, channels, lmax, lmax)
        self.product = so3.GauntTensorProduct(lmax, lmax, lmax, method=method)
        reference = so3.GauntTensorProduct(lmax, lmax, lmax, method="dense")
        self._tables = ConstantTables(norm=product_normalisation(reference, lmax, lmax, lmax))
        self.linear_out = DegreeLinear(channels, channels, lmax, lmax)
        nn.init.zeros_(self.linear_out.weight)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lmax={self.lmax}"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u, v = self.linear_a(h), self.linear_b(h)
        with torch.autocast(h.device.type, enabled=False):
            u, v = wide(u), wide(v)
            p = self.product(u, v.to(u.dtype)) * self._tables.get(u)["norm"]
        return self.linear_out(p)
