"""``forcefield export``: see ``forcefield export --help`` (logic in forcefield.training)."""

from __future__ import annotations

from forcefield.training.commands import export_main


def main(argv: list[str] | None = None) -> int:
    """Run ``forcefield export`` with Hydra-style overrides; return the exit code."""
    return export_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
