"""``forcefield train``: see ``forcefield train --help`` (logic in forcefield.training)."""

from __future__ import annotations

from forcefield.training.commands import train_main


def main(argv: list[str] | None = None) -> int:
    """Run ``forcefield train`` with Hydra-style overrides; return the exit code."""
    return train_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
