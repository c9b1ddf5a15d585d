#!/usr/bin/env python
"""The Gaunt Selfmix ablation: GauntEquiformerV2 with and without its selfmix sub-layer,
everything else equal (data, split, seed, epochs, optimiser), several seeds each.

Two tasks, each a set of ``forcefield train`` runs (one subprocess per run, so the runs
are exactly what a user would launch):

* ``3bpa``: the small preset with conservative gradient forces (``experiment=3bpa_eqv2``)
  on a seeded subset of 3BPA train_300K; test 300K and 600K energy / force RMSE.
* ``emt``: S2EF-style synthetic slabs (small fcc(111)/(100) metal slabs with one adsorbate,
  EMT labels, bottom layers fixed), the small preset with *direct* forces and the
  EquiformerV2 S2EF loss (``experiment=oc20_s2ef_eqv2``, 20-neighbour cap); test energy
  MAE, force MAE, force cosine and EFwT over free atoms.

On a 2-core CPU a run of the small preset costs ~1-3 s per structure and step, so the
defaults train on small subsets for a few epochs (an hour for both tasks with ``--jobs
2``); raise ``--train-size`` / ``--epochs`` where there is more compute.

    python scripts/ablate_selfmix.py --task 3bpa --seeds 0 1 --jobs 2
    python scripts/ablate_selfmix.py --task emt --seeds 0 1 --jobs 2
    python scripts/ablate_selfmix.py --task both --json ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# every element the EMT slabs can hold (metals and adsorbate atoms): a small test set may
# hold one that a small training set lacks
EMT_SPECIES = (1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79)

COLUMNS = {
    "3bpa": [("300K", "energy_rmse_meV", "E RMSE 300K (meV)"),
             ("300K", "forces_rmse_meV_A", "F RMSE 300K (meV/A)"),
             ("600K", "energy_rmse_meV", "E RMSE 600K (meV)"),
             ("600K", "forces_rmse_meV_A", "F RMSE 600K (meV/A)")],
    "emt": [("emt", "energy_mae_meV", "E MAE (meV)"),
            ("emt", "forces_mae_meV_A", "F MAE (meV/A)"),
            ("emt", "forces_cos", "F cos"),
            ("emt", "efwt", "EFwT")],
}


def emt_data(work: Path, train: int, test: int, seed: int = 2024) -> dict[str, Path]:
    """Write seeded EMT slab sets (train and a disjoint test set) once; reuse them after."""
    from ase.io import write

    from forcefield.data import emt_structures

    paths = {"train": work / f"emt_train_{train}_{seed}.extxyz",
             "test": work / f"emt_test_{test}_{seed + 1}.extxyz"}
    for (name, path), n, s in zip(paths.items(), (train, test), (seed, seed + 1), strict=True):
        if not path.exists():
            frames = emt_structures(n, seed=s, kind="slab", size=(2, 2, 3))
            tmp = path.with_suffix(".tmp.extxyz")
            write(tmp, frames, format="extxyz")
            tmp.replace(path)
            print(f"wrote {len(frames)} EMT slabs ({name}) to {path}", flush=True)
    return paths


def overrides(task: str, args, seed: int, selfmix: bool, out: Path, data: dict) -> list[str]:
    common = [f"seed={seed}", f"model.selfmix={str(selfmix).lower()}", "dtype=float32",
              f"trainer.max_epochs={args.epochs}", "trainer.max_time=null",
              "training.stage_two.enabled=false", "trainer.enable_progress_bar=false",
              "export.enabled=false", "test.predictions=false", f"output_dir={out}"]
    if task == "3bpa":
        return ["experiment=3bpa_eqv2", f"data.train_size={args.train_size}",
                f"data.valid_size={args.valid_size}", f"data.test_limit={args.test_size}",
                "data.test_splits=[300K,600K]", f"data.batch_size={args.batch_size}",
                *common]
    return ["experiment=oc20_s2ef_eqv2", "model=gaunt_equiformer_v2_small",
            "model.forces=direct", "model.max_neighbors=20", "data.max_neighbors=20",
            f"model.species=[{','.join(str(z) for z in EMT_SPECIES)}]",
            f"data.train={data['train']}", f"data.test={{emt: {data['test']}}}",
            f"data.valid_fraction={args.valid_size / args.train_size:.4f}",
            f"data.batch_size={args.batch_size}",
            "data.num_workers=0",
            "training.optimizer.lr=0.002", "training.scheduler.warmup_epochs=0.5",
            "training.ema.decay=0.99", *common]


def run_one(task: str, args, seed: int, selfmix: bool, data: dict) -> dict:
    out = args.workdir / f"{task}_seed{seed}_selfmix_{'on' if selfmix else 'off'}"
    metrics = out / "metrics.json"
    if not (args.reuse and metrics.exists()):
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, "-m", "forcefield", "train",
               *overrides(task, args, seed, selfmix, out, data)]
        print("$ " + " ".join(cmd[2:]), flush=True)
        start = time.perf_counter()
        log = args.workdir / f"{out.name}.log"
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"{out.name} failed (exit {proc.returncode}); see {log}")
        print(f"{out.name}: {time.perf_counter() - start:.0f} s", flush=True)
    result = json.loads(metrics.read_text())["test"]
    return {"task": task, "seed": seed, "selfmix": selfmix, "test": result}


def _cell(key: str, values: list) -> str:
    """The mean of the runs' values of one metric (n/a without any), as a table cell."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    return f"{mean:.3f}" if key in ("forces_cos", "efwt") else f"{mean:.1f}"


def table(rows: list[dict], task: str) -> str:
    cols = COLUMNS[task]
    lines = ["| seed | selfmix | " + " | ".join(c[2] for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]

    def line(label, runs: list[dict], selfmix: bool) -> str:
        cells = [_cell(key, [r["test"].get(split, {}).get(key) for r in runs])
                 for split, key, _ in cols]
        return f"| {label} | {'on' if selfmix else 'off'} | " + " | ".join(cells) + " |"

    lines += [line(row["seed"], [row], row["selfmix"]) for row in rows]
    lines += [line("mean", [r for r in rows if r["selfmix"] == selfmix], selfmix)
              for selfmix in (True, False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["3bpa", "emt", "both"], default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-size", type=int, default=None,
                        help="training structures (3bpa: 30, emt: 120)")
    parser.add_argument("--valid-size", type=int, default=None, help="3bpa: 6, emt: 12")
    parser.add_argument("--test-size", type=int, default=None,
                        help="test structures per split (3bpa: 40, emt: 60)")
    parser.add_argument("--epochs", type=int, default=None, help="3bpa: 6, emt: 8")
    parser.add_argument("--batch-size", type=int, default=None, help="3bpa: 2, emt: 4")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ablate_selfmix")
    parser.add_argument("--reuse", action="store_true",
                        help="read the metrics of runs already in --workdir instead of rerunning")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()  # the runs work in ROOT, the user maybe elsewhere
    args.workdir.mkdir(parents=True, exist_ok=True)
    defaults = {"3bpa": dict(train_size=30, valid_size=6, test_size=40, epochs=6, batch_size=2),
                "emt": dict(train_size=120, valid_size=12, test_size=60, epochs=8, batch_size=4)}
    tasks = ["3bpa", "emt"] if args.task == "both" else [args.task]
    report = {}
    for task in tasks:
        targs = argparse.Namespace(**vars(args))
        for key, value in defaults[task].items():
            if getattr(targs, key) is None:
                setattr(targs, key, value)
        data = emt_data(args.workdir, targs.train_size, targs.test_size) if task == "emt" else {}
        jobs = [(seed, selfmix) for seed in args.seeds for selfmix in (True, False)]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda j, t=task, a=targs, d=data: run_one(t, a, j[0], j[1], d),
                                 jobs))
        settings = {k: getattr(targs, k) for k in defaults[task]}
        print(f"\n{task}: {settings}, {args.threads} thread(s) per run\n")
        print(table(rows, task))
        report[task] = {"settings": settings, "runs": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
