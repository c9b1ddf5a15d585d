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
