"""Command-line plumbing shared by ``forcefield train``, ``evaluate`` and ``export``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from forcefield.model_files import ModelFileError
from forcefield.training.config import (
    CONFIG_DIR,
    CommandLine,
    ConfigError,
    compose_config,
    parse_argv,
    pop_override,
)

GROUPS = ("data", "model", "trainer", "experiment", "logger", "callbacks")

TRAIN_HELP = f"""usage: forcefield train [-m] [-cp DIR] [-cn NAME] [--cfg] [--info] [key=value ...]

Train a Gaunt-MACE potential, test the best checkpoint, write the run directory
(config.yaml, checkpoints/{{best,last}}.ckpt, metrics.csv, metrics.json, parity plots,
model.pt).

config groups (choose with group=option):
  data        3bpa (default), oc20, ase
  model       gaunt_mace_small (default), gaunt_mace
  trainer     cpu (default), gpu, ddp
  experiment  3bpa_paper, oc20_s2ef, oc20_is2re
  logger      csv (default), tensorboard, wandb, mlflow; several: logger=[csv,tensorboard]
  callbacks   none (default), early_stopping, lr_monitor; any: +callbacks.x._target_=...
top-level keys: seed, dtype (float32|float64), output_dir, ckpt_path (resume),
  init_from (fine-tune a model.pt or checkpoint; see finetune.*)

examples:
  forcefield train
  forcefield train model.channels=64 trainer.max_epochs=100 output_dir=runs/c64
  forcefield train experiment=3bpa_paper trainer=gpu
  forcefield train ckpt_path=runs/c64/checkpoints/last.ckpt      # resume exactly
  forcefield train --cfg                                          # print the config
  forcefield train -m seed=0,1,2 model.channels=32,64 output_dir=runs/sweep   # 6 runs
  forcefield train logger=[csv,tensorboard] callbacks=early_stopping
  forcefield train init_from=runs/c64/model.pt data=ase data.train=new.xyz   # fine-tune

configs: {CONFIG_DIR}
"""

EVALUATE_HELP = """usage: forcefield evaluate model=PATH [data=3bpa|oc20|ase] [key=value ...]

Evaluate a model.pt or a training checkpoint on every test source of the data config;
write metrics.json, predictions_<split>.extxyz and parity plots into output_dir.

examples:
  forcefield evaluate model=runs/x/model.pt
  forcefield evaluate model=runs/x/checkpoints/best.ckpt data=oc20 data.test=val.aselmdb
  forcefield evaluate model=runs/x/model.pt data=oc20 data.task=is2re data.test=val_is2re/
  forcefield evaluate model=model.pt data=ase data.test='{md: md.xyz}' output_dir=eval
"""

EXPORT_HELP = """usage: forcefield export checkpoint=PATH output=PATH [dtype=float64] [ema=true]

Turn a training checkpoint into a deployable model file (EMA weights by default).
"""


def run_command(
    name: str,
    argv: Sequence[str] | None,
    help_text: str,
    body: Callable[[CommandLine], int],
) -> int:
    """Parse argv, run ``body``; user errors print one line and return 2."""
    argv = list(sys.argv[2:] if argv is None else argv)
    try:
        cl = parse_argv(argv, name)
        if cl.help:
            print(help_text)
            return 0
        if cl.info:
            print(config_info(cl))
            return 0
        if cl.multirun and name != "train":
            raise ConfigError(f"-m (multirun) is available for forcefield train, not {name}")
        return int(body(cl) or 0)
    except (ConfigError, ModelFileError) as exc:
        print(f"forcefield {name}: error: {exc}", file=sys.stderr)
        return 2


def config_info(cl: CommandLine) -> str:
    """``--info``: where the configs are, the primary config, every group and its options."""
    lines = [f"config directory: {cl.config_dir}", f"primary config:   {cl.config_name}.yaml"]
    if Path(cl.config_dir).resolve() != CONFIG_DIR:
        lines.append(f"also searched:    {CONFIG_DIR}")
    lines.append("config groups (choose with group=option; several: group=[a,b]):")
    groups: dict[str, set[str]] = {}
    for root in dict.fromkeys([Path(cl.config_dir), CONFIG_DIR]):
        for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
            groups.setdefault(folder.name, set()).update(
                f.stem for f in folder.glob("*.yaml"))
    for group, options in sorted(groups.items()):
        lines.append(f"  {group:<11} {', '.join(sorted(options))}")
    return "\n".join(lines)


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply key=value overrides to a saved config; unknown keys are errors."""
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
        with _unlocked(cfg, force):
            OmegaConf.update(cfg, key, _parse_value(value), merge=True, force_add=force)
    return cfg


class _unlocked:
    def __init__(self, cfg: DictConfig, on: bool) -> None:
        self.cfg, self.on = cfg, on

    def __enter__(self):
        if self.on:
            OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc):
        if self.on:
            OmegaConf.set_struct(self.cfg, True)


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
    return compose_config(cl.config_name, overrides, cl.config_dir)


def print_config(cfg: DictConfig) -> None:
    print(OmegaConf.to_yaml(cfg, resolve=True))


def train_main(argv: Sequence[str] | None = None) -> int:
    def body(cl: CommandLine) -> int:
        if cl.multirun:
            from forcefield.training.sweep import run_sweep

            return run_sweep(cl)
        cfg = compose_train(cl)
        if cl.print_config:
            print_config(cfg)
            return 0
        from forcefield.training.run import train

        return train(cfg)

    return run_command("train", argv, TRAIN_HELP, body)


def compose_with_model(cl: CommandLine):
    """The config of a command that reads a model file (evaluate, relax): ``model=PATH`` is
    taken out before composing, since ``model`` is also a config group of conf/. Returns
    None after printing the config for ``--cfg``."""
    overrides, model = pop_override(list(cl.overrides), "model")
    if not model:
        raise ConfigError("missing model=PATH (a model.pt or a training checkpoint)")
    cfg = compose_config(cl.config_name, overrides, cl.config_dir)
    cfg.model = model
    if cl.print_config:
        print_config(cfg)
        return None
    return cfg


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    def body(cl: CommandLine) -> int:
        cfg = compose_with_model(cl)
        if cfg is None:
            return 0
        from forcefield.training.run import evaluate

        return evaluate(cfg, str(cfg.model))

    return run_command("evaluate", argv, EVALUATE_HELP, body)


def export_main(argv: Sequence[str] | None = None) -> int:
    def body(cl: CommandLine) -> int:
        cfg = compose_config(cl.config_name, cl.overrides, cl.config_dir)
        from forcefield.training.config import check_keys, check_missing

        check_keys(cfg, ("checkpoint", "output", "dtype", "ema"))
        check_missing(cfg)
        if cl.print_config:
            print_config(cfg)
            return 0
        from forcefield.training.run import export

        dest = export(str(cfg.checkpoint), str(cfg.output), cfg.dtype, bool(cfg.ema))
        print(f"forcefield export: wrote {dest}")
        return 0

    return run_command("export", argv, EXPORT_HELP, body)
