"""DDP on 2 CPU processes (gloo): training runs, the final test after fit works, only
rank 0 writes, and the test metrics equal a single-process evaluation of the same model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from forcefield.cli import evaluate as evaluate_cli

TINY = [
    "data.train_size=10",
    "data.valid_size=5",
    "data.test_limit=5",  # odd: the ranks get 3 and 2 structures, nothing is repeated
    "data.stats_cache=false",
    "model.channels=8",
    "model.radial_mlp=[8]",
]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "forcefield", "train", "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.max_epochs=1", *TINY, f"output_dir={out}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Test errors") == 1  # printed by rank 0 only
    files = sorted(p.name for p in out.iterdir())
    assert files == ["checkpoints", "config.yaml", "metrics.csv", "metrics.json", "model.pt",
                     "parity_energy.png", "parity_forces.png", "statistics.json"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    ddp = json.loads((out / "metrics.json").read_text())["test"]

    single = tmp_path / "single"
    assert evaluate_cli.main([f"model={out / 'checkpoints' / 'best.ckpt'}", "data.test_limit=5",
                              "predictions=false", f"output_dir={single}"]) == 0
    ref = json.loads((single / "metrics.json").read_text())["test"]
    assert set(ddp) == set(ref) == {"300K", "600K"}
    for split, metrics in ref.items():
        assert ddp[split]["n_structures"] == metrics["n_structures"] == 5
        for key, value in metrics.items():
            assert ddp[split][key] == pytest.approx(value, rel=1e-9, abs=1e-9), (split, key)
