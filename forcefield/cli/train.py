"""``forcefield train``: conf/train.yaml -> :func:`forcefield.training.train.train`.

Resuming (``ckpt_path=RUN/checkpoints/last.ckpt``) starts from the run's saved config.yaml,
so the resumed run is the run that was interrupted; ``-m`` runs a sweep
(:mod:`forcefield.cli.sweep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from forcefield.cli.command import Command
from forcefield.cli.compose import CommandLine, compose_config, override_key, pop_override
from forcefield.errors import ConfigError

GROUPS = ("data", "model", "trainer", "experiment", "logger", "callbacks")


def run(cfg: DictConfig) -> int:
    """Train, test and export as ``cfg`` says; the exit code."""
    from forcefield.training.train import train

    return train(cfg)


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply key=value overrides to a saved config; unknown keys and groups are errors."""
    OmegaConf.set_struct(cfg, True)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"argument {item!r} is not key=value")
        force = key.startswith("+")
        key = key.lstrip("+")
        if key in GROUPS:
            raise ConfigError(
                f"{key}={value}: config groups cannot change when resuming a run; "
                f"override single keys (e.g. trainer.max_epochs=...) or start a new run"
            )
        if not force and OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"unknown config key {key!r} (not in the saved config.yaml)")
        if force:
            with open_dict(cfg):
                OmegaConf.update(cfg, key, _parse_value(value), merge=True, force_add=True)
        else:
            OmegaConf.update(cfg, key, _parse_value(value), merge=True)
    return cfg


def compose_train(cl: CommandLine) -> DictConfig:
    """Compose the training config; a resumed run starts from its saved config.yaml."""
    overrides, ckpt = pop_override(list(cl.overrides), "ckpt_path")
    if ckpt not in (None, "", "null", "None"):
        ckpt_path = Path(ckpt).expanduser()
        if not ckpt_path.is_file():
            raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")
        run_dir = ckpt_path.resolve().parent.parent
        saved = run_dir / "config.yaml"
        if saved.is_file():
            cfg = OmegaConf.load(saved)
            cfg = apply_overrides(cfg, overrides)
            cfg.ckpt_path = str(ckpt_path.resolve())
            return cfg
        cfg = compose_config(cl.config_name, overrides, cl.config_dir)
        cfg.ckpt_path = str(ckpt_path.resolve())
        if not any(o.startswith("output_dir=") for o in overrides):
            cfg.output_dir = str(run_dir)
        return cfg
    _, init_from = pop_override(list(overrides), "init_from")
    if init_from not in (None, "", "null", "None"):
        cfg = compose_finetune(cl, overrides, init_from)
    else:
        cfg = compose_config(cl.config_name, overrides, cl.config_dir)
    from forcefield.training.recipe import apply_recipe

    apply_recipe(cfg, overrides)  # init_from: the fine-tuning recipe (finetune.recipe)
    return cfg


def compose_finetune(cl: CommandLine, overrides: Sequence[str], init_from: str) -> DictConfig:
    """A fine-tune's config: ``model`` is the config stored in ``init_from`` (what will be
    trained), with the command line's ``model.forces=...`` applied (the only model key a
    fine-tune may change)."""
    from forcefield.training.force_mode import model_config_for_finetune
    from forcefield.training.io import jsonable

    model_items = [o for o in overrides if override_key(o).startswith("model.")]
    rest = [o for o in overrides if o not in model_items]
    cfg = compose_config(cl.config_name, rest, cl.config_dir)
    changes = [(override_key(o)[len("model."):], _parse_value(o.partition("=")[2]))
               for o in model_items]
    config = model_config_for_finetune(init_from, changes)
    with open_dict(cfg):
        cfg.model = OmegaConf.create(jsonable(config))
    return cfg


def _multirun(cl: CommandLine) -> int:
    from forcefield.cli.sweep import run_multirun

    return run_multirun(cl)


COMMAND = Command(
    name="train",
    usage="[key=value ...]",
    description="""\
Train a potential, test the best checkpoint, write the run directory (config.yaml,
checkpoints/{best,last}.ckpt, metrics.csv, metrics.json, parity plots, model.pt).""",
    run=run,
    examples=(
        "forcefield train",
        "forcefield train model.channels=64 trainer.max_epochs=100 output_dir=runs/c64",
        "forcefield train experiment=3bpa_paper trainer=gpu",
        "forcefield train ckpt_path=runs/c64/checkpoints/last.ckpt      # resume exactly",
        "forcefield train --cfg                                          # print the config",
        "forcefield train -m seed=0,1,2 model.channels=32,64 output_dir=runs/sweep   # 6 runs",
        "forcefield train -m hydra/sweeper=optuna hydra.sweeper.n_trials=20 \\",
        "    'model.channels=choice(16,32,64)' sweep.objective=val_forces_rmse_meV_A",
        "forcefield train -m hydra/launcher=submitit_slurm seed=0,1,2     # on a SLURM cluster",
        "forcefield train logger=[csv,tensorboard] callbacks=early_stopping",
        "forcefield train init_from=runs/c64/model.pt data=ase data.train=new.xyz   # fine-tune",
    ),
    compose=compose_train,
    multirun=_multirun,
)

main = COMMAND.main

if __name__ == "__main__":
    raise SystemExit(main())
