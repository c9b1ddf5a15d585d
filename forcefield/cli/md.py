"""``forcefield md``: conf/md.yaml -> :func:`forcefield.md.run_md`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from forcefield.cli.command import Command


def read_structure(path: str, index: int):
    """The frame ``index`` of the structure file ``path``; a DataError names a bad file."""
    import ase.io

    from forcefield.data.errors import DataError

    structure = Path(path)
    if not structure.is_file():
        raise DataError(f"structure file {structure} does not exist (structure=...)")
    try:
        atoms = ase.io.read(str(structure), index=index)
    except Exception as exc:  # ase raises many types for files it cannot read
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"cannot read a structure from {structure} (index {index}): "
                        f"{type(exc).__name__}: {first}; give a file ASE can read (xyz, "
                        "extxyz, cif, POSCAR, traj)") from exc
    return atoms[0] if isinstance(atoms, list) else atoms


def run(cfg: DictConfig) -> int:
    """Run the dynamics ``cfg`` asks for and print its summary; the exit code."""
    from forcefield.calculator import ForceFieldCalculator
    from forcefield.md import run_md
    from forcefield.model_files import load_network
    from forcefield.training.config import check_dtype

    check_dtype(cfg.dtype)
    atoms = read_structure(str(cfg.structure), int(cfg.structure_index))
    net, _ = load_network(str(cfg.model), dtype=cfg.dtype, device=str(cfg.device))
    calc = ForceFieldCalculator(net, device=str(cfg.device), dtype=cfg.dtype,
                                compile=bool(cfg.compile),
                                allow_direct_forces=bool(cfg.allow_direct_forces))
    calc.check_atoms(atoms)
    out = Path(str(cfg.output_dir))
    summary = run_md(calc, atoms, ensemble=str(cfg.ensemble),
                     temperature_K=float(cfg.temperature_K), timestep_fs=float(cfg.timestep_fs),
                     steps=int(cfg.steps), output_dir=out, friction=float(cfg.friction),
                     seed=int(cfg.seed), log_interval=int(cfg.log_interval),
                     progress=bool(cfg.progress))
    print(
        f"MD done: {summary['steps']} steps of {summary['timestep_fs']} fs "
        f"({summary['ensemble']}, {summary['natoms']} atoms) at "
        f"{summary['steps_per_second']:.1f} steps/s; max |E_tot - E_0| = "
        f"{summary['max_energy_drift_meV_per_atom']:.4f} meV/atom; final T = "
        f"{summary['final_temperature_K']:.1f} K; wrote {out / 'md.traj'}, {out / 'md.log'}, "
        f"{out / 'md_summary.json'}"
    )
    return 0


COMMAND = Command(
    name="md",
    usage="model=PATH structure=FILE [key=value ...]",
    description="""\
Run molecular dynamics with a trained model (model.pt) through ASE: NVE (velocity Verlet)
or Langevin NVT from Maxwell-Boltzmann velocities. Writes md.traj, md.log and
md_summary.json (energy drift per atom, steps per second) into output_dir. A direct-force
model (model.forces=direct) is refused unless allow_direct_forces=true.""",
    run=run,
    examples=(
        "forcefield md model=runs/x/model.pt structure=data/3bpa/train_300K.xyz steps=2000",
        "forcefield md model=model.pt structure=slab.cif ensemble=langevin temperature_K=500 "
        "timestep_fs=1.0",
    ),
    path_keys=("model",),
)

main = COMMAND.main

if __name__ == "__main__":
    raise SystemExit(main())
