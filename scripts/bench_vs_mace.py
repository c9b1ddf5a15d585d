#!/usr/bin/env python
"""Train forcefield's default Gaunt-MACE and mace-torch's MACE side by side on 3BPA.

Same data (train_300K, the seeded 450/50 train/valid split of forcefield's
ThreeBPADataModule, E0s from iso_atoms.xyz), same hyperparameters (channels, L, l_sh,
correlation, interactions, radial basis and MLP, readout MLP, r_max), same training
setting (batch 5, Adam amsgrad lr 0.01, EMA 0.99, weights energy 1 / forces 1000,
ReduceLROnPlateau 0.8/50, no stage two / SWA, float64, seed 0) and the same number of
epochs. Reports the
wall time per epoch (training + validation; median over epochs) and the test_300K /
test_600K total-energy and force-component RMSE of both.

mace-torch runs in its own environment (``scripts/setup_mace_env.sh`` creates
.venv-mace), as a subprocess: ``mace_run_train`` then ``mace_eval_configs``.

    python scripts/bench_vs_mace.py --epochs 3 --threads 1 [--test-limit 500]
        [--json bench_vs_mace.json] [--skip-mace] [--skip-ours]

Equal wall time (``--wall-time MINUTES``): every code gets the same wall-clock budget for
its fit (training + validation) on the same split, one after the other, and the table
reports the epochs each completed and its test errors (full test sets by default):

* forcefield's default run, exactly ``forcefield train`` (the default model, cosine
  schedule and stage two following the time budget, float32) with
  ``trainer.max_time`` set to the budget;
* mace-torch's MACE in a common small setting (32 channels, L = 1, max_ell 3,
  correlation 3, 2 interactions, float32);
* mace-torch's MACE matched to our default model (channels, L, l_sh, correlation,
  interactions, radial basis and MLP, readout, r_max, float64).

Both MACE runs use the default run's training setting where mace-torch has it (batch 5,
Adam amsgrad lr 0.01, EMA 0.99, weights energy 1 / forces 1000, stage two / SWA for the
last 25 % with weights 1000 / 100 and lr 1e-3) and mace-torch's own ReduceLROnPlateau.
mace-torch cannot stop by time, so a 1-epoch probe run measures its pace first and the
real run gets the epochs that fit in the budget (reported: its actual fit time).

    python scripts/bench_vs_mace.py --wall-time 9 --threads 2 --json equal_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MACE_PY = ROOT / ".venv-mace" / "bin" / "python"

SETTING = {
    "batch_size": 5,
    "lr": 0.01,
    "ema_decay": 0.99,
    "energy_weight": 1.0,
    "forces_weight": 1000.0,
    "plateau_factor": 0.8,
    "plateau_patience": 50,
    "weight_decay": 5e-7,
    "clip_grad": 10.0,
    "seed": 0,
    "dtype": "float64",
}


def model_hyperparameters() -> dict:
    from forcefield.models import PRESETS

    return dict(PRESETS["gaunt_mace_small"])


def split_3bpa(work: Path, test_limit: int | None) -> dict[str, Path]:
    """Write train/valid/test extxyz files with REF_energy/REF_forces (forcefield's split)."""
    from ase.io import read, write

    from forcefield.data import embedded_3bpa_dir

    root = embedded_3bpa_dir()
    frames = read(root / "train_300K.xyz", ":")
    perm = np.random.default_rng(0).permutation(len(frames))  # ThreeBPADataModule(seed=0)
    valid_idx, train_idx = np.sort(perm[:50]), np.sort(perm[50:500])

    def ref(atoms):
        atoms = atoms.copy() if atoms.calc is None else atoms
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        atoms.info = {"REF_energy": float(e)}
        atoms.arrays["REF_forces"] = np.asarray(f)
        return atoms

    files = {}
    for name, idx in (("train", train_idx), ("valid", valid_idx)):
        files[name] = work / f"{name}.xyz"
        write(files[name], [ref(frames[i]) for i in idx], format="extxyz")
    for split in ("300K", "600K"):
        index = ":" if test_limit is None else f":{test_limit}"
        test = read(root / "derived_mdbenchgnn" / f"test_{split}.xyz", index)
        files[f"test_{split}"] = work / f"test_{split}.xyz"
        write(files[f"test_{split}"], [ref(a) for a in test], format="extxyz")
    iso = read(root / "iso_atoms.xyz", ":")
    files["e0s"] = {int(a.numbers[0]): float(a.get_potential_energy()) for a in iso}
    return files


def errors(ref_e, pred_e, ref_f, pred_f) -> dict:
    de = np.asarray(pred_e) - np.asarray(ref_e)
    df = np.concatenate([np.asarray(p) - np.asarray(r) for p, r in zip(pred_f, ref_f,
                                                                        strict=True)])
    return {"energy_rmse_meV": 1000 * float(np.sqrt(np.mean(de**2))),
            "forces_rmse_meV_A": 1000 * float(np.sqrt(np.mean(df**2))),
            "n_structures": int(len(de))}


# ---------------------------------------------------------------------------- ours
def run_ours(work: Path, epochs: int | None, threads: int, test_limit: int | None,
             wall_time_s: float | None = None) -> dict:
    """Our run: the matched setting for ``epochs`` epochs, or (``wall_time_s``) exactly the
    default ``forcefield train`` with its fit limited to that many seconds."""
    out = work / ("forcefield_run" if wall_time_s is None else "forcefield_default_run")
    if wall_time_s is not None:
        args = [sys.executable, "-m", "forcefield", "train", f"output_dir={out}",
                f"trainer.max_time={_dhms(wall_time_s)}", "trainer.enable_progress_bar=false"]
    else:
        args = _matched_ours_args(out, epochs)
    if test_limit is not None:
        args.append(f"data.test_limit={test_limit}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=work)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"forcefield train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    import csv

    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    epoch_times = [float(r["epoch_time_s"]) for r in rows]
    summary = json.loads((out / "metrics.json").read_text())
    test = summary["test"]
    return {
        "epoch_time_s": statistics.median(epoch_times),
        "epoch_times_s": epoch_times,
        "epochs": len(rows),
        "fit_s": float(summary["fit_time_s"]),
        "total_wall_s": wall,
        "test": {s: {k: test[s][k] for k in ("energy_rmse_meV", "forces_rmse_meV_A",
                                             "n_structures")} for s in test},
    }


def _dhms(seconds: float) -> str:
    """Lightning's max_time format, DD:HH:MM:SS."""
    s = int(round(seconds))
    return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _matched_ours_args(out: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "forcefield", "train", f"output_dir={out}",
        f"seed={SETTING['seed']}", f"dtype={SETTING['dtype']}",
        f"data.batch_size={SETTING['batch_size']}", "data.stats_cache=false",
        f"training.optimizer.lr={SETTING['lr']}", "training.optimizer.amsgrad=true",
        f"training.optimizer.weight_decay={SETTING['weight_decay']}",
        f"training.ema.decay={SETTING['ema_decay']}",
        f"training.loss.energy_weight={SETTING['energy_weight']}",
        f"training.loss.forces_weight={SETTING['forces_weight']}",
        "training.scheduler.name=plateau", "training.stage_two.enabled=false",
        f"training.scheduler.factor={SETTING['plateau_factor']}",
        f"training.scheduler.patience={SETTING['plateau_patience']}",
        f"trainer.gradient_clip_val={SETTING['clip_grad']}",
        f"trainer.max_epochs={epochs}", "trainer.max_time=null",
        "trainer.enable_progress_bar=false",
    ]


# ---------------------------------------------------------------------------- mace
_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+)")


def _mace_epoch_times(log_text: str) -> list[float]:
    """Seconds between consecutive validation lines ('Initial:', 'Epoch N:') of the log."""
    stamps = []
    for line in log_text.splitlines():
        m = _STAMP.match(line)
        if m and re.search(r"(Initial|Epoch \d+):", line) and "loss" in line:
            stamps.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f"))
    return [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]


def matched_mace_spec(dtype: str) -> dict:
    """mace-torch hyperparameters equal to our default model's (gaunt_mace_small)."""
    hp = model_hyperparameters()
    c, lmax = hp["channels"], hp["lmax"]
    return {"hidden_irreps": "+".join(f"{c}x{l}{'e' if l % 2 == 0 else 'o'}"
                                      for l in range(lmax + 1)),
            "max_ell": hp["lmax_sh"], "correlation": hp["correlation"],
            "num_interactions": hp["num_interactions"], "r_max": hp["r_max"],
            "num_radial": hp["num_radial"], "radial_mlp": list(hp["radial_mlp"]),
            "readout": hp["readout_mlp"], "dtype": dtype}


# a common small MACE: 32 channels, L = 1, max_ell 3, correlation 3, 2 interactions;
# r_max, radial basis, radial MLP and readout are mace-torch's defaults
MACE_SMALL = {"hidden_irreps": "32x0e+32x1o", "max_ell": 3, "correlation": 3,
              "num_interactions": 2, "r_max": 5.0, "num_radial": 8,
              "radial_mlp": [64, 64, 64], "readout": 16, "dtype": "float32"}


def run_mace(work: Path, files: dict, epochs: int, threads: int, spec: dict | None = None,
             tag: str = "mace_run", swa_start: int | None = None,
             evaluate: bool = True) -> dict:
    """Train mace-torch's MACE (``spec``: hyperparameters, default the matched ones in
    SETTING's dtype) for ``epochs`` epochs; with ``swa_start``, stage two (SWA) from that
    epoch with our stage-two weights and lr; then evaluate the test splits."""
    if not MACE_PY.is_file():
        raise RuntimeError(f"{MACE_PY} is missing: run scripts/setup_mace_env.sh first")
    spec = spec or matched_mace_spec(SETTING["dtype"])
    mace_dir = work / tag
    mace_dir.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    args = [
        str(MACE_PY), "-m", "mace.cli.run_train",
        "--name", "mace_bench", "--work_dir", str(mace_dir), "--seed", str(SETTING["seed"]),
        "--train_file", str(files["train"]), "--valid_file", str(files["valid"]),
        "--energy_key", "REF_energy", "--forces_key", "REF_forces",
        "--E0s", json.dumps({str(k): v for k, v in files["e0s"].items()}).replace('"', ""),
        "--model", "ScaleShiftMACE", "--scaling", "rms_forces_scaling",
        "--hidden_irreps", spec["hidden_irreps"], "--max_ell", str(spec["max_ell"]),
        "--correlation", str(spec["correlation"]), "--num_interactions",
        str(spec["num_interactions"]), "--r_max", str(spec["r_max"]),
        "--num_radial_basis", str(spec["num_radial"]),
        "--radial_MLP", json.dumps(spec["radial_mlp"]), "--MLP_irreps", f"{spec['readout']}x0e",
        "--loss", "weighted", "--energy_weight", str(SETTING["energy_weight"]),
        "--forces_weight", str(SETTING["forces_weight"]),
        "--batch_size", str(SETTING["batch_size"]), "--valid_batch_size", "20",
        "--lr", str(SETTING["lr"]), "--amsgrad", "--weight_decay", str(SETTING["weight_decay"]),
        "--ema", "--ema_decay", str(SETTING["ema_decay"]),
        "--scheduler", "ReduceLROnPlateau", "--lr_factor", str(SETTING["plateau_factor"]),
        "--scheduler_patience", str(SETTING["plateau_patience"]),
        "--clip_grad", str(SETTING["clip_grad"]),
        "--max_num_epochs", str(epochs), "--eval_interval", "1", "--patience", "1000",
        "--default_dtype", spec["dtype"], "--device", "cpu", "--num_workers", "0",
    ]
    if swa_start is not None:
        args += ["--swa", "--start_swa", str(swa_start), "--swa_energy_weight", "1000",
                 "--swa_forces_weight", "100", "--swa_lr", "0.001"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=mace_dir)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mace_run_train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    logs = sorted((mace_dir / "logs").glob("*.log"))
    log_text = logs[-1].read_text() if logs else proc.stdout + proc.stderr
    epoch_times = _mace_epoch_times(log_text)
    model = final_mace_model(mace_dir)
    result = {
        "epoch_time_s": statistics.median(epoch_times) if epoch_times else wall / epochs,
        "epoch_times_s": epoch_times,
        "epochs": epochs,
        "fit_s": sum(epoch_times),
        "total_wall_s": wall,
        "spec": spec,
    }
    if not evaluate:
        return result
    result["test"] = evaluate_mace(mace_dir, model, files, spec["dtype"], env)
    result["total_wall_s"] = time.perf_counter() - t0
    return result


def evaluate_mace(mace_dir: Path, model: Path, files: dict, dtype: str, env: dict) -> dict:
    """Test errors of a mace-torch model on the 300K and 600K splits (mace_eval_configs)."""
    test = {}
    from ase.io import read

    for split in ("300K", "600K"):
        pred_file = mace_dir / f"pred_{split}.xyz"
        ev = subprocess.run(
            [str(MACE_PY), "-m", "mace.cli.eval_configs", "--configs",
             str(files[f"test_{split}"]), "--model", str(model), "--output", str(pred_file),
             "--device", "cpu", "--default_dtype", dtype, "--batch_size", "20"],
            capture_output=True, text=True, env=env, cwd=mace_dir)
        if ev.returncode != 0:
            raise RuntimeError(f"mace_eval_configs failed:\n{ev.stderr[-3000:]}")
        refs = read(files[f"test_{split}"], ":")
        preds = read(pred_file, ":")
        test[split] = errors([a.info["REF_energy"] for a in refs],
                             [a.info["MACE_energy"] for a in preds],
                             [a.arrays["REF_forces"] for a in refs],
                             [a.arrays["MACE_forces"] for a in preds])
    return test


def final_mace_model(mace_dir: Path) -> Path:
    """The model mace-torch ends with: the stage-two (SWA) model when there was a stage two
    (``mace_bench.model`` is then the stage-one best), else the only one."""
    for name in ("mace_bench_stagetwo.model", "mace_bench.model"):
        if (mace_dir / name).is_file():
            return mace_dir / name
    raise RuntimeError(f"mace_run_train wrote no model in {mace_dir}")


def run_mace_for(work: Path, files: dict, budget_s: float, threads: int, spec: dict,
                 tag: str) -> dict:
    """mace-torch within a wall-clock budget: a 1-epoch probe measures the pace (its first
    epoch, the slowest), then the real run trains the epochs that fit, with SWA for the last
    25 % as our stage two."""
    probe = run_mace(work, files, 1, threads, spec, tag=f"{tag}_probe", evaluate=False)
    pace = max(probe["epoch_times_s"] or [probe["total_wall_s"]])
    epochs = max(1, int(budget_s // pace))
    print(f"  {tag}: {pace:.1f} s per epoch in the probe -> {epochs} epochs", flush=True)
    result = run_mace(work, files, epochs, threads, spec, tag=tag,
                      swa_start=max(1, int(round(0.75 * epochs))))
    result["probe_epoch_s"] = pace
    return result


def _error_cells(test: dict) -> str:
    """The four test errors of a result as table cells."""
    return " | ".join(f"{test[split][key]:.1f}" for split in ("300K", "600K")
                      for key in ("energy_rmse_meV", "forces_rmse_meV_A"))


def table(results: dict) -> str:
    lines = ["| model | s/epoch | 300K E RMSE (meV) | 300K F RMSE (meV/A) | "
             "600K E RMSE (meV) | 600K F RMSE (meV/A) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['epoch_time_s']:.1f} | {_error_cells(r['test'])} |")
    return "\n".join(lines)


def equal_time_table(results: dict, budget_s: float) -> str:
    lines = [f"fit budget {budget_s / 60:.1f} min each",
             "| model | epochs | fit (min) | total with test (min) | 300K E RMSE (meV) | "
             "300K F RMSE (meV/A) | 600K E RMSE (meV) | 600K F RMSE (meV/A) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['epochs']} | {r['fit_s'] / 60:.1f} | "
                     f"{r['total_wall_s'] / 60:.1f} | {_error_cells(r['test'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--wall-time", type=float, default=None, metavar="MINUTES",
                        help="equal wall time: each code's fit gets this budget (the epochs "
                             "mode's --epochs is then unused)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP/MKL threads of each code (default 1: on a shared 2-core "
                             "machine 2 threads are oversubscribed)")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="evaluate only the first N structures of each test split")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-mace", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    args = parser.parse_args(argv)
    # absolute: each code runs with its own working directory
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bench_vs_mace_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    files = split_3bpa(work, args.test_limit)
    results = {}
    if args.wall_time is not None:
        budget = 60.0 * args.wall_time
        if not args.skip_ours:
            print(f"forcefield: the default run, fit limited to {args.wall_time} min ...",
                  flush=True)
            results["forcefield default (gaunt_mace_small, float32)"] = run_ours(
                work, None, args.threads, args.test_limit, wall_time_s=budget)
        if not args.skip_mace:
            print("mace-torch: small MACE (32x0e+32x1o, max_ell 3, float32) ...", flush=True)
            results["mace-torch MACE 32x0e+32x1o, max_ell 3 (float32)"] = run_mace_for(
                work, files, budget, args.threads, MACE_SMALL, "mace_small")
            print("mace-torch: MACE matched to our default model (float64) ...", flush=True)
            results["mace-torch MACE matched to ours (float64)"] = run_mace_for(
                work, files, budget, args.threads, matched_mace_spec("float64"),
                "mace_matched")
        print(equal_time_table(results, budget))
        report = {"setting": {**SETTING, "wall_time_min": args.wall_time,
                              "threads": args.threads, "test_limit": args.test_limit},
                  "results": results}
    else:
        if not args.skip_ours:
            print(f"forcefield: training {args.epochs} epochs ...", flush=True)
            results["forcefield GauntMACE (gaunt_mace_small)"] = run_ours(
                work, args.epochs, args.threads, args.test_limit)
        if not args.skip_mace:
            print(f"mace-torch: training {args.epochs} epochs ...", flush=True)
            results["mace-torch MACE (same hyperparameters)"] = run_mace(
                work, files, args.epochs, args.threads)
        report = {"setting": {**SETTING, "epochs": args.epochs, "threads": args.threads,
                              "test_limit": args.test_limit, "model": model_hyperparameters()},
                  "results": results}
        print(table(results))
        if len(results) == 2:
            ours, mace = results.values()
            print(f"\nwall time per epoch, forcefield / mace-torch: "
                  f"{ours['epoch_time_s'] / mace['epoch_time_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"work directory: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
