"""The comparison benchmarks run from a fresh clone: their mace-torch workers need only the
mace environment that ``scripts/setup_mace_env.sh`` creates.

On a fresh machine that environment has mace-torch's dependencies and nothing of ours:
a worker that imports ``forcefield`` (whose dependencies, PyG and Lightning, are not
there) or ``torch_geometric`` fails in every run. Each worker here runs one tiny
measurement with both imports blocked. The environment itself is installed from the
package registry, so the test uses one that exists (``.venv-mace``, or the interpreter in
``FORCEFIELD_MACE_PYTHON``) and is skipped otherwise: tests never download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MACE_PY = Path(os.environ.get("FORCEFIELD_MACE_PYTHON", ROOT / ".venv-mace" / "bin" / "python"))

BLOCKER = '''
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    """What a fresh mace environment lacks: any import of these fails."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("forcefield", "torch_geometric", "lightning"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _Blocked())
'''

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MACE_PY.is_file(),
                       reason=f"no mace-torch environment at {MACE_PY} "
                              "(create it with: bash scripts/setup_mace_env.sh)"),
]


def _env(tmp_path: Path) -> dict[str, str]:
    """The workers' environment with the blocker installed as sitecustomize."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def _preset(name: str) -> str:
    from forcefield.models import PRESETS

    return json.dumps(PRESETS[name])


def test_setup_scripts_import_check(tmp_path):
    """The import check that ends scripts/setup_mace_env.sh, with our packages blocked."""
    proc = subprocess.run(
        [str(MACE_PY), "-c", "import mace, e3nn, e3nn.o3, mace.modules; print('ok')"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_bench_model_mace_worker_needs_no_forcefield(tmp_path):
    proc = subprocess.run(
        [str(MACE_PY), str(ROOT / "scripts" / "bench_model.py"), "--worker", "mace",
         "--preset", "gaunt_mace_small", "--preset-json", _preset("gaunt_mace_small"),
         "--mode", "infer", "--batch-size", "1", "--num-batches", "1", "--steps", "1",
         "--threads", "1", "--device", "cpu", "--dtype", "float32"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model"] == "mace" and result["steps_per_s"] > 0 and result["params"] > 0


def test_bench_md_mace_worker_needs_no_forcefield(tmp_path):
    from ase.io import write

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_md
    finally:
        sys.path.pop(0)
    structure = tmp_path / "molecule.xyz"
    write(structure, bench_md.molecule())
    proc = subprocess.run(
        [str(MACE_PY), str(ROOT / "scripts" / "bench_md.py"), "--worker", "mace",
         "--preset", "gaunt_mace_small", "--preset-json", _preset("gaunt_mace_small"),
         "--structure", str(structure), "--threads", "1", "--dtype", "float64",
         "--device", "cpu", "--steps", "2", "--warmup", "1", "--max-seconds", "10"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["impl"] == "mace-torch" and result["natoms"] == 27
    assert result["steps"] == 2 and result["steps_per_second"] > 0
