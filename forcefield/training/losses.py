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
term. Under DDP each mean is taken over the elements of *all* ranks (one all-reduce of
the three counts per step), so ranks holding different numbers of atoms (atom-budget
batches) still give the exact per-atom mean after DDP averages the gradients. Errors
are formed in float64 so that a float32 model still subtracts total energies of
~ -17660 eV exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def _elementwise(diff: torch.Tensor, cfg: LossConfig, kind: str | None = None
                 ) -> torch.Tensor:
    """Per-element penalties of errors ``diff`` ([B] energies, [N, 3] per-atom vectors or
    [B, 3, 3] stresses); ``l2mae`` gives one value per atom (or structure)."""
    kind = kind or cfg.kind
    diff = diff / float(cfg.normalizer)
    if kind == "huber":
        return torch.nn.functional.huber_loss(
            diff, torch.zeros_like(diff), reduction="none", delta=cfg.huber_delta
        )
    if kind == "mae" or (kind == "l2mae" and diff.dim() == 1):
        return diff.abs()
    if kind == "l2mae":
        return torch.linalg.vector_norm(diff.flatten(1), dim=-1)
    return diff**2


def compute_loss(
    batch, pred: Mapping[str, torch.Tensor], cfg: LossConfig,
    reduce_counts: Callable[[torch.Tensor], tuple[torch.Tensor, int]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (total loss, {"energy": ..., "forces": ..., "stress": ...} unweighted terms).

    ``reduce_counts`` (DDP): maps this rank's element counts [3] to (global counts, world
    size); each term becomes ``sum_local * world / count_global``, whose DDP-averaged
    gradient is that of the global mean.
    """
    elements: dict[str, torch.Tensor] = {}
    if cfg.energy_weight > 0 and getattr(batch, "energy", None) is not None:
        diff = (pred["energy"].to(torch.float64).reshape(-1)
                - batch.energy.to(torch.float64).reshape(-1))
        if cfg.energy_per_atom:
            diff = diff / _num_atoms(batch)
        elements["energy"] = _elementwise(diff, cfg, cfg.energy_kind)
    if cfg.forces_weight > 0 and getattr(batch, "forces", None) is not None:
        free = free_atom_mask(batch)
        diff = (pred["forces"].to(torch.float64) - batch.forces.to(torch.float64))[free]
        elements["forces"] = _elementwise(diff, cfg, cfg.forces_kind)
    if (cfg.stress_weight > 0 and getattr(batch, "stress", None) is not None
            and pred.get("stress") is not None):
        diff = pred["stress"].to(torch.float64) - batch.stress.to(torch.float64)
        elements["stress"] = _elementwise(diff, cfg, cfg.forces_kind)
    if not elements and reduce_counts is None:
        raise ValueError(
            "the batch has no energy or forces labels with a nonzero loss weight; "
            "check the data's energy/forces keys and training.loss weights"
        )
    names = ("energy", "forces", "stress")
    local = torch.tensor([float(elements[k].numel()) if k in elements else 0.0 for k in names],
                         dtype=torch.float64)
    world = 1
    counts = local
    if reduce_counts is not None:  # every rank calls this once per step, whatever it holds
        counts, world = reduce_counts(local)
    weights = {"energy": cfg.energy_weight, "forces": cfg.forces_weight,
               "stress": cfg.stress_weight}
    terms: dict[str, torch.Tensor] = {}
    total = None
    for k, name in enumerate(names):
        if name not in elements:
            continue
        n = float(counts[k])
        terms[name] = elements[name].sum() * (world / n) if n > 0 else elements[name].sum()
        part = weights[name] * terms[name]
        total = part if total is None else total + part
    if total is None:  # DDP: nothing labelled on this rank this step, but others have labels
        total = pred["energy"].sum() * 0.0
    return total, terms
