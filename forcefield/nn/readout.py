"""Per-layer energy readouts and the float64 per-element energy head."""

from __future__ import annotations

import math

import torch
from torch import nn

from .radial import ScaledSiLU

__all__ = ["LinearReadout", "MLPReadout", "AtomicEnergyHead"]


class LinearReadout(nn.Module):
    """Scalar channels [N, C] -> one energy per node [N]."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels) / math.sqrt(channels))

    def forward(self, scalars: torch.Tensor) -> torch.Tensor:
        return scalars @ self.weight


class MLPReadout(nn.Module):
    """Scalar channels [N, C] -> hidden (SiLU) -> one energy per node [N]."""

    def __init__(self, channels: int, hidden: int = 16):
        super().__init__()
        self.lin1 = nn.Linear(channels, hidden, bias=False)
        self.act = ScaledSiLU()
        self.lin2 = nn.Linear(hidden, 1, bias=False)
        nn.init.normal_(self.lin1.weight, std=1.0 / math.sqrt(channels))
        nn.init.normal_(self.lin2.weight, std=1.0 / math.sqrt(hidden))

    def forward(self, scalars: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(scalars))).squeeze(-1)


class AtomicEnergyHead(nn.Module):
    """node_energy = E0[z] + shift + scale * e_model, computed in float64.

    ``e0s`` [num_elements] (eV), ``shift`` (eV/atom) and ``scale`` (eV) come from the data
    statistics and are float64 buffers that never change dtype with ``model.float()``.
    """

    def __init__(self, e0s: list[float], shift: float, scale: float):
        super().__init__()
        self._e0s = [float(e) for e in e0s]
        self.shift = float(shift)
        self.scale = float(scale)

    def forward(self, model_energy: torch.Tensor, species_idx: torch.Tensor) -> torch.Tensor:
        e0 = torch.tensor(self._e0s, dtype=torch.float64, device=model_energy.device)
        return e0[species_idx] + self.shift + self.scale * model_energy.to(torch.float64)
