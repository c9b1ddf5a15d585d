"""A regular (non-editable) `pip install .` finds its configs and data outside the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_regular_install_runs_outside_the_repository(repo_root, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        repo_root, src, symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "build", "runs",
                                      "outputs", "*.egg-info", ".pytest_cache", "tests",
                                      "*.so"),
    )
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert (site / "forcefield" / "conf" / "train.yaml").is_file()
    assert not (site / "forcefield" / "conf").is_symlink()
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "import forcefield.cli.compose as c; print(c.CONFIG_DIR)"],
        capture_output=True, text=True, env=env, cwd=work, check=True,
    )
    assert probe.stdout.strip() == str(site / "forcefield" / "conf")
    kernel = subprocess.run(  # the operator library was built into the install
        [sys.executable, "-c", "from forcefield import ops; print(ops.library_path())"],
        capture_output=True, text=True, env=env, cwd=work, check=True,
    )
    assert kernel.stdout.strip().startswith(str(site / "forcefield" / "ops" / "_C"))
    out = work / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "forcefield", "train", "model.channels=8", "model.radial_mlp=[8]",
         "data.train_size=5", "data.valid_size=5", "data.test_limit=2", "data.stats_cache=false",
         "trainer.max_epochs=1", "export.enabled=false", f"output_dir={out}"],
        capture_output=True, text=True, env=env, cwd=work, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "metrics.json").is_file()
