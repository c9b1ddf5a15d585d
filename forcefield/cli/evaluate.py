"""``forcefield evaluate``: conf/evaluate.yaml -> :func:`forcefield.evaluate.evaluate`."""

from __future__ import annotations

from omegaconf import DictConfig

from forcefield.cli.command import Command


def run(cfg: DictConfig) -> int:
    """Evaluate ``cfg.model`` on the test sources of ``cfg.data``; the exit code."""
    from forcefield.evaluate import evaluate

    return evaluate(cfg)


COMMAND = Command(
    name="evaluate",
    usage="model=PATH [data=3bpa|oc20|ase] [key=value ...]",
    description="""\
Evaluate a model.pt or a training checkpoint on every test source of the data config;
write metrics.json, predictions_<split>.extxyz and parity plots into output_dir.""",
    run=run,
    examples=(
        "forcefield evaluate model=runs/x/model.pt",
        "forcefield evaluate model=runs/x/checkpoints/best.ckpt data=oc20 data.test=val.aselmdb",
        "forcefield evaluate model=runs/x/model.pt data=oc20 data.task=is2re data.test=val_is2re/",
        "forcefield evaluate model=model.pt data=ase data.test='{md: md.xyz}' output_dir=eval",
    ),
    path_keys=("model",),
)

main = COMMAND.main

if __name__ == "__main__":
    raise SystemExit(main())
