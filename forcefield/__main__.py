"""``python -m forcefield`` runs the same program as the ``forcefield`` console script."""

from forcefield.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
