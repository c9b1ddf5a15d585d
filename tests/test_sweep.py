"""`forcefield train -m`: a Hydra multirun sweep writes one complete run per job and a
summary of the jobs' test metrics."""

from __future__ import annotations

import json

import pytest

from forcefield.cli import train as train_cli

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
