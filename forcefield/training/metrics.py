"""Error metrics accumulated in float64 over a whole split.

Every metric is a ratio of sums (squared errors, absolute errors, counts), so a
split's value is exact whatever the batch size, and the sums can be added across
DDP ranks with one ``all_reduce`` before the ratios are taken.

Forces are compared on free atoms only (``fixed`` False); structures without a
``fixed`` mask count every atom as free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

#: Thresholds of the OC20 "within threshold" metrics.
EFWT_ENERGY_EV = 0.02
EFWT_FORCE_EV_A = 0.03
EWT_ENERGY_EV = 0.02

_FIELDS = (
    "n_structures",
    "e_sq",  # sum (dE)^2, eV^2
    "e_abs",  # sum |dE|, eV
    "epa_sq",  # sum (dE/N)^2
    "epa_abs",  # sum |dE/N|
    "n_force_structures",  # structures with force labels
    "f_components",  # number of free force components
    "f_sq",  # sum (dF)^2 over free components
    "f_abs",  # sum |dF|
    "n_free_atoms",  # free atoms with a nonzero force
    "f_cos",  # sum of cosines between predicted and reference forces per free atom
    "efwt",  # structures within both thresholds
    "ewt",  # structures within the energy threshold
    "n_stress",  # stress components compared
    "s_sq",  # sum (dS)^2, (eV/A^3)^2
)
_INDEX = {name: i for i, name in enumerate(_FIELDS)}


def free_atom_mask(batch) -> torch.Tensor:
    """Boolean [N] mask of atoms whose forces count (not fixed)."""
    n = batch.pos.shape[0]
    fixed = getattr(batch, "fixed", None)
    if fixed is None:
        return torch.ones(n, dtype=torch.bool, device=batch.pos.device)
    return ~fixed.to(torch.bool).reshape(-1)


def _graph_index(batch) -> torch.Tensor:
    index = getattr(batch, "batch", None)
    if index is None:
        return torch.zeros(batch.pos.shape[0], dtype=torch.long, device=batch.pos.device)
    return index


def _num_atoms(batch) -> torch.Tensor:
    natoms = getattr(batch, "natoms", None)
    if natoms is not None:
        return natoms.reshape(-1).to(torch.float64)
    counts = torch.bincount(_graph_index(batch), minlength=int(batch.num_graphs))
    return counts.to(torch.float64)


class MetricAccumulator:
    """Running float64 sums for the error metrics of one split."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(len(_FIELDS), dtype=torch.float64, device=device)

    def reset(self) -> None:
        self.sums.zero_()

    def _add(self, name: str, value) -> None:
        self.sums[_INDEX[name]] += value

    @torch.no_grad()
    def update(self, batch, pred: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: ``pred`` has "energy" [B] and "forces" [N, 3] (and "stress")."""
        if self.sums.device != batch.pos.device:
            self.sums = self.sums.to(batch.pos.device)
        num_graphs = int(batch.num_graphs)
        natoms = _num_atoms(batch)
        de = None
        if getattr(batch, "energy", None) is not None and "energy" in pred:
            de = pred["energy"].detach().to(torch.float64).reshape(-1) - batch.energy.to(
                torch.float64
            ).reshape(-1)
            self._add("n_structures", num_graphs)
            self._add("e_sq", (de**2).sum())
            self._add("e_abs", de.abs().sum())
            self._add("epa_sq", ((de / natoms) ** 2).sum())
            self._add("epa_abs", (de / natoms).abs().sum())
            self._add("ewt", (de.abs() < EWT_ENERGY_EV).sum())
        if getattr(batch, "forces", None) is not None and "forces" in pred:
            free = free_atom_mask(batch)
            fp = pred["forces"].detach().to(torch.float64)
            fr = batch.forces.to(torch.float64)
            df = (fp - fr)[free]
            self._add("n_force_structures", num_graphs)
            self._add("f_components", df.numel())
            self._add("f_sq", (df**2).sum())
            self._add("f_abs", df.abs().sum())
            cos = torch.nn.functional.cosine_similarity(fp[free], fr[free], dim=-1, eps=1e-12)
            self._add("n_free_atoms", cos.numel())
            self._add("f_cos", cos.sum())
            if de is not None:
                # max |dF| component per structure over free atoms (0 when none is free)
                err = (fp - fr).abs().amax(dim=-1) * free.to(torch.float64)
                idx = _graph_index(batch)
                max_err = torch.zeros(num_graphs, dtype=torch.float64, device=err.device)
                max_err = max_err.scatter_reduce(0, idx, err, reduce="amax", include_self=True)
                ok = (de.abs() < EFWT_ENERGY_EV) & (max_err < EFWT_FORCE_EV_A)
                self._add("efwt", ok.sum())
        if getattr(batch, "stress", None) is not None and pred.get("stress") is not None:
            ds = pred["stress"].detach().to(torch.float64) - batch.stress.to(torch.float64)
            self._add("n_stress", ds.numel())
            self._add("s_sq", (ds**2).sum())

    def all_reduce(self) -> None:
        """Sum the accumulators over DDP ranks (no-op outside torch.distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.sums, op=torch.distributed.ReduceOp.SUM)

    def compute(self, oc20: bool = False) -> dict[str, float]:
        """The metrics of everything added so far (meV, meV/A).

        ``oc20`` adds force cosine, EFwT and EwT (fractions in [0, 1]).
        """
        s = {name: float(self.sums[i]) for i, name in enumerate(_FIELDS)}
        out: dict[str, float] = {}
        n = s["n_structures"]
        if n > 0:
            out["energy_rmse_meV"] = 1000.0 * math.sqrt(s["e_sq"] / n)
            out["energy_mae_meV"] = 1000.0 * s["e_abs"] / n
            out["energy_per_atom_rmse_meV"] = 1000.0 * math.sqrt(s["epa_sq"] / n)
            out["energy_per_atom_mae_meV"] = 1000.0 * s["epa_abs"] / n
        if s["f_components"] > 0:
            out["forces_rmse_meV_A"] = 1000.0 * math.sqrt(s["f_sq"] / s["f_components"])
            out["forces_mae_meV_A"] = 1000.0 * s["f_abs"] / s["f_components"]
        if s["n_stress"] > 0:
            out["stress_rmse_meV_A3"] = 1000.0 * math.sqrt(s["s_sq"] / s["n_stress"])
        if oc20:
            if s["n_free_atoms"] > 0:
                out["forces_cos"] = s["f_cos"] / s["n_free_atoms"]
            if n > 0 and s["n_force_structures"] > 0:
                out["efwt"] = s["efwt"] / n
            if n > 0:
                out["ewt"] = s["ewt"] / n
        out["n_structures"] = int(max(n, s["n_force_structures"]))
        return out

    def mse(self) -> tuple[float, float]:
        """(per-atom energy MSE eV^2, force MSE (eV/A)^2) for the validation loss."""
        s = self.sums
        n = float(s[_INDEX["n_structures"]])
        nf = float(s[_INDEX["f_components"]])
        e = float(s[_INDEX["epa_sq"]]) / n if n > 0 else 0.0
        f = float(s[_INDEX["f_sq"]]) / nf if nf > 0 else 0.0
        return e, f


def format_table(results: Mapping[str, Mapping[str, float]], oc20: bool = False) -> str:
    """A plain-text table: one row per split, the paper's columns first."""
    cols = [
        ("energy_rmse_meV", "E RMSE meV"),
        ("energy_mae_meV", "E MAE meV"),
        ("energy_per_atom_rmse_meV", "E/atom RMSE meV"),
        ("forces_rmse_meV_A", "F RMSE meV/A"),
        ("forces_mae_meV_A", "F MAE meV/A"),
    ]
    if oc20:
        cols += [("forces_cos", "F cos"), ("efwt", "EFwT %"), ("ewt", "EwT %")]
    cols += [("n_structures", "N")]
    present = [c for c in cols if any(c[0] in m for m in results.values())]
    header = ["split"] + [label for _, label in present]
    rows = []
    for split, metrics in results.items():
        row = [str(split)]
        for key, _ in present:
            value = metrics.get(key)
            if value is None:
                row.append("-")
            elif key == "n_structures":
                row.append(str(int(value)))
            elif key in ("efwt", "ewt"):
                row.append(f"{100 * value:.2f}")
            elif key == "forces_cos":
                row.append(f"{value:.4f}")
            else:
                row.append(f"{value:.2f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
