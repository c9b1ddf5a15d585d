"""``forcefield train -m ...``: a multirun sweep, one complete run directory per job.

Two ways to run one, the same to the user:

* **Hydra's basic sweep** (``forcefield train -m seed=0,1 model.channels=32,64``): the
  overrides are expanded as Hydra's basic sweeper does (the cartesian product of every
  ``key=a,b`` / ``key=range(...)`` / ``key=choice(...)``), every job's config is composed and
  checked before the first job starts (a typo costs nothing), and each job is a
  ``forcefield train`` of its own process (a DDP job spawns its workers as usual; a failed job
  does not stop the others), writing ``<sweep_dir>/<n>_<overrides>``.
* **Hydra's plugins**, as soon as an override names one (``hydra/sweeper=optuna``,
  ``hydra/launcher=submitit_slurm``, or any ``hydra.*`` key): the sweep runs through Hydra's
  own multirun with conf/train.yaml as the primary config and
  :func:`forcefield.training.train.train` as the task; each job writes
  ``<sweep_dir>/<job number>`` and returns the metric ``sweep.objective`` of its
  ``metrics.json`` (``val_forces_rmse_meV_A`` by default; a dotted path such as
  ``test.300K.forces_rmse_meV_A`` reads any entry) for sweepers that optimise it. A plugin
  that is not installed is one sentence naming the pip package.

At the end ``<sweep_dir>/sweep_summary.json`` lists every job (overrides, run directory, exit
code, test metrics) and a table of the test errors is printed. ``output_dir`` names the sweep
directory (default ``multirun/<date>_<time>``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from forcefield.atomic_io import atomic_write_json
from forcefield.cli.compose import (
    CONFIG_DIR,
    CommandLine,
    compose_config,
    hydra_message,
    override_key,
    pop_override,
    quote,
    search_path_overrides,
)
from forcefield.errors import ConfigError, ForceFieldError, RunError
from forcefield.optional import installed

PLUGINS: dict[str, tuple[str, str]] = {
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    "hydra/sweeper=nevergrad": ("hydra_plugins.hydra_nevergrad_sweeper",
                                "hydra-nevergrad-sweeper"),
    "hydra/sweeper=ax": ("hydra_plugins.hydra_ax_sweeper", "hydra-ax-sweeper"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher",
                                      "hydra-submitit-launcher"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher",
                                      "hydra-submitit-launcher"),
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "hydra/launcher=ray": ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
    "hydra/launcher=rq": ("hydra_plugins.hydra_rq_launcher", "hydra-rq-launcher"),
}
"""Hydra plugin options -> (the module that provides them, the pip package to install)."""


def run_multirun(cl: CommandLine) -> int:
    """``forcefield train -m``: Hydra's own multirun when an override configures Hydra
    (a sweeper or launcher plugin), else the basic sweep of one process per job."""
    if any(override_key(o).startswith("hydra") for o in cl.overrides):
        return run_hydra_sweep(cl)
    return run_sweep(cl)


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The override list of every job of the sweep (Hydra's basic-sweeper semantics)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"cannot parse the sweep overrides: {hydra_message(exc)}") from exc
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _job_name(num: int, job: Sequence[str], swept: set[str]) -> str:
    parts = [o for o in job if override_key(o) in swept]
    text = ",".join(parts)
    safe = "".join(c if c.isalnum() or c in "-_.=," else "_" for c in text)[:80]
    return f"{num}_{safe}" if safe else str(num)


def _swept_keys(jobs: Sequence[Sequence[str]]) -> set[str]:
    keys = {override_key(o) for job in jobs for o in job}
    return {k for k in keys if len({_value(job, k) for job in jobs}) > 1}


def _sweep_dir(overrides: list[str]) -> tuple[list[str], Path]:
    """(overrides without output_dir, the absolute sweep directory it names)."""
    overrides, sweep_dir = pop_override(overrides, "output_dir")
    if any(override_key(o) == "ckpt_path" for o in overrides):
        raise ConfigError("ckpt_path cannot be swept (-m); resume each run on its own")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    root = Path(sweep_dir or f"multirun/{stamp}").expanduser().resolve()
    return overrides, root


def _check_job(cl: CommandLine, overrides: Sequence[str]):
    """Compose and validate one job's config: a bad key or value stops the sweep early."""
    from forcefield.training.recipe import apply_recipe
    from forcefield.training.train import validate_train_config

    cfg = compose_config(cl.config_name, overrides, cl.config_dir)
    apply_recipe(cfg, overrides)  # as the job's own forcefield train will
    validate_train_config(cfg)
    return cfg


def run_sweep(cl: CommandLine) -> int:
    """Run every job of the sweep; write and print the summary; 0 if every job succeeded."""
    overrides, root = _sweep_dir(list(cl.overrides))
    jobs = expand(overrides)
    swept = _swept_keys(jobs)
    planned = []
    for num, job in enumerate(jobs):
        out = root / _job_name(num, job, swept)
        cfg = _check_job(cl, [*job, f"output_dir={quote(str(out))}"])
        planned.append((num, job, out, cfg))
    if cl.print_config:
        from omegaconf import OmegaConf

        for num, job, _, cfg in planned:
            print(f"# job {num}: {' '.join(job)}\n{OmegaConf.to_yaml(cfg, resolve=True)}")
        return 0
    if (root / "sweep_summary.json").exists():
        raise ConfigError(f"output_dir {root} already holds a sweep; choose another output_dir")
    print(f"forcefield train -m: {len(jobs)} job(s) in {root}", flush=True)
    records = []
    for num, job, out, _ in planned:
        print(f"\n[{num + 1}/{len(jobs)}] forcefield train {' '.join(job)}", flush=True)
        cmd = [sys.executable, "-m", "forcefield", "train", *job, f"output_dir={quote(str(out))}"]
        if Path(cl.config_dir).resolve() != CONFIG_DIR or cl.config_name != "train":
            cmd += ["-cp", str(cl.config_dir), "-cn", cl.config_name]
        code = subprocess.run(cmd, env=dict(os.environ)).returncode
        records.append(_record(num, job, out, code))
    return _finish(root, overrides, records)


def _record(num: int, job: Sequence[str], out: Path, code: int) -> dict:
    record = {"job": num, "overrides": list(job), "output_dir": str(out), "returncode": code}
    metrics = out / "metrics.json"
    if code == 0 and metrics.is_file():
        data = json.loads(metrics.read_text())
        record["test"] = data.get("test", {})
        record["epochs_completed"] = data.get("epochs_completed")
        record["fit_time_s"] = data.get("fit_time_s")
    return record


def _finish(root: Path, overrides: Sequence[str], records: list[dict],
            extra: dict | None = None) -> int:
    summary = {"sweep_dir": str(root), "overrides": list(overrides), **(extra or {}),
               "jobs": records}
    atomic_write_json(root / "sweep_summary.json", summary)
    print("\n" + format_summary(records))
    print(f"\nsweep summary: {root / 'sweep_summary.json'}")
    failed = [r["job"] for r in records if r["returncode"] != 0]
    if failed:
        print(f"forcefield train -m: job(s) {failed} failed", file=sys.stderr)
        return 1
    return 0


def _value(job: Sequence[str], key: str) -> str | None:
    for item in job:
        if override_key(item) == key:
            return item.partition("=")[2]
    return None


def format_summary(records: Sequence[dict]) -> str:
    """One line per job and test split: energy and force errors."""
    lines = [f"{'job':<4} {'split':<12} {'E RMSE meV':>11} {'F RMSE meV/A':>13}  overrides"]
    for r in records:
        what = " ".join(r["overrides"])
        if r["returncode"] != 0:
            lines.append(f"{r['job']:<4} {'FAILED':<12} {'':>11} {'':>13}  {what}")
            continue
        for split, m in (r.get("test") or {"-": {}}).items():
            e, f = m.get("energy_rmse_meV"), m.get("forces_rmse_meV_A")
            lines.append(f"{r['job']:<4} {split:<12} {_num(e):>11} {_num(f):>13}  {what}")
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


# ------------------------------------------------------------------ Hydra's own multirun
def check_plugins(overrides: Sequence[str]) -> None:
    """One sentence naming the pip package of a sweeper/launcher plugin that is missing."""
    for item in overrides:
        choice = item.lstrip("+")
        if choice in PLUGINS:
            module, package = PLUGINS[choice]
            if not installed(module):
                extra = (" (or: pip install 'forcefield[sweep]')"
                         if package in ("hydra-optuna-sweeper", "hydra-submitit-launcher")
                         else "")
                raise ConfigError(f"{choice} needs the Hydra plugin {package}, which is not "
                                  f"installed: pip install {package}{extra}")


def objective(metrics: dict, name: str) -> float | None:
    """The value ``name`` names in a run's ``metrics.json``: a validation metric of the last
    epoch (``val_forces_rmse_meV_A``, ``val_loss``) or a dotted path
    (``test.300K.forces_rmse_meV_A``); None when the run has no such value."""
    node = metrics
    path = name.split(".") if "." in name else ["val_last_epoch", name]
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def hydra_job(cfg) -> float | None:
    """The task of a Hydra multirun: one ``forcefield train`` in the job's output directory;
    returns its ``sweep.objective`` (what an optimising sweeper minimises or maximises)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    from forcefield.training.train import train

    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    from forcefield.training.recipe import apply_recipe

    with read_write(cfg):
        cfg.output_dir = str(out)
        apply_recipe(cfg, list(hydra_cfg.overrides.task))  # init_from: finetune.recipe
    code = train(cfg)
    if code != 0:
        raise RunError(f"the job in {out} failed (exit code {code})")
    name = str(cfg.get("sweep", {}).get("objective") or "val_loss")
    value = objective(json.loads((out / "metrics.json").read_text()), name)
    basic = str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper")
    if value is None and not basic:
        raise ConfigError(f"sweep.objective={name} is not in {out / 'metrics.json'}; name a "
                          "validation metric (val_forces_rmse_meV_A, val_energy_rmse_meV, "
                          "val_loss) or a dotted path (test.<split>.<metric>)")
    return value


def _parsed(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"cannot parse the sweep overrides: {hydra_message(exc)}") from exc


def _fixed(overrides: Sequence[str]) -> list[str]:
    """The overrides that are the same for every job (no sweep syntax, not Hydra's)."""
    return [o.input_line for o in _parsed(overrides)
            if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]


def _hydra_records(root: Path, overrides: Sequence[str]) -> list[dict]:
    """Every job directory Hydra made under ``root`` (it holds ``.hydra/overrides.yaml``);
    each shows the overrides the sweep chose (those of sweep syntax, or that differ)."""
    import yaml

    dirs = [p.parent.parent for p in root.glob("**/.hydra/overrides.yaml")]
    dirs.sort(key=lambda p: (len(p.name), p.name))
    jobs = [yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or [] for d in dirs]
    swept = _swept_keys(jobs) | {o.key_or_group for o in _parsed(overrides)
                                 if o.is_sweep_override()}
    records = []
    for num, (out, job) in enumerate(zip(dirs, jobs, strict=True)):
        shown = [o for o in job if override_key(o) in swept] or list(job)
        code = 0 if (out / "metrics.json").is_file() else 1
        records.append(_record(num, shown, out, code))
    return records


def run_hydra_sweep(cl: CommandLine) -> int:
    """The sweep through Hydra's multirun: sweeper and launcher from the overrides."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_plugins(cl.overrides)
    overrides, root = _sweep_dir(list(cl.overrides))
    plugin_sweeper = any(override_key(o) == "hydra/sweeper" for o in overrides)
    if plugin_sweeper:  # its search space is not expanded here: check the common part
        cfg = _check_job(cl, _fixed(overrides))
    else:
        jobs = expand([o for o in overrides if not override_key(o).startswith("hydra")])
        cfg = _check_job(cl, jobs[0])
        for job in jobs[1:]:
            _check_job(cl, job)
    if cl.print_config:
        hydra_cfg = compose_config(
            cl.config_name, [*_fixed(overrides), *[o for o in overrides
                                                   if override_key(o).startswith("hydra")]],
            cl.config_dir, return_hydra_config=True).hydra
        print(OmegaConf.to_yaml(cfg, resolve=True))
        for part in ("sweeper", "launcher"):
            print(f"# hydra.{part}\n{OmegaConf.to_yaml(hydra_cfg[part])}")
        return 0
    if (root / "sweep_summary.json").exists():
        raise ConfigError(f"output_dir {root} already holds a sweep; choose another output_dir")
    settings = [f"hydra.sweep.dir={quote(str(root))}", "hydra.job.chdir=False",
                *search_path_overrides(cl.config_dir)]
    # optuna's storage imports alembic, whose plugin set-up talks at Hydra's INFO level
    logging.getLogger("alembic").setLevel(logging.WARNING)
    GlobalHydra.instance().clear()
    failure: ForceFieldError | None = None
    root_logger = logging.getLogger()
    saved = (root_logger.level, list(root_logger.handlers))
    try:
        hydra = Hydra.create_main_hydra2(
            task_name="train", config_search_path=create_config_search_path(str(cl.config_dir)))
        hydra.multirun(config_name=cl.config_name, task_function=hydra_job,
                       overrides=[*overrides, *settings])
    except ForceFieldError as exc:
        failure = exc
    except (HydraException, OmegaConfBaseException) as exc:
        failure = ConfigError(hydra_message(exc))
    finally:
        GlobalHydra.instance().clear()
        # Hydra configured logging for its jobs (console + <job>/train.log): put it back
        for handler in root_logger.handlers:
            if handler not in saved[1]:
                handler.close()
        root_logger.handlers[:] = saved[1]
        root_logger.setLevel(saved[0])
    records = _hydra_records(root, overrides) if root.is_dir() else []
    extra = {}
    if (root / "optimization_results.yaml").is_file():
        import yaml

        extra["optimization_results"] = yaml.safe_load(
            (root / "optimization_results.yaml").read_text())
    code = _finish(root, overrides, records, extra) if records else 0
    if failure is not None:
        raise failure
    return code


__all__ = ["PLUGINS", "check_plugins", "expand", "format_summary", "hydra_job", "objective",
           "run_hydra_sweep", "run_multirun", "run_sweep"]
