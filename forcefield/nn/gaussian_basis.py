"""Gaussian radial basis (EquiformerV2's GaussianSmearing), times the smooth cutoff envelope."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GaussianBasis"]


class GaussianBasis(nn.Module):
    """exp(-(r - mu_k)^2 / (2 (width * delta)^2)), mu_k evenly spaced on [0, r_max].

    Args:
        r_max: cutoff radius (A).
        num_basis: number of Gaussians.
        width: width in units of the spacing delta = r_max / (num_basis - 1).

    ``forward(r [E, 1]) -> [E, num_basis]``.
    """

    def __init__(self, r_max: float, num_basis: int = 128, width: float = 2.0):
        super().__init__()
        self.r_max = float(r_max)
        self.num_basis = int(num_basis)
        self.width = float(width)
        self.delta = self.r_max / max(1, self.num_basis - 1)

    def extra_repr(self) -> str:
        return f"r_max={self.r_max}, num_basis={self.num_basis}, width={self.width}"

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        mu = torch.linspace(0.0, self.r_max, self.num_basis, dtype=r.dtype, device=r.device)
        sigma = self.width * self.delta
        return torch.exp(-0.5 * ((r - mu) / sigma) ** 2)
