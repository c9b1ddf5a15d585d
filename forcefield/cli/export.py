"""``forcefield export``: conf/export.yaml -> :func:`forcefield.export.export_checkpoint`."""

from __future__ import annotations

from omegaconf import DictConfig

from forcefield.cli.command import Command


def run(cfg: DictConfig) -> int:
    """Write the model file ``cfg.output`` from the checkpoint ``cfg.checkpoint``."""
    from forcefield.export import export_checkpoint

    dest = export_checkpoint(str(cfg.checkpoint), str(cfg.output), cfg.dtype, bool(cfg.ema),
                             str(cfg.format), str(cfg.source), str(cfg.target))
    print(f"forcefield export: wrote {dest}")
    return 0


COMMAND = Command(
    name="export",
    usage="checkpoint=PATH output=PATH [format=pt|pt2] [target=ase|local] [dtype=float64] "
          "[ema=true] [source=forcefield|fairchem]",
    description="""\
Turn a training checkpoint (or a model.pt) into a deployable model: format=pt writes the
model file (EMA weights by default) that evaluate, md, relax and ForceFieldCalculator read;
format=pt2 an AOTInductor package that computes energy, forces, virial and per-atom energies
without forcefield's model code (md, relax, ForceFieldCalculator, C++); with target=local
the package LAMMPS's pair_style forcefield reads (per-atom virials, ghost atoms).
source=fairchem reads a fairchem 1.x EquiformerV2 checkpoint instead and ports its weights
(docs/equiformer_v2.md, "Porting a fairchem checkpoint").""",
    run=run,
    examples=("forcefield export checkpoint=runs/x/checkpoints/best.ckpt output=model.pt",
              "forcefield export checkpoint=runs/x/checkpoints/last.ckpt output=m32.pt "
              "dtype=float32",
              "forcefield export checkpoint=runs/x/model.pt output=model.pt2 format=pt2",
              "forcefield export checkpoint=runs/x/model.pt output=lammps.pt2 format=pt2 "
              "target=local",
              "forcefield export checkpoint=eq2_83M_2M.pt output=eqv2.pt source=fairchem"),
)

main = COMMAND.main

if __name__ == "__main__":
    raise SystemExit(main())
