"""Radial basis: Bessel functions times a smooth polynomial envelope, and the radial MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BesselBasis", "PolynomialEnvelope", "RadialEmbedding", "RadialMLP", "ScaledSiLU"]


class PolynomialEnvelope(nn.Module):
    """u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2), d = r / r_max.

    u(0) = 1; u, u' and u'' all vanish at d = 1; u = 0 beyond r_max.
    """

    def __init__(self, r_max: float, p: int = 5):
        super().__init__()
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        d = r / self.r_max
        u = (
            1.0
            - (p + 1) * (p + 2) / 2.0 * d**p
            + p * (p + 2) * d ** (p + 1)
            - p * (p + 1) / 2.0 * d ** (p + 2)
        )
        return torch.where(d < 1.0, u, torch.zeros_like(u))


class BesselBasis(nn.Module):
    """b_n(r) = sqrt(2 / r_max) sin(n pi r / r_max) / r, n = 1..num_basis (fixed frequencies)."""

    def __init__(self, r_max: float, num_basis: int = 8):
        super().__init__()
        self.r_max = float(r_max)
        self.num_basis = int(num_basis)
        self.prefactor = math.sqrt(2.0 / self.r_max)

    def forward(self, r: torch.Tensor) -> torch.Tensor:  # r [E, 1]
        n = torch.arange(1, self.num_basis + 1, dtype=r.dtype, device=r.device)
        return self.prefactor * torch.sin(n * (math.pi / self.r_max) * r) / r


class RadialEmbedding(nn.Module):
    """Bessel basis times the envelope: [E, 1] distances -> [E, num_basis] (zero beyond r_max)."""

    def __init__(self, r_max: float, num_basis: int = 8, envelope_p: int = 5):
        super().__init__()
        self.bessel = BesselBasis(r_max, num_basis)
        self.envelope = PolynomialEnvelope(r_max, envelope_p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.bessel(r) * self.envelope(r)


class ScaledSiLU(nn.Module):
    """SiLU rescaled to unit second moment under a standard normal input (as e3nn does)."""

    scale = 1.6790  # 1 / sqrt(E[silu(z)^2]), z ~ N(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * self.scale


class RadialMLP(nn.Module):
    """Bias-free MLP (so zero input gives zero output: weights vanish smoothly at r_max).

    Weights are initialised N(0, 1/fan_in) so unit-variance inputs keep unit variance.
    """

    def __init__(self, dims: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=False)):
            lin = nn.Linear(a, b, bias=False)
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(a))
            layers.append(lin)
            if k < len(dims) - 2:
                layers.append(ScaledSiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
