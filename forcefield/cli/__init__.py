"""Thin command-line entry points (one program, Hydra overrides after the subcommand)."""
