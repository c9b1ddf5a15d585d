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
    """node_energy = E0[z] + scale * e_model + (shift + scale * b[z]) * g, in float64.

    ``g`` in [0, 1] is a smooth weight (the model passes the C2 smootherstep of
    min(1, sum_j u(r_ij)), u the cutoff envelope): exactly 1 for any atom with at least one
    neighbour's worth of envelope (all atoms of molecules and solids), exactly 0 for an
    isolated atom, so an isolated atom's energy is its E0 and the energy stays twice
    differentiable as neighbours leave r_max.

    ``e0s`` [num_elements] (eV), ``shift`` (eV/atom) and ``scale`` (eV) come from the data
    statistics and are float64 constants that never change dtype with ``model.float()``.

    ``b`` (``element_shift``, [num_elements], zero at initialisation, in units of ``scale``)
    is a learnable per-element correction of the shift: the one parameter that moves the
    energy of every bonded atom of an element uniformly, with no effect on forces. Without
    it the mean energy is only reachable through weights that the (1000x heavier) force
    loss also pulls on; in training the energy then drifts by ~0.5 eV/atom within the
    first epoch and the per-atom energy loss corrects it only slowly (mace-torch gets the
    same degree of freedom from the element-dependent skip connection of its first
    interaction, which however also gives isolated atoms a learned offset).
    """

    def __init__(self, e0s: list[float], shift: float, scale: float):
        super().__init__()
        self._e0s = [float(e) for e in e0s]
        self.shift = float(shift)
        self.scale = float(scale)
        self.element_shift = nn.Parameter(torch.zeros(len(self._e0s)))

    def forward(
        self,
        model_energy: torch.Tensor,
        species_idx: torch.Tensor,
        shift_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        e0 = torch.tensor(self._e0s, dtype=torch.float64, device=model_energy.device)
        shift = self.shift + self.scale * self.element_shift.to(torch.float64)[species_idx]
        g = 1.0 if shift_weight is None else shift_weight.to(torch.float64)
        return e0[species_idx] + self.scale * model_energy.to(torch.float64) + shift * g

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # model files and checkpoints written before ``element_shift`` existed hold no
        # such entry: they computed exactly this head with b = 0
        key = prefix + "element_shift"
        if key not in state_dict:
            state_dict[key] = torch.zeros_like(self.element_shift)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
