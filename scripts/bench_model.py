#!/usr/bin/env python
"""Benchmark GauntMACE against mace-torch's MACE with matched hyperparameters.

Measures, per preset, a training step (energy + forces forward, loss on both, backward
through the force graph) and inference (energy + forces) on batches of 3BPA structures,
side by side in one run. Every (model, preset, mode) runs in a fresh subprocess so its
peak memory can be measured: on CPU the growth of the peak resident set size over the
resident size after setup (model and batches built, before the first step), on CUDA
``torch.cuda.max_memory_allocated`` (model and batches included).

mace-torch is not a dependency of forcefield: it lives in .venv-mace (created by
scripts/setup_mace_env.sh) and its side runs with that interpreter.

A third column, "before", runs GauntMACE on its torch route (FORCEFIELD_NO_CPU_KERNEL=1:
no fused C kernels, as on a GPU or an install without a compiler), side by side, so the
kernels' own gain is visible (--no-before skips it).

    python scripts/bench_model.py                    # both presets, 1 thread
    python scripts/bench_model.py --presets gaunt_mace --threads 2 --json bench.json
    python scripts/bench_model.py --device cuda --batch-size 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "3bpa"
DEFAULT_MACE_PYTHON = ROOT / ".venv-mace" / "bin" / "python"


# ----------------------------------------------------------------------------- helpers
def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_structures(n: int):
    import ase.io

    atoms = ase.io.read(DATA / "train_300K.xyz", f":{n}")
    iso = ase.io.read(DATA / "iso_atoms.xyz", ":")
    e0s = {int(a.numbers[0]): float(a.get_potential_energy()) for a in iso}
    return atoms, e0s


def _targets(atoms_list, torch, dtype, device):
    import numpy as np

    energy = torch.tensor([a.get_potential_energy() for a in atoms_list], dtype=dtype)
    forces = torch.tensor(np.concatenate([a.get_forces() for a in atoms_list]), dtype=dtype)
    return energy.to(device), forces.to(device)


def _avg_neighbours(atoms_list, r_max: float) -> float:
    from ase.neighborlist import neighbor_list

    edges = sum(len(neighbor_list("i", a, r_max)) for a in atoms_list)
    return edges / sum(len(a) for a in atoms_list)


def _time_loop(step, n_warmup: int, n_steps: int, sync) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, steps) of ``n_steps`` timed steps."""
    for _ in range(n_warmup):
        step()
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    k = 0
    while k < n_steps:
        step()
        k += 1
    sync()
    return time.perf_counter() - t0, time.process_time() - c0, k


# ----------------------------------------------------------------------------- workers
def _gaunt_batches(atoms_list, cfg, batch_size, device):
    import numpy as np
    import torch
    from ase.neighborlist import neighbor_list
    from torch_geometric.data import Batch, Data

    graphs = []
    for atoms in atoms_list:
        i, j, s = neighbor_list("ijS", atoms, cfg["r_max"])
        graphs.append(
            Data(
                pos=torch.tensor(atoms.positions, dtype=torch.float64),
                atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.long),
                cell=torch.zeros(1, 3, 3, dtype=torch.float64),
                pbc=torch.zeros(1, 3, dtype=torch.bool),
                natoms=torch.tensor([len(atoms)]),
                edge_index=torch.tensor(np.stack([i, j]), dtype=torch.long),
                cell_shifts=torch.tensor(s, dtype=torch.long),
            )
        )
    return [
        Batch.from_data_list(graphs[k : k + batch_size]).to(device)
        for k in range(0, len(graphs), batch_size)
    ]


def worker_gaunt(args, preset: dict, atoms_list, e0s, avg_nn):
    import torch

    from forcefield.models import build_model

    stats = {
        "species": sorted(e0s),
        "e0s": e0s,
        "avg_num_neighbors": avg_nn,
        "mean_interaction_energy_per_atom": 0.0,
        "force_rms": 1.0,
    }
    model = build_model(preset, stats).to(args.device, getattr(torch, args.dtype))
    batches = _gaunt_batches(atoms_list, model.config, args.batch_size, args.device)

    def run(batch, training):
        return model(batch, compute_forces=True, training=training)

    return model, batches, run


def worker_mace(args, preset: dict, atoms_list, e0s, avg_nn):
    import numpy as np
    import torch
    from e3nn import o3
    from mace import data as mdata
    from mace import modules
    from mace.tools import torch_geometric, utils

    torch.set_default_dtype(getattr(torch, args.dtype))
    zs = sorted(e0s)
    z_table = utils.AtomicNumberTable(zs)
    lmax, c = preset["lmax"], preset["channels"]
    parity = ["e", "o"]
    hidden = " + ".join(f"{c}x{l}{parity[l % 2]}" for l in range(lmax + 1))
    model = modules.ScaleShiftMACE(
        r_max=preset["r_max"],
        num_bessel=preset["num_radial"],
        num_polynomial_cutoff=5,
        max_ell=preset["lmax_sh"],
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=preset["num_interactions"],
        num_elements=len(zs),
        hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps(f"{preset['readout_mlp']}x0e"),
        atomic_energies=np.array([e0s[z] for z in zs]),
        avg_num_neighbors=avg_nn,
        atomic_numbers=zs,
        correlation=preset["correlation"],
        gate=torch.nn.functional.silu,
        radial_MLP=preset["radial_mlp"],
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    ).to(args.device)
    configs = [mdata.config_from_atoms(a) for a in atoms_list]
    graphs = [
        mdata.AtomicData.from_config(cf, z_table=z_table, cutoff=preset["r_max"]) for cf in configs
    ]
    loader = torch_geometric.dataloader.DataLoader(
        graphs, batch_size=args.batch_size, shuffle=False
    )
    batches = [b.to(args.device).to_dict() for b in loader]

    def run(batch, training):
        out = model(batch, training=training, compute_force=True)
        return {"energy": out["energy"], "forces": out["forces"]}

    return model, batches, run


def worker(args) -> dict:
    if args.worker == "gaunt":
        import forcefield  # noqa: F401  before torch, as users import it: sets its OpenMP spin default

    import torch

    torch.set_num_threads(args.threads)
    # the parent resolves the preset: the mace-torch environment has no forcefield
    # dependencies (torch_geometric, ...) and must not import forcefield
    preset = json.loads(args.preset_json)
    n_structures = args.batch_size * args.num_batches
    atoms_list, e0s = _load_structures(n_structures)
    avg_nn = _avg_neighbours(atoms_list, preset["r_max"])
    make = worker_gaunt if args.worker == "gaunt" else worker_mace
    model, batches, run = make(args, preset, atoms_list, e0s, avg_nn)
    dtype = getattr(torch, args.dtype)
    targets = [
        _targets(atoms_list[k : k + args.batch_size], torch, dtype, args.device)
        for k in range(0, n_structures, args.batch_size)
    ]
    cuda = str(args.device).startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    counter = {"k": 0}

    def train_step():
        k = counter["k"] % len(batches)
        counter["k"] += 1
        model.zero_grad(set_to_none=True)
        out = run(batches[k], True)
        e_ref, f_ref = targets[k]
        loss = ((out["energy"].to(dtype) - e_ref) ** 2).mean() + (
            (out["forces"].to(dtype) - f_ref) ** 2
        ).mean()
        loss.backward()

    def infer_step():
        k = counter["k"] % len(batches)
        counter["k"] += 1
        out = run(batches[k], False)
        out["forces"].sum().item()

    step = train_step if args.mode == "train" else infer_step
    if args.mode == "train":
        model.train()
    else:
        model.eval()
    # peak memory: growth of the peak RSS over the RSS after setup (model, data on the
    # device), covering the untimed first step and the timed ones
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base_rss = _rss_mb()
    step()  # first call: lazy tables, allocator warm-up
    sync()
    elapsed, cpu_s, n = _time_loop(step, 1, args.steps, sync)
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = max(_peak_rss_mb() - base_rss, 0.0)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "model": args.worker,
        "preset": args.preset,
        "mode": args.mode,
        "steps_per_s": n / elapsed,
        "ms_per_structure": 1000 * elapsed / (n * args.batch_size),
        "cpu_s_per_step": cpu_s / n,
        "peak_mb": peak_mb,
        "params": n_params,
        "avg_num_neighbors": avg_nn,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": str(args.device),
        "dtype": args.dtype,
    }


# ----------------------------------------------------------------------------- driver
def preset_json(name: str) -> str:
    """The preset's hyperparameters as JSON, for a worker that cannot import forcefield."""
    from forcefield.models import PRESETS

    return json.dumps(PRESETS[name])


def run_one(python: str, impl: str, preset: str, mode: str, args) -> dict | None:
    """One measurement in a fresh process; impl "before" is GauntMACE on its torch route."""
    torch_route = impl == "before"
    impl = "gaunt" if torch_route else impl
    cmd = [
        python, str(Path(__file__).resolve()), "--worker", impl, "--preset", preset,
        "--preset-json", preset_json(preset), "--mode", mode, "--batch-size",
        str(args.batch_size), "--num-batches", str(args.num_batches), "--steps",
        str(args.steps), "--threads", str(args.threads), "--device", args.device, "--dtype",
        args.dtype,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    if torch_route:
        env["FORCEFIELD_NO_CPU_KERNEL"] = "1"
    if impl == "mace":
        # e3nn 0.4.4 (pinned by mace-torch) torch.load()s its own constants.pt, which
        # torch >= 2.6 refuses under the weights_only default: allow it for that process.
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        print(f"[{impl} {preset} {mode}] failed:\n{res.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["gaunt_mace", "gaunt_mace_small"])
    p.add_argument("--modes", nargs="+", default=["train", "infer"])
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--num-batches", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (1: reliable on a shared machine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--mace-python", default=str(DEFAULT_MACE_PYTHON))
    p.add_argument("--no-mace", action="store_true", help="only benchmark GauntMACE")
    p.add_argument("--no-before", action="store_true",
                   help="skip the 'before' column (GauntMACE on its torch route)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--worker", choices=["gaunt", "mace"], help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--preset-json", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    have_mace = not args.no_mace and Path(args.mace_python).exists()
    if not args.no_mace and not have_mace:
        print(f"no mace-torch interpreter at {args.mace_python}: run scripts/setup_mace_env.sh "
              "(or pass --no-mace)", file=sys.stderr)
    results = []
    for preset in args.presets:
        for mode in args.modes:
            row = {"preset": preset, "mode": mode}
            ours = run_one(sys.executable, "gaunt", preset, mode, args)
            before = None if args.no_before else run_one(sys.executable, "before", preset,
                                                         mode, args)
            theirs = run_one(args.mace_python, "mace", preset, mode, args) if have_mace else None
            row["gaunt"], row["before"], row["mace"] = ours, before, theirs
            if ours and before:
                row["kernel_speedup"] = ours["steps_per_s"] / before["steps_per_s"]
                row["kernel_memory_ratio"] = ours["peak_mb"] / max(before["peak_mb"], 1e-9)
            if ours and theirs:
                row["speedup"] = ours["steps_per_s"] / theirs["steps_per_s"]
                row["memory_ratio"] = ours["peak_mb"] / max(theirs["peak_mb"], 1e-9)
                row["cpu_time_ratio"] = theirs["cpu_s_per_step"] / ours["cpu_s_per_step"]
            results.append(row)
            _print_row(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _print_row(row: dict) -> None:
    def fmt(r):
        if not r:
            return "      n/a"
        return (f"{r['steps_per_s']:7.3f}/s {r['ms_per_structure']:8.1f} ms/str "
                f"{r['peak_mb']:8.0f} MB")

    extra = ""
    if row.get("before"):
        extra += (f" | before {fmt(row['before'])}  kernels x{row['kernel_speedup']:.2f}"
                  f" memory x{row['kernel_memory_ratio']:.2f}")
    if "speedup" in row:
        extra += (f"  vs mace x{row['speedup']:.2f} (CPU time x{row['cpu_time_ratio']:.2f})"
                 f"  memory x{row['memory_ratio']:.2f}")
    print(f"{row['preset']:17s} {row['mode']:5s}  gaunt {fmt(row['gaunt'])} | "
          f"mace {fmt(row['mace'])}{extra}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
