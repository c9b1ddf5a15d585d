"""``forcefield relax``: relax structures with a trained model (see ``--help``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from forcefield.training.config import ConfigError

HELP = """usage: forcefield relax model=PATH structure=FILE [key=value ...]

Relax every structure of FILE (all frames; or a glob, directory, ASE db, OC20 LMDB) with
an ASE optimiser; fixed atoms (FixAtoms, extxyz move_mask) stay fixed. Writes into
output_dir: relaxed.extxyz, trajectories/<index>_<name>.traj, relax_summary.json
(per structure: converged, steps, energy, fmax; totals; with relaxed-energy labels such as
OC20 IS2RE's y_relaxed: energy MAE and EwT of the relaxed energies).

keys (conf/relax.yaml):
  model=PATH          model.pt (or a training checkpoint)
  structure=FILE      file, glob, directory or list of those
  optimizer=FIRE      FIRE | BFGS | LBFGS
  fmax=0.05           force criterion (eV/A) on free atoms
  steps=500           optimiser steps per structure at most
  relax_cell=false    relax the cell too (FrechetCellFilter; periodic structures)
  reference_energy=y_relaxed   info key of relaxed-energy labels (energy | null)
  dtype=float64  device=cpu  output_dir=...  progress=true  trajectories=true

examples:
  forcefield relax model=runs/x/model.pt structure=slabs.extxyz fmax=0.03 steps=300
  forcefield relax model=model.pt structure=bulk.cif relax_cell=true optimizer=BFGS
  forcefield relax model=model.pt structure=is2re_val.aselmdb reference_energy=energy
"""

KEYS = ("model", "structure", "index", "task", "optimizer", "fmax", "steps", "relax_cell",
        "reference_energy", "trajectories", "dtype", "device", "progress", "output_dir")


def run(cfg: DictConfig) -> int:
    """Relax the structures of ``cfg``; return the exit code (user errors raise)."""
    from forcefield.calculator import ForceFieldCalculator
    from forcefield.data.errors import DataError
    from forcefield.data.readers import read_structures
    from forcefield.model_files import load_network
    from forcefield.relax import RelaxError, relax_structures
    from forcefield.training.config import check_keys, check_missing

    check_keys(cfg, KEYS)
    check_missing(cfg)
    try:
        fmax, steps = float(cfg.fmax), int(cfg.steps)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"fmax and steps must be numbers ({exc})") from exc
    if cfg.dtype is not None and str(cfg.dtype) not in ("float32", "float64"):
        raise ConfigError(f"dtype={cfg.dtype!r} is not supported; use float32 or float64")
    try:
        net, _ = load_network(str(cfg.model), dtype=cfg.dtype, device=str(cfg.device))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"model={cfg.model}: {exc}") from exc
    try:
        structures = read_structures(_sources(cfg.structure), task=str(cfg.task),
                                     index=cfg.index)
    except DataError as exc:
        raise ConfigError(f"structure: {exc}") from exc
    # the stress (a third of the cost per step) only where the cell relaxes
    calc = ForceFieldCalculator(net, device=str(cfg.device),
                                compute_stress="auto" if cfg.relax_cell else False)
    out = Path(str(cfg.output_dir)).expanduser().resolve()
    try:
        summary = relax_structures(
            calc, structures, out, optimizer=str(cfg.optimizer), fmax=fmax, steps=steps,
            relax_cell=bool(cfg.relax_cell), reference_key=cfg.reference_energy,
            trajectories=bool(cfg.trajectories), progress=bool(cfg.progress))
    except RelaxError as exc:
        raise ConfigError(str(exc)) from exc
    totals = summary["totals"]
    line = (f"relaxed {totals['n_converged']}/{totals['n_structures']} structures below "
            f"fmax={fmax} eV/A ({totals['total_steps']} steps)")
    if "energy_mae_meV" in totals:
        line += (f"; relaxed energy vs {cfg.reference_energy}: MAE "
                 f"{totals['energy_mae_meV']:.1f} meV, EwT {100 * totals['ewt']:.1f}%")
    print(line)
    if totals["not_converged"]:
        print(f"not converged in {steps} steps: {', '.join(totals['not_converged'])}")
    print(f"wrote {out / 'relaxed.extxyz'}, {out / 'relax_summary.json'}")
    return 0


def _sources(value):
    from omegaconf import ListConfig

    return [str(v) for v in value] if isinstance(value, (list, ListConfig)) else str(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``forcefield relax`` with Hydra-style overrides; return the exit code."""
    from forcefield.training.commands import compose_with_model, run_command

    def body(cl) -> int:
        cfg = compose_with_model(cl)
        return 0 if cfg is None else run(cfg)

    return run_command("relax", argv, HELP, body)


if __name__ == "__main__":
    raise SystemExit(main())
