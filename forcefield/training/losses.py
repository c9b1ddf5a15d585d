"""The weighted training loss: per-atom energy + forces (+ stress).

    L = w_E * mean_b ((E_pred - E_ref) / N_b)^2
      + w_F * mean over free force components (F_pred - F_ref)^2
      + w_S * mean over stress components (S_pred - S_ref)^2      (when labelled)

With ``kind="huber"`` each squared error is replaced by the Huber function with
threshold ``huber_delta``. Fixed atoms never enter the force term. Errors are
formed in float64 so that a float32 model still subtracts total energies of
~ -17660 eV exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from forcefield.training.metrics import _num_atoms, free_atom_mask


@dataclass
class LossConfig:
    energy_weight: float = 1.0
    forces_weight: float = 1000.0
    stress_weight: float = 0.0
    kind: str = "mse"  # mse | huber
    huber_delta: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in ("mse", "huber"):
            raise ValueError(f"training.loss.kind must be 'mse' or 'huber', got {self.kind!r}")


def _penalty(diff: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    if diff.numel() == 0:
        return diff.sum()
    if cfg.kind == "huber":
        return torch.nn.functional.huber_loss(
            diff, torch.zeros_like(diff), reduction="mean", delta=cfg.huber_delta
        )
    return (diff**2).mean()


def compute_loss(
    batch, pred: Mapping[str, torch.Tensor], cfg: LossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (total loss, {"energy": ..., "forces": ..., "stress": ...} unweighted terms)."""
    terms: dict[str, torch.Tensor] = {}
    total = None
    if cfg.energy_weight > 0 and getattr(batch, "energy", None) is not None:
        natoms = _num_atoms(batch)
        diff = (pred["energy"].to(torch.float64).reshape(-1)
                - batch.energy.to(torch.float64).reshape(-1)) / natoms
        terms["energy"] = _penalty(diff, cfg)
        total = cfg.energy_weight * terms["energy"]
    if cfg.forces_weight > 0 and getattr(batch, "forces", None) is not None:
        free = free_atom_mask(batch)
        diff = (pred["forces"].to(torch.float64) - batch.forces.to(torch.float64))[free]
        terms["forces"] = _penalty(diff, cfg)
        part = cfg.forces_weight * terms["forces"]
        total = part if total is None else total + part
    if (cfg.stress_weight > 0 and getattr(batch, "stress", None) is not None
            and pred.get("stress") is not None):
        diff = pred["stress"].to(torch.float64) - batch.stress.to(torch.float64)
        terms["stress"] = _penalty(diff, cfg)
        part = cfg.stress_weight * terms["stress"]
        total = part if total is None else total + part
    if total is None:
        raise ValueError(
            "the batch has no energy or forces labels with a nonzero loss weight; "
            "check the data's energy/forces keys and training.loss weights"
        )
    return total, terms
