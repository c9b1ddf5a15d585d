"""Compose every config and experiment, instantiate the pieces, and check config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from forcefield.cli.compose import CONFIG_DIR, compose_config, parse_argv, pop_override
from forcefield.cli.train import compose_train
from forcefield.errors import ConfigError

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    for group in ("data", "model", "trainer", "experiment")
}


def test_config_dir_is_absolute_and_complete():
    assert CONFIG_DIR.is_absolute()
    for name in ("train", "evaluate", "export", "md"):
        assert (CONFIG_DIR / f"{name}.yaml").is_file()
    assert GROUP_OPTIONS["data"] == ["3bpa", "ase", "oc20"]
    assert GROUP_OPTIONS["model"] == ["gaunt_equiformer_v2", "gaunt_equiformer_v2_153m",
                                      "gaunt_equiformer_v2_31m", "gaunt_equiformer_v2_small",
                                      "gaunt_mace", "gaunt_mace_small"]
    assert GROUP_OPTIONS["trainer"] == ["cpu", "ddp", "gpu"]
    assert {"3bpa_paper", "oc20_s2ef"} <= set(GROUP_OPTIONS["experiment"])


def test_default_train_config():
    cfg = compose_config("train")
    assert cfg.data._target_ == "forcefield.data.ThreeBPADataModule"
    assert cfg.model.name == "gaunt_mace_small"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.dtype == "float32" and cfg.export.dtype == "float64"
    # the default run stops by time; its schedule follows the time (README, Training)
    assert cfg.trainer.max_epochs is None and cfg.trainer.max_time == "00:00:09:00"
    assert cfg.seed == 0 and cfg.ckpt_path is None
    assert "train-" in cfg.output_dir
    assert cfg.training.loss.forces_weight == 1000.0


@pytest.mark.parametrize("name", GROUP_OPTIONS["model"])
def test_model_configs_mirror_presets_and_build(name):
    from forcefield.models import PRESETS, build_model

    cfg = compose_config("train", [f"model={name}"])
    model_cfg = OmegaConf.to_container(cfg.model)
    # GauntMACE presets are mirrored in Python; GauntEquiformerV2's live only in the yaml
    # (its constructor is the schema)
    for key, value in PRESETS.get(name, {}).items():
        assert model_cfg[key] == value, key
    assert model_cfg["architecture"] == ("gaunt_equiformer_v2" if "equiformer" in name
                                         else "gaunt_mace")
    stats = {"species": [1, 6, 7, 8], "e0s": {1: -13.6, 6: -1029.0, 7: -1484.0, 8: -2041.0},
             "avg_num_neighbors": 12.0, "mean_interaction_energy_per_atom": -4.8,
             "force_rms": 0.95}
    if name == "gaunt_mace":
        model_cfg["channels"] = 8  # the structure, not the size, is under test
    if name == "gaunt_equiformer_v2":
        assert model_cfg["num_layers"] == 12 and model_cfg["lmax"] == 6
        assert model_cfg["forces"] == "direct" and model_cfg["max_neighbors"] == 20
    if "equiformer" in name and name != "gaunt_equiformer_v2_small":
        # the structure, not the size (sizes: tests/test_equiformer_presets.py)
        model_cfg.update(channels=8, num_layers=1, lmax=2, mmax=min(model_cfg["mmax"], 2),
                         num_radial=16)
    model = build_model(model_cfg, stats)
    assert model.config["species"] == [1, 6, 7, 8]
    assert model.config["avg_num_neighbors"] == 12.0
    assert model.config["e0s"][8] == -2041.0


@pytest.mark.parametrize("name", GROUP_OPTIONS["trainer"])
def test_trainer_configs_instantiate(name, tmp_path):
    from forcefield.training.train import build_trainer, validate_train_config

    cfg = compose_config("train", [f"trainer={name}"])
    validate_train_config(cfg)
    kwargs = OmegaConf.to_container(cfg.trainer)
    if name == "gpu":
        kwargs["accelerator"] = "cpu"  # no GPU needed to check the arguments
    if name == "ddp":
        assert kwargs["strategy"] == "ddp"
        kwargs["devices"] = 1
        kwargs["accelerator"] = "cpu"
    trainer = build_trainer(kwargs, tmp_path, callbacks=[])
    assert trainer.max_epochs == kwargs["max_epochs"]


@pytest.mark.parametrize("name", GROUP_OPTIONS["data"])
def test_data_configs_instantiate(name, repo_data):
    from forcefield.training.loaders import instantiate_datamodule

    overrides = [f"data={name}"]
    if name == "ase":
        overrides.append(f"data.train={repo_data / 'oc20' / 'oc20_real_frames.extxyz'}")
    cfg = compose_config("train", overrides)
    dm = instantiate_datamodule(cfg.data, r_max=5.0)
    assert dm.r_max == 5.0
    assert type(dm).__name__ == cfg.data._target_.rsplit(".", 1)[1]


@pytest.mark.parametrize("name", GROUP_OPTIONS["experiment"])
def test_experiments_compose(name):
    from forcefield.training.train import validate_train_config

    cfg = compose_config("train", [f"experiment={name}"])
    validate_train_config(cfg)
    assert cfg.model.name == ("gaunt_mace" if "eqv2" not in name else
                              "gaunt_equiformer_v2" if "oc20" in name else
                              "gaunt_equiformer_v2_small")
    if name == "oc20_s2ef_eqv2":
        loss = cfg.training.loss
        assert (loss.energy_weight, loss.forces_weight) == (2.0, 100.0)
        assert (loss.energy_kind, loss.forces_kind, loss.normalizer) == ("mae", "l2mae", 2.8873)
        assert cfg.training.optimizer.lr == 4.0e-4 and cfg.training.ema.decay == 0.999
        assert cfg.trainer.gradient_clip_val == 100.0
    if name == "3bpa_paper":
        assert cfg.data.batch_size == 5
        assert cfg.training.optimizer.lr == 0.01 and cfg.training.optimizer.amsgrad
        assert cfg.training.ema.decay == 0.99
        assert cfg.training.scheduler.name == "plateau"
        assert cfg.training.scheduler.factor == 0.8 and cfg.training.scheduler.patience == 50
        assert cfg.trainer.max_epochs == 2000
    # command-line overrides still win over the experiment
    cfg = compose_config("train", [f"experiment={name}", "trainer.max_epochs=3"])
    assert cfg.trainer.max_epochs == 3


def test_evaluate_export_md_configs():
    cfg = compose_config("evaluate", ["data=oc20"])
    assert OmegaConf.is_missing(cfg, "model")
    cfg = compose_config("export", ["checkpoint=a.ckpt", "output=b.pt"])
    assert cfg.checkpoint == "a.ckpt" and cfg.ema is True
    cfg = compose_config("md")
    assert cfg.ensemble == "nve" and cfg.temperature_K == 300 and cfg.timestep_fs == 0.5
    assert cfg.dtype == "float64"
    for key in ("model", "structure", "steps", "friction", "seed", "log_interval",
                "output_dir", "device"):
        assert key in cfg.keys()


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="chanels"):
        compose_config("train", ["model.chanels=64"])
    with pytest.raises(ConfigError, match="nosuch"):
        compose_config("train", ["data=nosuch"])
    with pytest.raises(ConfigError, match="not an override"):
        parse_argv(["model.channels"], "train")


def test_added_unknown_keys_fail_validation():
    from forcefield.training.train import validate_train_config

    cfg = compose_config("train", ["+model.chanels=64"])
    with pytest.raises(ConfigError, match="model.chanels"):
        validate_train_config(cfg)
    cfg = compose_config("train", ["+foo=1"])
    with pytest.raises(ConfigError, match="foo"):
        validate_train_config(cfg)
    cfg = compose_config("train", ["+trainer.max_epoch=1"])
    with pytest.raises(ConfigError, match="trainer.max_epoch"):
        validate_train_config(cfg)
    cfg = compose_config("train", ["dtype=float16"])
    with pytest.raises(ConfigError, match="float16"):
        validate_train_config(cfg)
    cfg = compose_config("train", ["ckpt_path=/no/such.ckpt"])
    with pytest.raises(ConfigError, match="/no/such.ckpt"):
        validate_train_config(cfg)


def test_missing_data_path_is_named(tmp_path):
    from forcefield.training.loaders import instantiate_datamodule, setup_data

    cfg = compose_config("train", ["data=ase", f"data.train={tmp_path}/missing.xyz"])
    with pytest.raises(ConfigError, match="missing.xyz"):
        setup_data(instantiate_datamodule(cfg.data, r_max=5.0), "fit")
    cfg = compose_config("train", [f"data.root={tmp_path}/nowhere"])
    with pytest.raises(ConfigError, match="nowhere"):
        instantiate_datamodule(cfg.data, r_max=5.0)


def test_user_config_dir_with_cp_cn(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "defaults:\n  - train\n  - _self_\nseed: 123\n"
    )
    cl = parse_argv(["-cp", str(tmp_path), "-cn", "mine", "model.channels=16"], "train")
    assert cl.config_dir == tmp_path.resolve() and cl.config_name == "mine"
    cfg = compose_train(cl)
    assert cfg.seed == 123 and cfg.model.channels == 16
    assert cfg.data._target_.endswith("ThreeBPADataModule")
    with pytest.raises(ConfigError, match="-cp"):
        parse_argv(["-cp", str(tmp_path / "nope")], "train")
    with pytest.raises(ConfigError, match="nothere"):
        compose_config("nothere", [], tmp_path)


def test_pop_override():
    rest, value = pop_override(["model=/a/b.pt", "data=oc20"], "model")
    assert rest == ["data=oc20"] and value == "/a/b.pt"


def test_instantiate_is_plain_hydra():
    cfg = compose_config("train", ["data=oc20"])
    dm = instantiate(cfg.data, r_max=6.0)
    assert dm.task == "s2ef"


def test_packaged_conf_is_the_repo_conf(repo_root):
    link = repo_root / "forcefield" / "conf"
    assert Path(link).resolve() == (repo_root / "conf").resolve()
