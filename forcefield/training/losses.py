"""The weighted training loss: per-atom energy + forces (+ stress).

    L = w_E * mean_b ((E_pred - E_ref) / N_b)^2
      + w_F * mean over free force components (F_pred - F_ref)^2
      + w_S * mean over stress components (S_pred - S_ref)^2      (when labelled)

With ``kind="huber"`` each squared error is replaced by the Huber function with
threshold ``huber_delta``; ``kind="mae"`` takes absolute errors; ``kind="l2mae"`` takes,
for forces (and stress), the Euclidean norm of each atom's error vector, averaged over
atoms (OC20's force "L2MAE"; for energies it equals ``mae``). ``energy_kind`` /
``forces_kind`` override ``kind`` per term. ``energy_per_atom=false`` compares total
energies (OC20 S2EF), and ``normalizer`` divides every error by a target std (OC20's
2.8873 eV), as training on normalised targets does. Fixed atoms never enter the force
term. Errors are formed in float64 so that a float32 model still subtracts total energies of
~ -17660 eV exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from forcefield.training.metrics import _num_atoms, free_atom_mask

KINDS = ("mse", "huber", "mae", "l2mae")


@dataclass
class LossConfig:
    energy_weight: float = 1.0
    forces_weight: float = 1000.0
    stress_weight: float = 0.0
    kind: str = "mse"  # mse | huber | mae | l2mae
    huber_delta: float = 0.01
    energy_kind: str | None = None  # overrides kind for the energy term
    forces_kind: str | None = None  # overrides kind for the force (and stress) term
    energy_per_atom: bool = True  # false: total-energy errors (OC20 S2EF)
    normalizer: float = 1.0  # errors are divided by this target std

    def __post_init__(self) -> None:
        for key in ("kind", "energy_kind", "forces_kind"):
            value = getattr(self, key)
            if value is None and key != "kind":
                continue
            if value not in KINDS:
                raise ValueError(f"training.loss.{key} must be one of {', '.join(KINDS)}, "
                                 f"got {value!r}")
        if float(self.normalizer) <= 0:
            raise ValueError(f"training.loss.normalizer must be positive, got {self.normalizer}")


def _penalty(diff: torch.Tensor, cfg: LossConfig, kind: str | None = None) -> torch.Tensor:
    """Mean penalty of errors ``diff`` ([B] energies or [N, 3] per-atom vectors)."""
    if diff.numel() == 0:
        return diff.sum()
    kind = kind or cfg.kind
    diff = diff / float(cfg.normalizer)
    if kind == "huber":
        return torch.nn.functional.huber_loss(
            diff, torch.zeros_like(diff), reduction="mean", delta=cfg.huber_delta
        )
    if kind == "mae":
        return diff.abs().mean()
    if kind == "l2mae":
        if diff.dim() == 1:
            return diff.abs().mean()
        return torch.linalg.vector_norm(diff.flatten(1), dim=-1).mean()
    return (diff**2).mean()


def compute_loss(
    batch, pred: Mapping[str, torch.Tensor], cfg: LossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (total loss, {"energy": ..., "forces": ..., "stress": ...} unweighted terms)."""
    terms: dict[str, torch.Tensor] = {}
    total = None
    if cfg.energy_weight > 0 and getattr(batch, "energy", None) is not None:
        diff = (pred["energy"].to(torch.float64).reshape(-1)
                - batch.energy.to(torch.float64).reshape(-1))
        if cfg.energy_per_atom:
            diff = diff / _num_atoms(batch)
        terms["energy"] = _penalty(diff, cfg, cfg.energy_kind)
        total = cfg.energy_weight * terms["energy"]
    if cfg.forces_weight > 0 and getattr(batch, "forces", None) is not None:
        free = free_atom_mask(batch)
        diff = (pred["forces"].to(torch.float64) - batch.forces.to(torch.float64))[free]
        terms["forces"] = _penalty(diff, cfg, cfg.forces_kind)
        part = cfg.forces_weight * terms["forces"]
        total = part if total is None else total + part
    if (cfg.stress_weight > 0 and getattr(batch, "stress", None) is not None
            and pred.get("stress") is not None):
        diff = pred["stress"].to(torch.float64) - batch.stress.to(torch.float64)
        terms["stress"] = _penalty(diff, cfg, cfg.forces_kind)
        part = cfg.stress_weight * terms["stress"]
        total = part if total is None else total + part
    if total is None:
        raise ValueError(
            "the batch has no energy or forces labels with a nonzero loss weight; "
            "check the data's energy/forces keys and training.loss weights"
        )
    return total, terms
