"""Loggers and callbacks from the config: metrics.csv + tensorboard, early stopping,
missing optional loggers as one sentence, wandb offline and mlflow where installed."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
from collections import defaultdict
from pathlib import Path

import pytest

from forcefield.cli import train as train_cli

TINY = [
    "data.train_size=6",
    "data.valid_size=4",
    "data.test_limit=3",
    "data.stats_cache=false",
    "model.channels=8",
    "model.radial_mlp=[8]",
    "model.num_interactions=1",
    "trainer.max_time=null",
    "trainer.log_every_n_steps=1",
]
QUICK = ["test.enabled=false", "export.enabled=false"]


def read_tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file under ``folder``: tag -> [(step, value)]."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {folder}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):  # TFRecord: length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            payload = data[pos + 12:pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars[value.tag].append((int(event.step), float(value.simple_value)))
    return dict(scalars)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


HAS_TB = any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))


@pytest.mark.skipif(not HAS_TB, reason="needs tensorboardX or tensorboard "
                    "(pip install 'forcefield[tensorboard]')")
def test_csv_and_tensorboard_get_every_metric(tmp_path):
    out = tmp_path / "run"
    assert train_cli.main([*TINY, "trainer.max_epochs=2", "export.enabled=false",
                           "logger=[csv,tensorboard]", f"output_dir={out}"]) == 0
    rows = _csv_rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    header = list(rows[0])
    assert header[:3] == ["epoch", "step", "train_loss"]
    for key in ("val_loss", "val_forces_rmse_meV_A", "val_energy_rmse_meV", "lr", "stage",
                "epoch_time_s", "train_forces_rmse_meV_A"):
        assert key in header, key
    scalars = read_tensorboard_scalars(out / "tensorboard")
    # every column of metrics.csv, at the same step, with the same value (float32 in events)
    for key in header:
        if key in ("epoch", "step"):
            continue
        points = scalars[key]
        assert [s for s, _ in points] == [int(r["step"]) for r in rows], key
        for (_, value), row in zip(points, rows, strict=True):
            assert value == pytest.approx(float(row[key]), rel=1e-6, abs=1e-7), key
    assert len(scalars["loss"]) == int(rows[-1]["step"])  # per-step training loss
    test = json.loads((out / "metrics.json").read_text())["test"]
    for split, metrics in test.items():
        for key, value in metrics.items():
            (step, logged), = scalars[f"test/{split}/{key}"]
            assert logged == pytest.approx(value, rel=1e-6), (split, key)
    assert not (out / "lightning_logs").exists()


def test_early_stopping_from_the_config_stops_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    # min_delta so large that no epoch after the first counts as an improvement
    assert train_cli.main([*TINY, *QUICK, "trainer.max_epochs=6", "callbacks=early_stopping",
                           "callbacks.early_stopping.monitor=val_forces_rmse_meV_A",
                           "callbacks.early_stopping.patience=1",
                           "callbacks.early_stopping.min_delta=1e9",
                           f"output_dir={out}"]) == 0
    rows = _csv_rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]  # stopped at epoch 1 of 6


def test_user_callback_by_target_and_lr_monitor(tmp_path):
    out = tmp_path / "run"
    assert train_cli.main([*TINY, *QUICK, "trainer.max_epochs=1",
                           "callbacks=[lr_monitor]",
                           "+callbacks.timer._target_=lightning.pytorch.callbacks.Timer",
                           f"output_dir={out}"]) == 0
    assert len(_csv_rows(out / "metrics.csv")) == 1


@pytest.mark.parametrize("logger, extra", [("tensorboard", "tensorboard"), ("wandb", "wandb"),
                                           ("mlflow", "mlflow")])
def test_missing_optional_logger_is_one_sentence(logger, extra, tmp_path, capsys, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    code = train_cli.main([*TINY, f"logger=[csv,{logger}]", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"logger={logger} needs the optional package" in err
    assert f"pip install 'forcefield[{extra}]'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["+callbacks.bad.patience=3"], "callbacks.bad has no _target_"),
    (["+callbacks.bad._target_=lightning.pytorch.callbacks.EarlyStopping",
      "+callbacks.bad.patiense=3"], "callbacks.bad (lightning.pytorch.callbacks.EarlyStopping)"),
    (["+logger.x._target_=lightning.pytorch.callbacks.Timer"], "is not a Lightning logger"),
])
def test_bad_logger_or_callback_config(args, message, tmp_path, capsys):
    code = train_cli.main([*TINY, *args, f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_wandb_offline(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'forcefield[wandb]')")
    out = tmp_path / "run"
    assert train_cli.main([*TINY, *QUICK, "trainer.max_epochs=1", "logger=[csv,wandb]",
                           f"output_dir={out}"]) == 0
    assert list((out / "wandb").glob("offline-run-*"))


def test_mlflow_file_store(tmp_path):
    pytest.importorskip("mlflow",
                        reason="mlflow is not installed (pip install 'forcefield[mlflow]')")
    out = tmp_path / "run"
    assert train_cli.main([*TINY, *QUICK, "trainer.max_epochs=1", "logger=[csv,mlflow]",
                           f"output_dir={out}"]) == 0
    metrics = list((out / "mlruns").rglob("metrics/val_forces_rmse_meV_A"))
    assert len(metrics) == 1


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TB, reason="needs tensorboardX or tensorboard")
def test_ddp_two_processes_write_one_set_of_logs(tmp_path):
    """DDP on 2 CPU processes: rank 0 alone writes metrics.csv and the events, one point
    per epoch and metric (no second copy from rank 1)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "forcefield", "train", "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.max_epochs=2", *TINY, "export.enabled=false",
         "logger=[csv,tensorboard]", f"output_dir={out}"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _csv_rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    scalars = read_tensorboard_scalars(out / "tensorboard")
    for key in ("val_loss", "val_forces_rmse_meV_A", "lr", "epoch_time_s", "train_loss"):
        assert [s for s, _ in scalars[key]] == [int(r["step"]) for r in rows], key
        for (_, value), row in zip(scalars[key], rows, strict=True):
            assert value == pytest.approx(float(row[key]), rel=1e-6), key
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert len(scalars["test/300K/forces_rmse_meV_A"]) == 1
    assert scalars["test/300K/forces_rmse_meV_A"][0][1] == pytest.approx(
        test["300K"]["forces_rmse_meV_A"], rel=1e-6)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.yaml", "metrics.csv", "metrics.json", "parity_energy.png",
        "parity_forces.png", "statistics.json", "tensorboard"]


CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("group, name", [(g, p.stem) for g in ("logger", "callbacks")
                                         for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_logger_and_callback_config_instantiates(group, name, tmp_path):
    from forcefield.cli.compose import compose_config
    from forcefield.training.loggers import OPTIONAL, build_callbacks, build_loggers

    cfg = compose_config("train", [f"{group}={name}", f"output_dir={tmp_path}"])
    entries = cfg[group] or {}
    for entry in entries.values():
        modules, _ = OPTIONAL.get(entry["_target_"].rsplit(".", 1)[-1], ((), None))
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            pytest.skip(f"{modules[0]} is not installed")
    built = build_loggers(cfg.logger) if group == "logger" else build_callbacks(cfg.callbacks)
    assert len(built) == len(entries)
    if group == "logger" and name == "csv":
        assert built[0].path == tmp_path / "metrics.csv"
