"""``forcefield relax``: conf/relax.yaml -> :func:`forcefield.relax.relax_structures`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from forcefield.cli.command import Command
from forcefield.errors import ConfigError


def run(cfg: DictConfig) -> int:
    """Relax the structures of ``cfg``; return the exit code (user errors raise)."""
    from forcefield.calculator import ForceFieldCalculator
    from forcefield.data.errors import DataError
    from forcefield.data.readers import read_structures
    from forcefield.model_files import load_network
    from forcefield.relax import relax_structures
    from forcefield.training.config import check_dtype

    fmax, steps = float(cfg.fmax), int(cfg.steps)  # types checked against conf/relax.yaml
    check_dtype(cfg.dtype)
    net, _ = load_network(str(cfg.model), dtype=cfg.dtype, device=str(cfg.device))
    try:
        structures = read_structures(_sources(cfg.structure), task=str(cfg.task),
                                     index=cfg.index)
    except DataError as exc:
        raise ConfigError(f"structure: {exc}") from exc
    # the stress (a third of the cost per step) only where the cell relaxes
    calc = ForceFieldCalculator(net, device=str(cfg.device),
                                compute_stress="auto" if cfg.relax_cell else False,
                                compile=bool(cfg.compile),
                                allow_direct_forces=bool(cfg.allow_direct_forces))
    out = Path(str(cfg.output_dir)).expanduser().resolve()
    summary = relax_structures(
        calc, structures, out, optimizer=str(cfg.optimizer), fmax=fmax, steps=steps,
        relax_cell=bool(cfg.relax_cell), reference_key=cfg.reference_energy,
        trajectories=bool(cfg.trajectories), progress=bool(cfg.progress))
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


COMMAND = Command(
    name="relax",
    usage="model=PATH structure=FILE [key=value ...]",
    description="""\
Relax every structure of FILE (all frames; or a glob, directory, ASE db, OC20 LMDB) with
an ASE optimiser; fixed atoms (FixAtoms, extxyz move_mask) stay fixed. Writes into
output_dir: relaxed.extxyz, trajectories/<index>_<name>.traj, relax_summary.json
(per structure: converged, steps, energy, fmax; totals; with relaxed-energy labels such as
OC20 IS2RE's y_relaxed: energy MAE and EwT of the relaxed energies). A direct-force model
(model.forces=direct) is refused unless allow_direct_forces=true, and then relaxes with FIRE
only.""",
    run=run,
    examples=(
        "forcefield relax model=runs/x/model.pt structure=slabs.extxyz fmax=0.03 steps=300",
        "forcefield relax model=model.pt structure=bulk.cif relax_cell=true optimizer=BFGS",
        "forcefield relax model=model.pt structure=is2re_val.aselmdb reference_energy=energy",
    ),
    path_keys=("model",),
)

main = COMMAND.main

if __name__ == "__main__":
    raise SystemExit(main())
