"""`forcefield train init_from=...`: architecture and weights from a model file, statistics
reset on request, frozen parameters bit-identical, unknown elements one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, tiny_model

from forcefield.cli import evaluate as evaluate_cli
from forcefield.cli import train as train_cli
from forcefield.export import load_model, save_model
from forcefield.training import finetune

# the base models are float64: fine-tune in float64 too, so that frozen weights stay
# bit-identical (the default trains in float32, which rounds them)
DATA = ["data.train_size=6", "data.valid_size=4", "data.test_limit=3",
        "data.stats_cache=false", "trainer.max_time=null", "dtype=float64"]
QUICK = ["test.enabled=false"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "model.pt"
    save_model(path, tiny_model(seed=1))
    return path


def test_freeze_and_reset_statistics(base, tmp_path):
    out = tmp_path / "ft"
    assert train_cli.main([*DATA, *QUICK, "trainer.max_epochs=1", f"init_from={base}",
                           "finetune.freeze=['^embedding','^interactions.0.']",
                           "finetune.reset_statistics=[e0s,shift,scale]",
                           f"output_dir={out}"]) == 0
    before, after = load_model(base), load_model(out / "model.pt")
    frozen = changed = 0
    for (name, p0), p1 in zip(before.named_parameters(), after.parameters(), strict=True):
        if name.startswith(("embedding", "interactions.0.")):
            assert torch.equal(p0, p1), name  # bit-identical (also the EMA copy exported)
            frozen += 1
        else:
            changed += not torch.equal(p0, p1)
    assert frozen == 8 and changed >= 10
    # the architecture is the file's (channels 8, r_max 4), not the default preset's
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["channels"] == TINY["channels"] == after.config["channels"]
    assert after.config["r_max"] == TINY["r_max"]
    assert cfg["init_from"] == str(base)
    stats = json.loads((out / "statistics.json").read_text())
    assert {int(k): v for k, v in after.config["e0s"].items()} == pytest.approx(
        {int(k): v for k, v in stats["e0s"].items()})
    assert after.config["energy_shift"] == pytest.approx(
        stats["mean_interaction_energy_per_atom"])
    assert after.config["energy_scale"] == pytest.approx(stats["force_rms"])
    assert after.config["avg_num_neighbors"] == TINY["avg_num_neighbors"]  # not reset


def test_statistics_kept_unless_asked(base, tmp_path):
    out = tmp_path / "ft"
    assert train_cli.main([*DATA, *QUICK, "trainer.max_epochs=1", f"init_from={base}",
                           "export.enabled=false", f"output_dir={out}"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert {int(k): v for k, v in cfg["e0s"].items()} == TINY["e0s"]
    assert cfg["energy_shift"] == TINY["energy_shift"]
    assert cfg["energy_scale"] == TINY["energy_scale"]


def test_unknown_element_is_one_sentence(tmp_path, capsys):
    from forcefield.models import build_model

    no_nitrogen = dict(TINY, species=[1, 6, 8], e0s={1: -13.6, 6: -1029.4, 8: -2041.8})
    path = tmp_path / "cho.pt"
    save_model(path, build_model(no_nitrogen).double())
    code = train_cli.main([*DATA, f"init_from={path}", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"init_from={path}: the training data contains N (Z=7)" in err
    assert "(it knows H, C, O)" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("args, message", [
    (["finetune.freeze=[nonexistent]"], "finetune.freeze: 'nonexistent' matches no parameter"),
    (["finetune.reset_statistics=[e0]"], "'e0' cannot be reset; choose from e0s, shift, scale"),
    (["finetune.freeze=['.']"], "finetune.freeze matches every parameter"),
])
def test_bad_finetune_settings(base, args, message, tmp_path, capsys):
    code = train_cli.main([*DATA, f"init_from={base}", *args,
                           f"output_dir={tmp_path / 'run'}"])
    assert code == 2 and message in capsys.readouterr().err


def test_reinitialize_and_pretrained_lr():
    pretrained = tiny_model(seed=1)
    settings = finetune.check_config({"reinitialize": ["^readouts"], "pretrained_lr": 1e-4})
    model = finetune.finetuned_model(pretrained, None, settings, "x.pt", seed=5)
    for (name, p0), p1 in zip(pretrained.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p0, p1) != name.startswith("readouts"), name
        assert p1.requires_grad
    training = finetune.training_config({"optimizer": {"lr": 0.01, "param_groups": [
        {"match": "head", "lr": 0.5}]}}, settings)
    assert training["optimizer"]["param_groups"] == [
        {"match": "head", "lr": 0.5}, {"match": "^readouts", "lr": 0.01},
        {"match": ".", "lr": 1e-4}]
    from forcefield.training.optim import build_optimizer

    lrs = {}
    optimizer = build_optimizer(model, training["optimizer"])
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lrs[names[id(p)]] = group["lr"]
    assert lrs["head.element_shift"] == 0.5
    assert lrs["readouts.0.weight"] == 0.01 and lrs["embedding.weight"] == 1e-4


@pytest.mark.slow
def test_finetune_on_600K_lowers_the_600K_error(tmp_path, repo_data):
    """A model trained on 300K, fine-tuned briefly on 600K structures, predicts held-out
    600K structures better than before, and better than the same 3 epochs from scratch."""
    from ase.io import read, write

    small = ["model.channels=8", "model.radial_mlp=[8]"]
    base_run = tmp_path / "base"
    assert train_cli.main([*DATA, *small, "data.train_size=20", "trainer.max_epochs=3",
                           "test.enabled=false", f"output_dir={base_run}"]) == 0
    frames = read(repo_data / "3bpa" / "derived_mdbenchgnn" / "test_600K.xyz", ":40")
    write(tmp_path / "ft.xyz", frames[:30])
    write(tmp_path / "held_out.xyz", frames[30:])
    ft_run = tmp_path / "ft"
    assert train_cli.main(["data=ase", f"data.train={tmp_path / 'ft.xyz'}",
                           "data.stats_cache=false",
                           "trainer.max_time=null", "trainer.max_epochs=3", "test.enabled=false",
                           "training.stage_two.enabled=false",
                           f"init_from={base_run / 'model.pt'}", f"output_dir={ft_run}"]) == 0

    def forces_rmse(model: Path) -> float:
        out = tmp_path / f"eval_{model.parent.name}"
        assert evaluate_cli.main([f"model={model}", "data=ase",
                                  f"data.test={{held_out: {tmp_path / 'held_out.xyz'}}}",
                                  "predictions=false", "plots=false", f"output_dir={out}"]) == 0
        return json.loads((out / "metrics.json").read_text())["test"]["held_out"][
            "forces_rmse_meV_A"]

    # the same training (architecture, data, epochs) from scratch
    scratch_run = tmp_path / "scratch"
    assert train_cli.main(["data=ase", f"data.train={tmp_path / 'ft.xyz'}",
                           f"data.e0s={repo_data / '3bpa' / 'iso_atoms.xyz'}",
                           "data.stats_cache=false", *small, "trainer.max_time=null",
                           "trainer.max_epochs=3", "test.enabled=false",
                           "training.stage_two.enabled=false", f"output_dir={scratch_run}"]) == 0
    before, after = forces_rmse(base_run / "model.pt"), forces_rmse(ft_run / "model.pt")
    scratch = forces_rmse(scratch_run / "model.pt")
    assert after < before
    assert after < scratch  # in the same number of epochs


def test_resume_a_finetune_keeps_it_a_finetune(base, tmp_path):
    """ckpt_path= resumes the fine-tune (same frozen parameters, the file's architecture)."""
    out = tmp_path / "ft"
    assert train_cli.main([*DATA, *QUICK, "trainer.max_epochs=1", f"init_from={base}",
                           "finetune.freeze=['^embedding']", "export.enabled=false",
                           f"output_dir={out}"]) == 0
    assert train_cli.main([f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
                           "trainer.max_epochs=2", "export.enabled=true"]) == 0
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1
    resumed = load_model(out / "model.pt")
    assert resumed.config["channels"] == TINY["channels"]
    assert torch.equal(resumed.embedding.weight, load_model(base).embedding.weight)
    assert not torch.equal(resumed.readouts[0].weight, load_model(base).readouts[0].weight)
