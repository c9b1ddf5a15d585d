"""Where the embedded datasets live (works for editable and regular installs)."""

from __future__ import annotations

from pathlib import Path


def embedded_data_dir() -> Path:
    """The project's embedded ``data/`` folder.

    Looks for the packaged ``forcefield/_embedded_data`` (a symlink to ``../data`` in the
    repository, copied as package data in a wheel) via ``importlib.resources``, then falls
    back to the repository's ``data/`` folder.
    """
    candidates = []
    try:
        from importlib.resources import files

        candidates.append(Path(str(files("forcefield") / "_embedded_data")))
    except (ImportError, ModuleNotFoundError, TypeError):  # pragma: no cover
        pass
    import forcefield

    pkg = Path(forcefield.__file__).resolve().parent
    candidates += [pkg / "_embedded_data", pkg.parent / "data"]
    for c in candidates:
        if (c / "3bpa").is_dir() or (c / "oc20").is_dir():
            return c
    return candidates[-1]


def embedded_3bpa_dir() -> Path:
    """Embedded 3BPA folder (train_300K, train_mixedT, iso_atoms, test splits)."""
    return embedded_data_dir() / "3bpa"


def embedded_oc20_dir() -> Path:
    """Embedded OC20 sample folder (two real DFT frames in every format)."""
    return embedded_data_dir() / "oc20"
