"""Fixtures shared by every test module."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def repo_data() -> Path:
    """The embedded datasets shipped with the project (data/)."""
    return REPO_ROOT / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data beside the checkout (../shared/data); skip if absent."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return path


@pytest.fixture(scope="session")
def slab_model():
    """The trained tiny GauntMACE with helpers.SLAB_SPECIES (float64, eval), shared by the modules
    that compare a package or another engine with it (one training per session)."""
    from helpers import SLAB_SPECIES, trained_tiny_model

    return trained_tiny_model(SLAB_SPECIES)


@pytest.fixture(scope="session")
def slab_package(slab_model, tmp_path_factory) -> Path:
    """``slab_model`` as a float64 ``.pt2`` package (an AOTInductor build: about a minute,
    so once per session for every module that needs one)."""
    from forcefield.pt2 import export_pt2

    return export_pt2(slab_model, tmp_path_factory.mktemp("slab_pt2") / "tiny_float64.pt2")
