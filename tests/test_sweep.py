"""`forcefield train -m`: a Hydra multirun sweep writes one complete run per job and a
summary of the jobs' test metrics."""

from __future__ import annotations

import json

import pytest

from forcefield.cli import train as train_cli
from forcefield.optional import installed

TINY = ["data.train_size=6", "data.valid_size=4", "data.test_limit=3", "data.stats_cache=false",
        "model.channels=8", "model.radial_mlp=[8]", "model.num_interactions=1",
        "trainer.max_epochs=1", "trainer.max_time=null", "test.predictions=false"]


@pytest.mark.slow
def test_two_job_sweep(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert train_cli.main(["-m", "seed=0,1", *TINY, f"output_dir={sweep}"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [job["overrides"][0] for job in summary["jobs"]] == ["seed=0", "seed=1"]
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["0_seed=0", "1_seed=1"]
    for job, name in zip(summary["jobs"], runs, strict=True):
        run = sweep / name
        assert job["returncode"] == 0 and job["output_dir"] == str(run)
        for f in ("config.yaml", "metrics.csv", "metrics.json", "model.pt",
                  "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
            assert (run / f).is_file(), (name, f)
        assert f"seed: {job['job']}" in (run / "config.yaml").read_text()
        metrics = json.loads((run / "metrics.json").read_text())
        assert job["test"] == metrics["test"] and set(job["test"]) == {"300K", "600K"}
    a, b = (job["test"]["300K"]["forces_rmse_meV_A"] for job in summary["jobs"])
    assert a != b  # different seeds, different models
    table = out[out.index("job  split"):]
    assert f"{a:.2f}" in table and f"{b:.2f}" in table and "seed=1" in table


@pytest.mark.parametrize("args, message", [
    (["model.chanels=4,8"], "chanels"),
    (["ckpt_path=a.ckpt,b.ckpt"], "ckpt_path cannot be swept"),
])
def test_sweep_errors_before_any_job_runs(args, message, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert train_cli.main(["-m", "seed=0,1", *args, f"output_dir={sweep}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not sweep.exists()


def test_sweep_cfg_prints_every_job(tmp_path, capsys):
    assert train_cli.main(["-m", "--cfg", "seed=3,4", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "# job 0: seed=3" in out and "# job 1: seed=4" in out and "seed: 4" in out
    assert not list(tmp_path.iterdir())


# ------------------------------------------------- Hydra's sweeper and launcher plugins
NO_OPTUNA = "hydra-optuna-sweeper is not installed (pip install 'forcefield[sweep]')"
NO_SUBMITIT = "hydra-submitit-launcher is not installed (pip install 'forcefield[sweep]')"
TINY_FREE = [o for o in TINY if not o.startswith("model.channels")]  # channels are swept


def _complete(run) -> dict:
    for f in ("config.yaml", "metrics.csv", "metrics.json", "model.pt",
              "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / f).is_file(), (run, f)
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.skipif(not installed("hydra_plugins.hydra_optuna_sweeper"), reason=NO_OPTUNA)
def test_optuna_sweep_minimises_the_objective(tmp_path, capsys):
    import yaml

    sweep = tmp_path / "optuna"
    assert train_cli.main(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                           "hydra.sweeper.sampler.seed=1", "model.channels=int(interval(6,12))",
                           *TINY_FREE, f"output_dir={sweep}"]) == 0
    out = capsys.readouterr().out
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0", "1"]
    objective = {}
    for run in runs:
        metrics = _complete(run)
        channels = yaml.safe_load((run / "config.yaml").read_text())["model"]["channels"]
        assert 6 <= channels <= 12
        objective[channels] = metrics["val_last_epoch"]["val_forces_rmse_meV_A"]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(objective.values()))
    assert objective[result["best_params"]["model.channels"]] == result["best_value"]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [job["returncode"] for job in summary["jobs"]] == [0, 0]
    assert all(job["overrides"][0].startswith("model.channels=") for job in summary["jobs"])
    assert summary["optimization_results"]["best_value"] == result["best_value"]
    assert "job  split" in out and "300K" in out


@pytest.mark.skipif(not installed("hydra_plugins.hydra_submitit_launcher"), reason=NO_SUBMITIT)
def test_submitit_local_launcher_runs_the_job(tmp_path, capsys):
    sweep = tmp_path / "submitit"
    assert train_cli.main(["-m", "hydra/launcher=submitit_local", "seed=3", *TINY,
                           f"output_dir={sweep}"]) == 0
    metrics = _complete(sweep / "0")
    assert "seed: 3" in (sweep / "0" / "config.yaml").read_text()
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # ran as a submitit job
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["jobs"][0]["test"] == metrics["test"]


def _no_plugin(name: str):
    """find_spec of a plugin module when hydra_plugins itself is missing: it raises."""
    raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")


@pytest.mark.parametrize("missing", [lambda name: None, _no_plugin],
                         ids=["plugin missing", "no plugin at all"])
def test_a_missing_plugin_names_its_package(tmp_path, capsys, monkeypatch, missing):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: missing(name)
                        if name.startswith("hydra_plugins.") else real(name, *a))
    for choice, package in [("hydra/sweeper=optuna", "hydra-optuna-sweeper"),
                            ("hydra/launcher=submitit_slurm", "hydra-submitit-launcher")]:
        assert train_cli.main(["-m", choice, "seed=0,1", f"output_dir={tmp_path}/s"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"pip install {package}" in err
    assert not (tmp_path / "s").exists()


def test_hydra_multirun_checks_every_job_before_any_runs(tmp_path, capsys):
    """Any hydra.* key runs the sweep through Hydra's own multirun; a typo still stops it
    before the first job."""
    sweep = tmp_path / "sweep"
    assert train_cli.main(["-m", "hydra.sweeper.max_batch_size=1", "model.chanels=4,8",
                           f"output_dir={sweep}"]) == 2
    err = capsys.readouterr().err
    assert "chanels" in err and len(err.strip().splitlines()) == 1
    assert not sweep.exists()
    assert train_cli.main(["-m", "--cfg", "hydra.sweeper.max_batch_size=1", "seed=5,6",
                           f"output_dir={sweep}"]) == 0
    out = capsys.readouterr().out
    assert "seed: 5" in out and "max_batch_size: 1" in out and not sweep.exists()


def test_objective_reads_metrics_json():
    from forcefield.cli.sweep import objective

    metrics = {"val_last_epoch": {"val_loss": 2.0, "val_forces_rmse_meV_A": 30.0},
               "test": {"300K": {"forces_rmse_meV_A": 40.0, "n_structures": 5}}}
    assert objective(metrics, "val_forces_rmse_meV_A") == 30.0
    assert objective(metrics, "test.300K.forces_rmse_meV_A") == 40.0
    assert objective(metrics, "val_nothing") is None
    assert objective(metrics, "test.600K.forces_rmse_meV_A") is None
    assert objective(metrics, "test.300K") is None
