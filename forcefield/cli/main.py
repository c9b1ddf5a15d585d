"""The ``forcefield`` program: dispatch ``forcefield <subcommand> [overrides]``.

Each subcommand is one module of ``forcefield.cli`` holding a
:class:`~forcefield.cli.command.Command` (its config is ``conf/<subcommand>.yaml``) and
``main(argv: list[str]) -> int``; modules are imported only when their subcommand runs, so
``forcefield --help`` is instant.
"""

from __future__ import annotations

import sys
from importlib import import_module

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("forcefield.cli.train",
              "train a potential (Hydra overrides: data=..., model=..., trainer=...)"),
    "evaluate": ("forcefield.cli.evaluate",
                 "evaluate a model.pt or checkpoint on test data, write metrics.json"),
    "export": ("forcefield.cli.export", "turn a Lightning checkpoint into a deployable model.pt"),
    "relax": ("forcefield.cli.relax",
              "relax structures (FIRE/BFGS/LBFGS, fixed atoms, cell) with a trained model"),
    "md": ("forcefield.cli.md", "run molecular dynamics with a trained model through ASE"),
    "select": ("forcefield.cli.select",
               "rank structures by committee disagreement: which ones to label next"),
    "lammps": ("forcefield.cli.lammps",
               "build the LAMMPS plugin (pair_style forcefield); prints its path last"),
    "convert": ("forcefield.cli.convert",
                "write sharded .aselmdb + metadata.npz (or one ASE db) from any data source"),
}


def usage() -> str:
    """The top-level help text."""
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        "usage: forcefield <command> [key=value ...]",
        "",
        "Equivariant interatomic potentials built on the Gaunt tensor product.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += [
        "",
        "Run 'forcefield <command> --help' for the options of one command.",
        "Example: forcefield train model.channels=64 trainer.max_epochs=20",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from forcefield import __version__

        print(f"forcefield {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"forcefield: unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    from forcefield.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    module = import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
