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


# ---------------------------------------------------------------- the fine-tuning recipe
def _printed_config(args: list[str], capsys) -> dict:
    assert train_cli.main([*args, "--cfg"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_recipe_is_the_default_with_init_from_unless_given(base, capsys):
    scratch = _printed_config([], capsys)
    assert scratch["training"]["optimizer"]["lr"] == 0.01 and scratch["dtype"] == "float32"
    fine = _printed_config([f"init_from={base}"], capsys)
    recipe = fine["finetune"]["recipe"]
    assert fine["training"]["optimizer"]["lr"] == recipe["optimizer"]["lr"] < 0.01
    assert fine["training"]["scheduler"]["warmup_epochs"] == recipe["scheduler"]["warmup_epochs"]
    assert fine["training"]["ema"]["warmup"] is False  # the EMA starts from the loaded weights
    assert fine["training"]["stage_two"]["enabled"] == recipe["stage_two"]["enabled"]
    assert fine["dtype"] == "float64"  # the model file's
    loss = dict(scratch["training"]["loss"], energy_weight=recipe["loss"]["energy_weight"])
    assert fine["training"]["loss"] == loss  # only the recipe's loss key changes
    given = _printed_config([f"init_from={base}", "training.optimizer.lr=0.005", "dtype=float32",
                             "training.stage_two={enabled: true}",
                             "finetune.recipe.ema.decay=0.9"], capsys)
    assert given["training"]["optimizer"]["lr"] == 0.005 and given["dtype"] == "float32"
    assert given["training"]["stage_two"]["enabled"] is True
    assert given["training"]["ema"]["decay"] == 0.9
    off = _printed_config([f"init_from={base}", "finetune.recipe=null"], capsys)
    assert off["training"] == scratch["training"]


def test_recipe_key_that_names_no_training_setting(base, tmp_path, capsys):
    code = train_cli.main([f"init_from={base}", "+finetune.recipe.optimizer.lrr=0.1",
                           f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "finetune.recipe.optimizer.lrr names no training setting" in err


def test_float64_model_finetuned_without_dtype_stays_float64(base, tmp_path):
    """No dtype=: the run trains in the file's float64, so frozen weights stay bit-identical."""
    out = tmp_path / "ft"
    data = [a for a in DATA if not a.startswith("dtype=")]
    assert train_cli.main([*data, *QUICK, "trainer.max_epochs=1", f"init_from={base}",
                           "finetune.freeze=['^embedding']", f"output_dir={out}"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["dtype"] == "float64"
    assert json.loads((out / "metrics.json").read_text())["dtype"] == "float64"
    before, after = load_model(base), load_model(out / "model.pt")
    assert after.embedding.weight.dtype == torch.float64
    assert torch.equal(before.embedding.weight, after.embedding.weight)
    assert not torch.equal(before.readouts[0].weight, after.readouts[0].weight)


# ---------------------------------------------------------------- replay
def test_replay_sampler_draws_its_fraction_every_epoch():
    from forcefield.training.replay import ReplayBatchSampler

    sampler = ReplayBatchSampler(n_new=30, n_replay=100, fraction=0.25, batch_size=4, seed=3)
    draws = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        flat = [i for batch in sampler for i in batch]
        assert sorted(i for i in flat if i < 30) == list(range(30))  # every new one once
        replayed = [i for i in flat if i >= 30]
        assert len(replayed) == 10 == len(set(replayed))  # 10 / (30 + 10) = 25 %
        assert len(list(sampler)) == len(sampler)
        draws.append(sorted(replayed))
    assert draws[0] != draws[1]  # a fresh draw each epoch ...
    sampler.set_epoch(0)
    assert sorted(i for b in sampler for i in b if i >= 30) == draws[0]  # ... seeded by it
    ranks = []
    for rank in range(2):
        sampler.set_distributed(2, rank)
        ranks.append([i for batch in sampler for i in batch])
    assert set(ranks[0]) | set(ranks[1]) >= set(range(30))
    assert len(ranks[0]) >= len(ranks[1])


def test_replay_mixes_original_data_and_reports_both(base, tmp_path, repo_data):
    from ase.io import read, write

    replay = tmp_path / "replay.xyz"
    write(replay, read(repo_data / "3bpa" / "train_300K.xyz", "-30:"))
    out = tmp_path / "ft"
    assert train_cli.main([*DATA, *QUICK, "trainer.max_epochs=1", f"init_from={base}",
                           f"finetune.replay={replay}", "finetune.replay_fraction=0.5",
                           "finetune.replay_holdout=5", "export.enabled=false",
                           f"output_dir={out}"]) == 0
    report = json.loads((out / "metrics.json").read_text())["finetune"]
    assert report["replay_structures"] == 25 and report["replay_fraction"] == 0.5
    for when in ("before", "after"):
        assert report[when]["original_holdout"]["n_structures"] == 5
        assert report[when]["new_valid"]["n_structures"] == 4
    assert report["after"]["new_valid"] != report["before"]["new_valid"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # one epoch: 6 new + 6 replayed structures, batch 5 -> 3 steps
    header, row = rows[0].split(","), rows[1].split(",")
    assert row[header.index("step")] == "3"


def test_train_records_its_data_and_replay_base_reads_it(tmp_path, repo_data):
    from forcefield.model_files import read_any
    from forcefield.training.replay import replay_sources

    out = tmp_path / "base"
    assert train_cli.main([*DATA, *QUICK, "trainer.max_epochs=1", "model.channels=8",
                           "model.radial_mlp=[8]", f"output_dir={out}"]) == 0
    recorded = read_any(out / "model.pt")[1]["metadata"]["training_data"]
    assert recorded == [str((repo_data / "3bpa" / "train_300K.xyz").resolve())]
    assert replay_sources("base", str(out / "model.pt")) == recorded
    assert replay_sources(["a.xyz", "b.xyz"], "unused") == ["a.xyz", "b.xyz"]


def test_replay_base_without_recorded_data_is_one_sentence(tmp_path, capsys, base):
    code = train_cli.main([*DATA, f"init_from={base}", "finetune.replay=base",
                           f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"finetune.replay=base: {base} records no training data" in err


def test_replay_data_with_other_elements_is_one_sentence(base, tmp_path, capsys):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    atoms = Atoms("HCl", positions=[[0, 0, 0], [0, 0, 1.3]])
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=[[0, 0, 0.1], [0, 0, -0.1]])
    replay = tmp_path / "hcl.xyz"
    write(replay, [atoms, atoms])
    code = train_cli.main([*DATA, f"init_from={base}", f"finetune.replay={replay}",
                           f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"finetune.replay={replay}: the replay data contains Cl (Z=17)" in err
    assert "(it knows H, C, N, O)" in err and "leave finetune.replay out" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("args, message", [
    (["finetune.replay_fraction=1.5"], "finetune.replay_fraction=1.5 must be between 0 and 1"),
    (["finetune.replay_holdout=-1"], "finetune.replay_holdout=-1 must be a whole number"),
])
def test_bad_replay_settings(base, args, message, tmp_path, capsys, repo_data):
    code = train_cli.main([*DATA, f"init_from={base}",
                           f"finetune.replay={repo_data / '3bpa' / 'train_300K.xyz'}", *args,
                           f"output_dir={tmp_path / 'run'}"])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_of_a_trained_model_with_replay_keeps_the_original_error(tmp_path, repo_data):
    """A small model trained on 300K, fine-tuned with the recipe on 600K structures: the
    held-out 600K error falls, and replaying 300K data keeps the 300K error below the
    fine-tune without replay."""
    from ase.io import read, write

    tests = repo_data / "3bpa" / "derived_mdbenchgnn"
    base_run = tmp_path / "base"
    assert train_cli.main([
        "data.train_size=100", "data.valid_size=10", "data.stats_cache=false",
        "trainer.max_time=null", "trainer.max_epochs=15", "model.channels=8",
        "model.radial_mlp=[8]", "test.enabled=false", "trainer.enable_progress_bar=false",
        f"output_dir={base_run}"]) == 0
    hot = read(tests / "test_600K.xyz", ":70")
    write(tmp_path / "ft.xyz", hot[:40])
    write(tmp_path / "hot.xyz", hot[40:])
    write(tmp_path / "cold.xyz", read(tests / "test_300K.xyz", ":30"))
    write(tmp_path / "replay.xyz", read(repo_data / "3bpa" / "train_300K.xyz", ":80"))

    def errors(model: Path) -> dict[str, float]:
        out = tmp_path / f"eval_{model.parent.name}"
        assert evaluate_cli.main([f"model={model}", "data=ase",
                                  f"data.test={{hot: {tmp_path / 'hot.xyz'}, "
                                  f"cold: {tmp_path / 'cold.xyz'}}}",
                                  "predictions=false", "plots=false", f"output_dir={out}"]) == 0
        test = json.loads((out / "metrics.json").read_text())["test"]
        return {k: v["forces_rmse_meV_A"] for k, v in test.items()}

    runs = {}
    for name, extra in {"plain": [], "replay": [f"finetune.replay={tmp_path / 'replay.xyz'}",
                                                "finetune.replay_fraction=0.5"]}.items():
        out = tmp_path / name
        assert train_cli.main(["data=ase", f"data.train={tmp_path / 'ft.xyz'}",
                               "data.stats_cache=false", "data.batch_size=2",
                               "trainer.max_time=null", "trainer.max_epochs=4",
                               "test.enabled=false", "trainer.enable_progress_bar=false",
                               f"init_from={base_run / 'model.pt'}", *extra,
                               f"output_dir={out}"]) == 0
        runs[name] = errors(out / "model.pt")
    before = errors(base_run / "model.pt")
    assert runs["plain"]["hot"] < before["hot"]
    assert runs["replay"]["hot"] < before["hot"]
    assert runs["replay"]["cold"] < runs["plain"]["cold"]


def test_an_energy_offset_is_named_and_reset_e0s_reported(base, tmp_path, repo_data, capsys):
    """Labels 0.5 eV/atom above the model's reference: the run says so before training and
    names the fix; with reset_statistics=[e0s] it prints the re-estimated E0s instead."""
    from ase.io import read, write

    frames = read(repo_data / "3bpa" / "train_300K.xyz", ":12")
    for atoms in frames:
        atoms.calc.results["energy"] += 0.5 * len(atoms)
    shifted = tmp_path / "shifted.xyz"
    write(shifted, frames)
    common = ["data=ase", f"data.train={shifted}", "data.stats_cache=false",
              "data.valid_fraction=0.25", "trainer.max_time=null", "trainer.max_epochs=1",
              *QUICK, "export.enabled=false", f"init_from={base}"]
    assert train_cli.main([*common, f"output_dir={tmp_path / 'kept'}"]) == 0
    out = capsys.readouterr().out
    assert "warning: before fine-tuning" in out and "finetune.reset_statistics=[e0s]" in out
    offset = json.loads((tmp_path / "kept" / "metrics.json").read_text())["finetune"][
        "before"]["new_valid"]["energy_per_atom_mean_error_meV"]
    assert offset < -400  # the model is 0.5 eV/atom below the shifted labels
    shifted_e0s = {z: e + 0.5 for z, e in TINY["e0s"].items()}  # one composition: no fit
    assert train_cli.main([*common, "finetune.reset_statistics=[e0s]",
                           f"data.e0s={json.dumps(shifted_e0s).replace(chr(34), '')}",
                           f"output_dir={tmp_path / 'reset'}"]) == 0
    out = capsys.readouterr().out
    assert "E0s re-estimated from the new training data (eV): H -13.5870 -> -13.0870" in out
    assert "warning: before fine-tuning" not in out
