"""`forcefield train / evaluate / export` end to end on a tiny 3BPA subset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forcefield.cli import evaluate as evaluate_cli
from forcefield.cli import export as export_cli
from forcefield.cli import train as train_cli

TINY = [
    "data.train_size=10",
    "data.valid_size=5",
    "data.test_limit=5",
    "data.stats_cache=false",
    "model.channels=8",
    "model.radial_mlp=[8]",
    "trainer.max_epochs=1",
    "trainer.max_time=null",
]
QUICK = ["test.enabled=false", "export.enabled=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real `forcefield train` in a subprocess (as a user runs it)."""
    out = tmp_path_factory.mktemp("train") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "forcefield", "train", *TINY, f"output_dir={out}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Test errors" in proc.stdout and str(out) in proc.stdout
    assert "Epoch 0" in proc.stdout + proc.stderr  # the TQDM progress bar
    return out


def test_run_directory_is_complete(run_dir):
    for name in ("config.yaml", "metrics.csv", "metrics.json", "parity_energy.png",
                 "parity_forces.png", "model.pt", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*tmp*")) and not list(run_dir.glob("checkpoints/.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"300K", "600K"}
    for split in metrics["test"].values():
        for key in ("energy_rmse_meV", "energy_mae_meV", "energy_per_atom_rmse_meV",
                    "forces_rmse_meV_A", "forces_mae_meV_A", "n_structures"):
            assert key in split
        assert split["n_structures"] == 5
    csv = (run_dir / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,") and "val_forces_rmse_meV_A" in csv[0]
    assert len(csv) == 2
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["species"] == [1, 6, 7, 8]  # statistics flowed into the model
    assert cfg["model"]["avg_num_neighbors"] > 1
    assert cfg["output_dir"] == str(run_dir)


def test_model_pt_loads_and_predicts(run_dir):
    from forcefield.export import load_model

    model = load_model(run_dir / "model.pt")
    assert model.config["channels"] == 8
    assert next(model.parameters()).dtype == torch.float64


def test_evaluate_model_and_checkpoint(run_dir, tmp_path, capsys):
    train_metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    for source in ("model.pt", "checkpoints/best.ckpt"):
        out = tmp_path / source.replace("/", "_")
        rc = evaluate_cli.main([f"model={run_dir / source}", "data.test_limit=5",
                                f"output_dir={out}"])
        assert rc == 0
        got = json.loads((out / "metrics.json").read_text())["test"]
        for split in ("300K", "600K"):
            for key in ("energy_rmse_meV", "forces_rmse_meV_A"):
                assert got[split][key] == pytest.approx(train_metrics[split][key], rel=1e-6)
        assert (out / "parity_energy.png").is_file() and (out / "parity_forces.png").is_file()
        from ase.io import read

        frames = read(out / "predictions_300K.extxyz", ":")
        assert len(frames) == 5 and "ref_energy" in frames[0].info
        assert frames[0].get_forces().shape == (27, 3)
    assert "300K" in capsys.readouterr().out


def test_export_checkpoint(run_dir, tmp_path):
    from forcefield.export import load_model

    dest = tmp_path / "exported.pt"
    assert export_cli.main([f"checkpoint={run_dir / 'checkpoints/best.ckpt'}",
                            f"output={dest}", "dtype=float32"]) == 0
    model = load_model(dest)
    assert next(model.parameters()).dtype == torch.float32
    ref = load_model(run_dir / "model.pt")
    for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(),
                                 strict=True):
        if a.is_floating_point():
            assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-7), name


def _last_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("scheduler", ["plateau", "cosine"])
def test_resume_is_exact(tmp_path, scheduler):
    # stage two starts at epoch 1, inside the resumed part; the cosine length is fixed
    # explicitly (by default it follows trainer.max_epochs, which differs between the runs)
    plateau = [f"training.scheduler.name={scheduler}", "training.scheduler.patience=0",
               "training.scheduler.total_steps=6", "training.stage_two.start_epoch=1"]
    straight = tmp_path / "straight"
    assert train_cli.main([*TINY, *QUICK, *plateau, "trainer.max_epochs=3",
                           f"output_dir={straight}"]) == 0
    split = tmp_path / "split"
    assert train_cli.main([*TINY, *QUICK, *plateau, "trainer.max_epochs=1",
                           f"output_dir={split}"]) == 0
    assert train_cli.main([f"ckpt_path={split / 'checkpoints/last.ckpt'}",
                           "trainer.max_epochs=3"]) == 0
    a, b = _last_state(straight), _last_state(split)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    assert a["stage_two_active"] and b["stage_two_active"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # model and EMA weights
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for key in opt_a:
        assert torch.equal(opt_a[key]["exp_avg"], opt_b[key]["exp_avg"])
    if scheduler == "plateau":
        assert a["plateau_scheduler"] == b["plateau_scheduler"]
        assert a["plateau_scheduler"]["last_epoch"] == 3
    lr = a["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == b["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr <= 0.001 if scheduler == "plateau" else lr == pytest.approx(0.001)
    rows = (split / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4  # header + epochs 0, 1 (stage two from here), 2
    stage = rows[0].split(",").index("stage")
    assert [r.split(",")[stage] for r in rows[1:]] == ["1", "2", "2"]
    assert rows[1:] == (straight / "metrics.csv").read_text().splitlines()[1:] or all(
        row.split(",")[:4] == ref.split(",")[:4]
        for row, ref in zip(rows[1:], (straight / "metrics.csv").read_text().splitlines()[1:],
                            strict=True))
    # a fresh run into a used directory is refused with the resume hint
    assert train_cli.main([*TINY, *QUICK, f"output_dir={split}"]) == 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import forcefield.training.module as module

    real = module.compute_loss
    calls = {"n": 0}

    def poisoned(batch, pred, cfg, **kwargs):
        loss, terms = real(batch, pred, cfg, **kwargs)
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 0 (2 steps) is fine, epoch 1 diverges
            loss = loss * float("nan")
        return loss, terms

    monkeypatch.setattr(module, "compute_loss", poisoned)
    out = tmp_path / "nan"
    rc = train_cli.main([*TINY, *QUICK, "trainer.max_epochs=3", f"output_dir={out}"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "nan" in err.lower() and "last.ckpt" in err
    state = _last_state(out)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values()
               if v.is_floating_point())


def test_interrupt_leaves_resumable_checkpoint(tmp_path, monkeypatch, capsys):
    import forcefield.training.module as module

    real = module.ForceFieldModule.training_step

    def interrupted(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return real(self, batch, batch_idx)

    monkeypatch.setattr(module.ForceFieldModule, "training_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "ctrlc"
    try:
        rc = train_cli.main([*TINY, *QUICK, "trainer.max_epochs=3", f"output_dir={out}"])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after Ctrl-C
    assert rc == 130
    assert "ckpt_path=" in capsys.readouterr().err
    monkeypatch.setattr(module.ForceFieldModule, "training_step", real)
    assert train_cli.main([f"ckpt_path={out / 'checkpoints/last.ckpt'}"]) == 0
    assert _last_state(out)["epoch"] == 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["model.chanels=4"], "chanels"),
        (["data.root=/no/such/dir"], "/no/such/dir"),
        (["ckpt_path=/no/such.ckpt"], "/no/such.ckpt"),
        (["dtype=float16"], "float16"),
        (["trainer.inference_mode=true"], "inference_mode"),
    ],
)
def test_train_user_errors(args, needle, capsys, tmp_path):
    rc = train_cli.main([*args, f"output_dir={tmp_path / 'x'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_evaluate_and_export_user_errors(capsys, tmp_path):
    assert evaluate_cli.main(["model=/no/model.pt"]) == 2
    assert "/no/model.pt" in capsys.readouterr().err
    assert evaluate_cli.main([]) == 2
    assert "missing model=" in capsys.readouterr().err
    assert export_cli.main(["checkpoint=/no/x.ckpt", f"output={tmp_path}/m.pt"]) == 2
    assert "/no/x.ckpt" in capsys.readouterr().err
    assert export_cli.main(["checkpoint=x.ckpt"]) == 2
    assert "output" in capsys.readouterr().err
    assert train_cli.main(["--help"]) == 0
    assert "experiment" in capsys.readouterr().out


def test_resume_from_a_checkpoint_without_some_weights_is_a_clear_error(tmp_path, capsys,
                                                                        monkeypatch):
    """A checkpoint of an older model (here: one parameter removed) cannot be resumed: one
    sentence names the missing weights and what to do instead, nothing is written."""
    run = tmp_path / "old"
    assert train_cli.main([*TINY, *QUICK, "trainer.max_epochs=1", f"output_dir={run}"]) == 0
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    removed = [k for k in state["state_dict"] if k.endswith("element_shift")]
    assert removed
    for key in removed:
        del state["state_dict"][key]
    torch.save(state, last)
    before = (run / "metrics.csv").read_text()
    import logging

    # library log handlers keep the stderr of whichever test created them (a closed capture
    # by now): point them at this test's stderr so their messages are not "logging errors"
    loggers = [logging.getLogger(), *(logging.getLogger(name)
                                      for name in logging.root.manager.loggerDict)]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if type(handler) is logging.StreamHandler:
            monkeypatch.setattr(handler, "stream", sys.stderr)
    capsys.readouterr()
    assert train_cli.main([f"ckpt_path={last}", "trainer.max_epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "element_shift" in err and "cannot be resumed" in err and "Traceback" not in err
    assert (run / "metrics.csv").read_text() == before


def test_unknown_element_in_test_data_is_a_clear_error(run_dir, tmp_path, capsys):
    """The 3BPA model (H, C, N, O) evaluated on copper: one sentence naming the split and
    the element, no traceback and no metrics written."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    copper = bulk("Cu", cubic=True)
    copper.rattle(0.05, seed=0)
    copper.calc = EMT()
    copper.get_forces()
    write(tmp_path / "cu.xyz", copper)
    out = tmp_path / "eval"
    rc = evaluate_cli.main([f"model={run_dir / 'model.pt'}", "data=ase",
                            f"data.test={{copper: {tmp_path / 'cu.xyz'}}}", f"output_dir={out}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'copper'" in err and "Cu (Z=29)" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists()


def test_time_limited_run_fits_its_schedule_to_the_time(tmp_path, monkeypatch):
    """With only trainer.max_time (no epoch limit) the cosine decay and stage two follow the
    time actually available. The Timer's clock is a fake one that advances 1 s per training
    step (2 steps per epoch here), so the schedule is exact: after the first epoch the pace
    says 20 steps fit in the 20 s budget and the cosine decays over those; stage two starts
    at the first epoch after 75 % of the time with its constant lr; the fit stops at the
    epoch boundary after which another epoch would not fit (18 s)."""
    import csv
    import math
    import types

    from lightning.pytorch.callbacks import timer as timer_module

    from forcefield.training.module import ForceFieldModule

    clock = [0.0]
    monkeypatch.setattr(timer_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    step = ForceFieldModule.training_step

    def timed_step(self, batch, batch_idx):
        clock[0] += 1.0
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ForceFieldModule, "training_step", timed_step)
    out = tmp_path / "timed"
    args = [a for a in TINY if not a.startswith("trainer.max_")]
    assert train_cli.main([*args, *QUICK, "trainer.max_epochs=null",
                           "trainer.max_time=00:00:00:20", "trainer.enable_progress_bar=false",
                           f"output_dir={out}"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert [r["stage"] for r in rows] == ["1"] * 8 + ["2"]

    def cosine(s: int) -> float:  # the default: peak 0.01, down to 1 % over 20 steps
        return 0.01 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / 20))))

    # the lr logged at an epoch end is the one of the next step; epoch 0 holds the peak
    assert float(rows[0]["lr"]) == pytest.approx(0.01)
    for r in rows[1:8]:
        assert float(r["lr"]) == pytest.approx(cosine(int(r["step"]))), r["epoch"]
    assert float(rows[8]["lr"]) == pytest.approx(0.001)
