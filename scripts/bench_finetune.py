"""Fine-tuning benchmark: a 300K-trained 3BPA model fine-tuned on 600K structures.

Reproduces the figures of docs/finetuning.md (issue 25):

1. 2138 structures of the embedded 600K test set are split with a fixed seed into
   ``--n-train`` (300) fine-tuning structures and ``--n-heldout`` (500) held-out ones;
2. every variant (``--variant NAME='override ...'``; the defaults: the fine-tuning recipe,
   the recipe with replay of the 300K training data, the from-scratch recipe that
   ``init_from`` used before, and, with ``--scratch-epochs``, a new model trained on the same
   300 structures) runs ``forcefield train`` for ``--epochs`` epochs;
3. each model (and the base model) is evaluated with ``forcefield evaluate`` on the held-out
   600K structures and on the whole 300K test set.

4. with ``--committee``: ``forcefield select`` ranks a pool (the 300 fine-tuning 600K
   structures + 200 300K test structures) and fine-tuning on its top ``--select-top`` is
   compared with fine-tuning on as many random pool structures (600K error, three seeds).

Usage (the base model: ``forcefield train output_dir=runs/base``, ~10 min)::

    python scripts/bench_finetune.py --base runs/base/model.pt --out runs/bench_ft
    python scripts/bench_finetune.py --base runs/base/model.pt --out runs/grid \\
        --variant lr3e-3='training.optimizer.lr=0.003' --no-defaults
    python scripts/bench_finetune.py --base runs/base/model.pt --out runs/bench_select \\
        --committee runs/committee/*/model.pt --select-only

Writes ``<out>/bench_finetune.json`` and prints a Markdown table (force RMSE in meV/A,
energy RMSE in meV, wall time of the fit).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "3bpa"
TEST_600K = DATA / "derived_mdbenchgnn" / "test_600K.xyz"
TEST_300K = DATA / "derived_mdbenchgnn" / "test_300K.xyz"
TRAIN_300K = DATA / "train_300K.xyz"


def split_600k(out: Path, n_train: int, n_heldout: int, seed: int) -> tuple[Path, Path]:
    """Seeded disjoint fine-tuning and held-out sets drawn from the 600K test set."""
    from ase.io import read, write

    frames = read(str(TEST_600K), ":")
    if n_train + n_heldout > len(frames):
        raise SystemExit(f"{TEST_600K} has {len(frames)} structures, fewer than "
                         f"--n-train + --n-heldout = {n_train + n_heldout}")
    perm = np.random.default_rng(seed).permutation(len(frames))
    train, held = out / "ft_600K.xyz", out / "heldout_600K.xyz"
    write(str(train), [frames[i] for i in sorted(perm[:n_train])])
    write(str(held), [frames[i] for i in sorted(perm[n_train:n_train + n_heldout])])
    return train, held


def forcefield(*args: str, log: Path) -> float:
    """Run ``python -m forcefield ARGS`` (output to ``log``); its wall time in seconds."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.run([sys.executable, "-m", "forcefield", *args], stdout=handle,
                              stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise SystemExit(f"forcefield {args[0]} failed (exit {code}); see {log}")
    return time.perf_counter() - t0


def evaluate(model: Path, held: Path, out: Path) -> dict[str, dict[str, float]]:
    """600K (held out) and 300K test errors of ``model``."""
    forcefield("evaluate", f"model={model}", "data=ase",
               f"data.test={{600K: '{held}', 300K: '{TEST_300K}'}}", "predictions=false",
               "plots=false", f"output_dir={out}", log=out.with_suffix(".log"))
    return json.loads((out / "metrics.json").read_text())["test"]


def select_benchmark(args: argparse.Namespace, out: Path, train: Path, held: Path,
                     common: list[str]) -> dict[str, dict]:
    """Fine-tuning on the ``--select-top`` structures that ``forcefield select`` ranks
    highest in a pool (the 300 fine-tuning 600K structures + the last 200 of the 300K test
    set) against as many random structures of the pool; 600K error, three seeds each."""
    from ase.io import read, write

    pool = out / "pool.xyz"
    write(str(pool), read(str(TEST_300K), "-200:") + read(str(train), ":"))
    models = "[" + ",".join(str(m.resolve()) for m in args.committee) + "]"
    forcefield("select", f"models={models}", f"candidates={pool}", f"top={args.select_top}",
               f"output_dir={out / 'select'}", log=out / "select.log")
    summary = json.loads((out / "select" / "select_summary.json").read_text())
    frames = read(str(pool), ":")
    n = len(frames)
    results: dict[str, dict] = {"pool": {"n": n, "n_600K": n - 200}}
    for seed in range(3):
        picks = {"selected": out / "select" / "selected.extxyz"}
        chosen = np.random.default_rng(100 + seed).choice(n, args.select_top, replace=False)
        picks["random"] = out / f"random_{seed}.xyz"
        write(str(picks["random"]), [frames[i] for i in sorted(chosen)])
        for name, data in picks.items():
            run_dir = out / f"sel_{name}_{seed}"
            overrides = [f"data.train={data}", f"init_from={args.base.resolve()}",
                         f"trainer.max_epochs={args.epochs}", f"seed={seed}"]
            forcefield("train", *[c for c in common if not c.startswith("data.train=")],
                       *overrides, f"output_dir={run_dir}", log=run_dir.with_suffix(".log"))
            forcefield("evaluate", f"model={run_dir / 'model.pt'}", "data=ase",
                       f"data.test={{600K: '{held}'}}", "predictions=false", "plots=false",
                       f"output_dir={run_dir / 'eval'}", log=run_dir.with_suffix(".eval.log"))
            test = json.loads((run_dir / "eval" / "metrics.json").read_text())["test"]
            entry = results.setdefault(name, {"forces_rmse_meV_A": []})
            entry["forces_rmse_meV_A"].append(test["600K"]["forces_rmse_meV_A"])
    selected_600k = sum(c["index"] >= 200 for c in summary["candidates"]
                        if c["rank"] <= args.select_top)
    results["selected"]["n_600K"] = selected_600k
    for name in ("selected", "random"):
        values = results[name]["forces_rmse_meV_A"]
        print(f"fine-tuned on {args.select_top} {name} pool structures: 600K forces RMSE "
              f"{np.mean(values):.1f} meV/A (seeds: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"600K structures among the selected: {selected_600k} of {args.select_top}")
    return results


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    """name -> ``forcefield train`` overrides of every variant to run."""
    out: dict[str, list[str]] = {}
    if not args.no_defaults:
        out["recipe"] = []
        out["recipe+replay"] = [f"finetune.replay={TRAIN_300K}"]
        out["scratch recipe"] = ["finetune.recipe=null"]
    for item in args.variant:
        name, _, overrides = item.partition("=")
        out[name] = shlex.split(overrides)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the 300K model.pt")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-heldout", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="the 600K split")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME='override ...' (repeatable): another fine-tune to run")
    parser.add_argument("--no-defaults", action="store_true",
                        help="run only the --variant fine-tunes")
    parser.add_argument("--scratch-epochs", type=int, default=0,
                        help="also train a new model on the 300 structures for this many "
                             "epochs (0: skip)")
    parser.add_argument("--committee", type=Path, nargs="+", default=[],
                        help="model files of a committee: also compare fine-tuning on the "
                             "structures forcefield select ranks highest with random ones")
    parser.add_argument("--select-top", type=int, default=100)
    parser.add_argument("--select-only", action="store_true",
                        help="with --committee: only the selection comparison")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    train, held = split_600k(out, args.n_train, args.n_heldout, args.seed)
    common = ["data=ase", f"data.train={train}", "data.stats_cache=false",
              "trainer.max_time=null", "test.enabled=false", "trainer.enable_progress_bar=false"]
    if args.committee:
        selection = select_benchmark(args, out, train, held, common)
        (out / "bench_select.json").write_text(json.dumps(selection, indent=2))
        if args.select_only:
            return 0
    results: dict[str, dict] = {"base": {"errors": evaluate(args.base.resolve(), held,
                                                             out / "eval_base")}}
    runs = {name: [f"init_from={args.base.resolve()}", f"trainer.max_epochs={args.epochs}",
                   *extra] for name, extra in variants(args).items()}
    if args.scratch_epochs:
        runs["from scratch"] = [f"data.e0s={DATA / 'iso_atoms.xyz'}",
                                f"trainer.max_epochs={args.scratch_epochs}"]
    for k, (name, overrides) in enumerate(runs.items()):
        run_dir = out / f"run{k}"
        print(f"[{name}] forcefield train {' '.join(overrides)}", flush=True)
        seconds = forcefield("train", *common, *overrides, f"output_dir={run_dir}",
                             log=out / f"run{k}.log")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        results[name] = {"overrides": overrides, "fit_time_s": metrics["fit_time_s"],
                         "wall_s": seconds, "epochs": metrics["epochs_completed"],
                         "best_epoch": metrics.get("best_epoch"),
                         "errors": evaluate(run_dir / "model.pt", held, out / f"eval{k}")}
        (out / "bench_finetune.json").write_text(json.dumps(results, indent=2))
    base = results["base"]["errors"]
    print("\n| model | 600K forces RMSE | 600K energy RMSE | 300K forces RMSE | fit (s) |")
    print("|---|---|---|---|---|")
    for name, res in results.items():
        e = res["errors"]
        cells = []
        for split in ("600K", "300K"):
            value = e[split]["forces_rmse_meV_A"]
            ratio = value / base[split]["forces_rmse_meV_A"] - 1
            cells.append(f"{value:.1f}" + ("" if name == "base" else f" ({100 * ratio:+.0f} %)"))
        print(f"| {name} | {cells[0]} | {e['600K']['energy_rmse_meV']:.1f} | {cells[1]} | "
              f"{res.get('fit_time_s', 0):.0f} |")
    print(f"\nwrote {out / 'bench_finetune.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
