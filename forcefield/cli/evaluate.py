"""``forcefield evaluate``: see ``forcefield evaluate --help`` (logic in forcefield.training)."""

from __future__ import annotations

from forcefield.training.commands import evaluate_main


def main(argv: list[str] | None = None) -> int:
    """Run ``forcefield evaluate`` with Hydra-style overrides; return the exit code."""
    return evaluate_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
