"""``import forcefield`` before torch shortens libgomp's spin-wait (see forcefield/__init__.py),
keeps a value the user set, and changes nothing once torch is loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = "import os; {imports}; print(os.environ.get('GOMP_SPINCOUNT', 'unset'))"


def spin_count(imports: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | env
    out = subprocess.run([sys.executable, "-c", CHECK.format(imports=imports)], env=environ,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize(("imports", "env", "expected"), [
    ("import forcefield; import torch", {}, "10000"),
    ("import forcefield.models", {}, "10000"),  # the package runs first for any submodule
    ("import forcefield", {"GOMP_SPINCOUNT": "0"}, "0"),  # the user's value wins
    ("import torch; import forcefield", {}, "unset"),  # too late: libgomp already read it
])
def test_spin_count_default(imports: str, env: dict, expected: str) -> None:
    assert spin_count(imports, **env) == expected
