"""What a fine-tune changed: errors before and after on the new data (its validation split)
and on the original data (held-out replay structures), E0s re-estimated, and an energy
offset between the model and the new labels named instead of trained away silently.

Built by ``forcefield train`` when ``init_from`` is set (:meth:`FineTuneReport.start`),
finished after the fit (:meth:`FineTuneReport.finish`); its summary goes into
metrics.json under ``finetune`` and its text after the test table.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from forcefield.training import replay as replay_mod

NEW, ORIGINAL = "new_valid", "original_holdout"
"""Report split names: the new data's validation split, held-out replay structures."""

OFFSET_WARN_MEV = 10.0
"""A mean per-atom energy error (meV/atom) above this, before fine-tuning, is named: the
new labels probably use another energy reference (E0s); per-atom errors of a model on
nearby configurations are a few meV/atom."""


def _echo(msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)


def _e0_change(old: Mapping | None, new: Mapping | None) -> str:
    from ase.data import chemical_symbols

    old = {int(k): float(v) for k, v in dict(old or {}).items()}
    new = {int(k): float(v) for k, v in dict(new or {}).items()}
    return ", ".join(f"{chemical_symbols[z]} {old.get(z, float('nan')):.4f} -> {new[z]:.4f}"
                     for z in sorted(new) if old.get(z) != new[z])


@dataclass
class FineTuneReport:
    """The fine-tune's replay data and its before/after errors."""

    init_from: str
    splits: dict[str, list] = field(default_factory=dict)
    replay: list = field(default_factory=list)
    fraction: float = 0.0
    before: dict[str, dict[str, float]] = field(default_factory=dict)
    after: dict[str, dict[str, float]] = field(default_factory=dict)
    e0s_reset: str = ""

    @classmethod
    def start(cls, cfg: Any, settings: Mapping[str, Any], model: torch.nn.Module,
              pretrained: torch.nn.Module | None, dm: Any, r_max: float) -> FineTuneReport:
        """Load the replay data, measure the model given (``pretrained``; None when resuming)
        on both distributions, and say what the fine-tune changes before it starts."""
        init_from = str(cfg.init_from)
        report = cls(init_from=init_from)
        valid = getattr(dm, "valid_data", None)
        if isinstance(valid, list) and valid:
            report.splits[NEW] = valid
        sources = replay_mod.replay_sources(settings.get("replay"), init_from)
        if sources:
            report.fraction = replay_mod.check_fraction(settings.get("replay_fraction"))
            label = str(settings.get("replay"))
            graphs = replay_mod.load_replay(sources, r_max, model.config["species"], label)
            report.replay, held = replay_mod.split_holdout(
                graphs, int(settings.get("replay_holdout", 0)), int(cfg.seed))
            if held:
                report.splits[ORIGINAL] = held
            _echo(f"forcefield train: replaying {len(report.replay)} structures of {label} "
                  f"({replay_mod.replay_count(_n(dm), len(report.replay), report.fraction)} "
                  f"per epoch, {report.fraction:.0%} of each epoch); {len(held)} held out")
        if pretrained is None:  # resumed: the model given was measured by the first run
            return report
        if "e0s" in settings.get("reset_statistics", []):
            report.e0s_reset = _e0_change(pretrained.config.get("e0s"), model.config.get("e0s"))
            _echo("forcefield train: E0s re-estimated from the new training data (eV): "
                  + (report.e0s_reset or "unchanged"))
        reference = pretrained.to(next(model.parameters()).dtype)
        report.before = {name: replay_mod.errors(reference, graphs)
                         for name, graphs in report.splits.items()}
        offset = report.before.get(NEW, {}).get("energy_per_atom_mean_error_meV")
        if offset is not None and abs(offset) > OFFSET_WARN_MEV and not report.e0s_reset:
            _echo(f"forcefield train: warning: before fine-tuning, {init_from} is off the new "
                  f"data's energies by {offset:+.1f} meV/atom on average; if the new labels "
                  "use another reference (DFT code, functional, pseudopotentials), "
                  "re-estimate the E0s with finetune.reset_statistics=[e0s]")
        return report

    def mix_into(self, loader: Any, seed: int) -> Any:
        """The training loader with the replay structures mixed in."""
        return replay_mod.with_replay(loader, self.replay, self.fraction, seed)

    def finish(self, model: torch.nn.Module) -> None:
        """Measure the fine-tuned (EMA) model on the same splits."""
        self.after = {name: replay_mod.errors(model, graphs)
                      for name, graphs in self.splits.items()}

    def summary(self) -> dict[str, Any]:
        """The metrics.json entry ``finetune``."""
        return {"init_from": self.init_from, "before": self.before, "after": self.after,
                "replay_structures": len(self.replay), "replay_fraction": self.fraction,
                "e0s_reset": self.e0s_reset or None}

    def text(self) -> str:
        """One line per split, before -> after."""
        names = {NEW: "new data (validation)", ORIGINAL: "original data (held-out replay)"}
        after = {names.get(k, k): v for k, v in self.after.items()}
        before = {names.get(k, k): v for k, v in self.before.items()}
        return replay_mod.report(before, after)


def _n(dm: Any) -> int:
    data = getattr(dm, "train_data", None)
    return len(data) if isinstance(data, list) else 0


__all__ = ["NEW", "OFFSET_WARN_MEV", "ORIGINAL", "FineTuneReport"]
