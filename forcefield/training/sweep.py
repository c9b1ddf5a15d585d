"""``forcefield train -m key=a,b ...``: a Hydra multirun sweep, one complete run per job.

The sweep overrides are expanded as Hydra's basic sweeper does (the cartesian product of
every ``key=a,b`` / ``key=range(...)`` / ``key=choice(...)``). Every job's config is
composed and checked before the first job starts, so a typo costs nothing. Each job is a
``forcefield train`` of its own process (so a DDP job spawns its workers as usual and a
failed job does not stop the others), writing a complete run directory
``<sweep_dir>/<n>_<overrides>``. At the end ``<sweep_dir>/sweep_summary.json`` lists every
job (overrides, run directory, exit code, test metrics) and a table of the test errors is
printed.

``output_dir`` names the sweep directory (default ``multirun/<date>_<time>``).
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from forcefield.atomic_io import atomic_write_json
from forcefield.training.config import CommandLine, ConfigError, compose_config, pop_override


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The override list of every job of the sweep (Hydra's basic-sweeper semantics)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"cannot parse the sweep overrides: {exc}") from exc
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _job_name(num: int, job: Sequence[str], swept: set[str]) -> str:
    parts = [o for o in job if o.split("=", 1)[0].lstrip("+~") in swept]
    text = ",".join(parts)
    safe = "".join(c if c.isalnum() or c in "-_.=," else "_" for c in text)[:80]
    return f"{num}_{safe}" if safe else str(num)


def run_sweep(cl: CommandLine) -> int:
    """Run every job of the sweep; write and print the summary; 0 if every job succeeded."""
    overrides, sweep_dir = pop_override(list(cl.overrides), "output_dir")
    if any(o.split("=", 1)[0] == "ckpt_path" for o in overrides):
        raise ConfigError("ckpt_path cannot be swept (-m); resume each run on its own")
    jobs = expand(overrides)
    keys = {o.split("=", 1)[0].lstrip("+~") for job in jobs for o in job}
    swept = {k for k in keys if len({_value(job, k) for job in jobs}) > 1}
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    root = Path(sweep_dir or f"multirun/{stamp}").expanduser().resolve()
    planned = []
    for num, job in enumerate(jobs):
        out = root / _job_name(num, job, swept)
        # compose now: a bad key or value stops the sweep before any job runs
        compose_config(cl.config_name, [*job, _dir_override(out)], cl.config_dir)
        planned.append((num, job, out))
    if cl.print_config:
        from omegaconf import OmegaConf

        for num, job, out in planned:
            cfg = compose_config(cl.config_name, [*job, _dir_override(out)], cl.config_dir)
            print(f"# job {num}: {' '.join(job)}\n{OmegaConf.to_yaml(cfg, resolve=True)}")
        return 0
    if (root / "sweep_summary.json").exists():
        raise ConfigError(f"output_dir {root} already holds a sweep; choose another output_dir")
    print(f"forcefield train -m: {len(jobs)} job(s) in {root}", flush=True)
    records = []
    for num, job, out in planned:
        print(f"\n[{num + 1}/{len(jobs)}] forcefield train {' '.join(job)}", flush=True)
        cmd = [sys.executable, "-m", "forcefield", "train", *job, _dir_override(out)]
        if _custom_dir(cl) or cl.config_name != "train":
            cmd += ["-cp", str(cl.config_dir), "-cn", cl.config_name]
        code = subprocess.run(cmd, env=dict(os.environ)).returncode
        record = {"job": num, "overrides": list(job), "output_dir": str(out),
                  "returncode": code}
        metrics = out / "metrics.json"
        if code == 0 and metrics.is_file():
            import json

            data = json.loads(metrics.read_text())
            record["test"] = data.get("test", {})
            record["epochs_completed"] = data.get("epochs_completed")
            record["fit_time_s"] = data.get("fit_time_s")
        records.append(record)
    summary = {"sweep_dir": str(root), "overrides": list(overrides), "jobs": records}
    atomic_write_json(root / "sweep_summary.json", summary)
    print("\n" + format_summary(records))
    print(f"\nsweep summary: {root / 'sweep_summary.json'}")
    failed = [r["job"] for r in records if r["returncode"] != 0]
    if failed:
        print(f"forcefield train -m: job(s) {failed} failed", file=sys.stderr)
        return 1
    return 0


def _dir_override(path: Path) -> str:
    """``output_dir='...'``: quoted, as job directory names hold '=' (``0_seed=1``)."""
    text = str(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"output_dir='{text}'"


def _custom_dir(cl: CommandLine) -> bool:
    from forcefield.training.config import CONFIG_DIR

    return Path(cl.config_dir).resolve() != CONFIG_DIR


def _value(job: Sequence[str], key: str) -> str | None:
    for item in job:
        k, _, v = item.partition("=")
        if k.lstrip("+~") == key:
            return v
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


__all__ = ["expand", "format_summary", "run_sweep"]
