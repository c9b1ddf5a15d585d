"""Parity plots (predicted vs reference) with MAE and RMSE in the legend."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from forcefield.training.io import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def parity_plot(
    path: str | Path,
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    quantity: str,
    unit: str,
    error_unit: str,
    error_scale: float = 1000.0,
) -> None:
    """One scatter per split; ``series[name] = (reference, predicted)``."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=120)
    lo, hi = np.inf, -np.inf
    # later splits (e.g. 600K, wider) first, so the earlier ones stay visible on top
    for name, (ref, pred) in reversed(list(series.items())):
        ref = np.asarray(ref, dtype=np.float64).reshape(-1)
        pred = np.asarray(pred, dtype=np.float64).reshape(-1)
        if ref.size == 0:
            continue
        err = pred - ref
        mae = error_scale * np.mean(np.abs(err))
        rmse = error_scale * np.sqrt(np.mean(err**2))
        ax.scatter(ref, pred, s=4, alpha=0.5, linewidths=0,
                   label=f"{name}: MAE {mae:.1f}, RMSE {rmse:.1f} {error_unit}")
        lo, hi = min(lo, ref.min(), pred.min()), max(hi, ref.max(), pred.max())
    if np.isfinite(lo):
        pad = 0.03 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"reference {quantity} ({unit})")
    ax.set_ylabel(f"predicted {quantity} ({unit})")
    ax.set_aspect("equal", adjustable="box")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper left", fontsize=7, markerscale=3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_parity_plots(out_dir: str | Path, predictions: Mapping[str, Mapping[str, np.ndarray]]
                       ) -> list[Path]:
    """parity_energy.png (total energy, errors in meV) and parity_forces.png (meV/A)."""
    out_dir = Path(out_dir)
    written = []
    energy = {}
    forces = {}
    for name, p in predictions.items():
        if len(p.get("e_ref", [])):
            energy[name] = (np.asarray(p["e_ref"]), np.asarray(p["e_pred"]))
        if len(p.get("f_ref", [])):
            forces[name] = (p["f_ref"], p["f_pred"])
    if energy:
        parity_plot(out_dir / "parity_energy.png", energy, "total energy", "eV", "meV")
        written.append(out_dir / "parity_energy.png")
    if forces:
        parity_plot(out_dir / "parity_forces.png", forces, "force component", "eV/A", "meV/A")
        written.append(out_dir / "parity_forces.png")
    return written
