"""GauntEquiformerV2 end to end: `forcefield train model=gaunt_equiformer_v2_small` (shrunk),
export, evaluate, the ASE calculator and `forcefield md`, and a direct-force OC20-loss run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from forcefield.cli import evaluate as evaluate_cli
from forcefield.cli import export as export_cli
from forcefield.cli import train as train_cli

TINY_EQ = [
    "model=gaunt_equiformer_v2_small",
    "data.train_size=10",
    "data.valid_size=5",
    "data.test_limit=5",
    "data.stats_cache=false",
    "model.channels=8",
    "model.num_layers=1",
    "model.lmax=2",
    "model.mmax=1",
    "model.heads=2",
    "model.attn_hidden=8",
    "model.alpha_channels=4",
    "model.value_channels=4",
    "model.ffn_hidden=8",
    "model.edge_channels=8",
    "model.num_radial=8",
    "model.r_max=4.0",
    "trainer.max_epochs=1",
    "trainer.max_time=null",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real `forcefield train` in a subprocess, as a user runs it."""
    out = tmp_path_factory.mktemp("eqv2") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "forcefield", "train", *TINY_EQ, f"output_dir={out}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Test errors" in proc.stdout
    return out


def test_run_directory_records_the_architecture(run_dir):
    import yaml

    for name in ("config.yaml", "metrics.json", "model.pt", "checkpoints/best.ckpt"):
        assert (run_dir / name).is_file(), name
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["architecture"] == "gaunt_equiformer_v2"
    assert cfg["model"]["forces"] == "gradient" and cfg["model"]["selfmix"] is True
    assert cfg["model"]["species"] == [1, 6, 7, 8] and cfg["model"]["avg_num_neighbors"] > 1
    ckpt = torch.load(run_dir / "checkpoints/best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model_class"] == "GauntEquiformerV2"


def test_evaluate_model_and_checkpoint_reproduce_the_training_test(run_dir, tmp_path):
    train_metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    for source in ("model.pt", "checkpoints/best.ckpt"):
        out = tmp_path / source.replace("/", "_")
        assert evaluate_cli.main([f"model={run_dir / source}", "data.test_limit=5",
                                  f"output_dir={out}"]) == 0
        got = json.loads((out / "metrics.json").read_text())["test"]
        for split in ("300K", "600K"):
            for key in ("energy_rmse_meV", "forces_rmse_meV_A"):
                assert got[split][key] == pytest.approx(train_metrics[split][key], rel=1e-6)


def test_export_and_calculator(run_dir, repo_data, tmp_path):
    from ase.io import read

    from forcefield.calculator import ForceFieldCalculator
    from forcefield.export import load_model
    from forcefield.models import GauntEquiformerV2

    dest = tmp_path / "exported.pt"
    assert export_cli.main([f"checkpoint={run_dir / 'checkpoints/best.ckpt'}",
                            f"output={dest}", "dtype=float32"]) == 0
    model = load_model(dest)
    assert isinstance(model, GauntEquiformerV2) and model.dtype == torch.float32
    atoms = read(repo_data / "3bpa" / "train_300K.xyz", index=0)
    atoms.calc = ForceFieldCalculator(run_dir / "model.pt", dtype="float64")
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert np.isfinite(energy) and forces.shape == (27, 3)
    # conservative: the forces are minus the energy's finite differences
    h = 1e-4
    for i, k in [(0, 0), (5, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        plus.calc = minus.calc = atoms.calc
        fd = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert fd == pytest.approx(forces[i, k], abs=1e-6)


def test_cli_md_with_the_equiformer(run_dir, repo_data, tmp_path, capsys):
    from forcefield.cli.main import main

    out = tmp_path / "md"
    code = main(["md", f"model={run_dir / 'model.pt'}",
                 f"structure={repo_data / '3bpa' / 'train_300K.xyz'}", "ensemble=nve",
                 "temperature_K=300", "timestep_fs=0.5", "steps=8", f"output_dir={out}",
                 "log_interval=4", "seed=1", "progress=false"])
    assert code == 0
    summary = json.loads((out / "md_summary.json").read_text())
    assert summary["steps"] == 8 and summary["max_energy_drift_meV_per_atom"] < 5.0


def test_direct_forces_train_with_the_oc20_loss(tmp_path):
    """model.forces=direct with 2 MAE(E) + 100 L2MAE(F) on total energies: one epoch runs,
    and the checkpoint's weights load into a gradient-force model (the head is dropped)."""
    from forcefield.models import build_model
    from forcefield.training.module import load_checkpoint

    out = tmp_path / "direct"
    assert train_cli.main([*TINY_EQ, "model.forces=direct", "test.enabled=false",
                           "export.enabled=false", "training.loss.energy_weight=2.0",
                           "training.loss.forces_weight=100.0",
                           "training.loss.energy_kind=mae", "training.loss.forces_kind=l2mae",
                           "training.loss.energy_per_atom=false",
                           "training.loss.normalizer=2.8873", f"output_dir={out}"]) == 0
    raw = load_checkpoint(out / "checkpoints" / "last.ckpt")
    config = dict(raw["hyper_parameters"]["model_config"], forces="gradient")
    model = build_model(config).double()
    prefix = "ema.module."
    weights = {k[len(prefix):]: v for k, v in raw["state_dict"].items() if k.startswith(prefix)}
    assert any(k.startswith("force_head.") for k in weights)
    model.load_state_dict(weights)  # strict
    assert model.force_head is None
