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
        # zero at initialisation: the untrained model predicts E0 + shift exactly, so the
        # first steps fit forces instead of undoing a random per-atom energy offset
        self.weight = nn.Parameter(torch.zeros(channels))

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
        nn.init.zeros_(self.lin2.weight)  # see LinearReadout

    def forward(self, scalars: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(scalars))).squeeze(-1)


class AtomicEnergyHead(nn.Module):
    """node_energy = E0[z] + scale * e_model + shift * g, computed in float64.

    ``g`` in [0, 1] is a smooth weight (the model passes the C2 smootherstep of
    min(1, sum_j u(r_ij)), u the cutoff envelope): exactly 1 for any atom with at least one
    neighbour's worth of envelope (all atoms of molecules and solids), exactly 0 for an
    isolated atom, so an isolated atom's energy is its E0 and the energy stays twice
    differentiable as neighbours leave r_max.

    ``e0s`` [num_elements] (eV), ``shift`` (eV/atom) and ``scale`` (eV) come from the data
    statistics and are float64 buffers that never change dtype with ``model.float()``.
    """

    def __init__(self, e0s: list[float], shift: float, scale: float):
        super().__init__()
        self._e0s = [float(e) for e in e0s]
        self.shift = float(shift)
        self.scale = float(scale)

    def forward(
        self,
        model_energy: torch.Tensor,
        species_idx: torch.Tensor,
        shift_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        e0 = torch.tensor(self._e0s, dtype=torch.float64, device=model_energy.device)
        out = e0[species_idx] + self.scale * model_energy.to(torch.float64)
        if self.shift != 0.0:
            g = 1.0 if shift_weight is None else shift_weight.to(torch.float64)
            out = out + self.shift * g
        return out
