"""``forcefield train -m ...``: a multirun sweep, one complete run directory per job.

The overrides are expanded as Hydra's basic sweeper does (the cartesian product of every
``key=a,b`` / ``key=range(...)`` / ``key=choice(...)``), every job's config is composed and
checked before the first job starts (a typo costs nothing), and each job is a
``forcefield train`` of its own process (a DDP job spawns its workers as usual; a failed job
does not stop the others), writing ``<sweep_dir>/<n>_<overrides>``.

At the end ``<sweep_dir>/sweep_summary.json`` lists every job (overrides, run directory, exit
code, test metrics) and a table of the test errors is printed. ``output_dir`` names the sweep
directory (default ``multirun/<date>_<time>``).
"""

from __future__ import annotations

import datetime as _dt
import json
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
)
from forcefield.errors import ConfigError


def run_multirun(cl: CommandLine) -> int:
    """``forcefield train -m``: the basic sweep of one process per job."""
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
    from forcefield.training.train import validate_train_config

    cfg = compose_config(cl.config_name, overrides, cl.config_dir)
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


def _finish(root: Path, overrides: Sequence[str], records: list[dict]) -> int:
    summary = {"sweep_dir": str(root), "overrides": list(overrides), "jobs": records}
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


__all__ = ["expand", "format_summary", "run_multirun", "run_sweep"]
