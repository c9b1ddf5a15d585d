"""MD-step time of one model eager, compiled (``compile=True``) and exported (``.pt2``), and
training-step time eager vs compiled (``training.compile=true``).

For each case (system:preset) and dtype, the same untrained-but-perturbed model is run
through ``ForceFieldCalculator`` three ways on the same structure, interleaved, and the
median time of an energy + forces call with the structure moved a little each step (new
neighbour list every call, as in MD) is printed with the ratios against eager, the
compile / export time and the first-call latency.

    python scripts/bench_compile.py --threads 2 --dtype float64 --steps 20 \\
        --cases molecule:gaunt_mace_small bulk:gaunt_mace_small

Systems: ``molecule`` (the 27-atom 3BPA molecule) and ``bulk`` (the 972-atom periodic box
of scripts/bench_md.py). ``--training`` times instead one optimiser step (energies, forces
with their double backward, loss gradient, Adam) on batches of ``--batch`` 3BPA structures:

    python scripts/bench_compile.py --training --cases gaunt_mace_small \
        gaunt_equiformer_v2_small --batch 5 --steps 12

Run it on an idle machine: ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import copy
import runpy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model, its widest vector unit and the kernels' instruction set."""
    from forcefield.runtime import cpu_description

    return cpu_description()


def structure(name: str):
    systems = runpy.run_path(str(ROOT / "scripts" / "bench_md.py"))
    return systems["molecule"]() if name == "molecule" else systems["packed_box"]()


def model(preset: str, dtype: torch.dtype) -> torch.nn.Module:
    from forcefield.models import build_model

    torch.manual_seed(0)
    config = {"name": preset, "species": [1, 6, 7, 8], "avg_num_neighbors": 15.0,
              "e0s": {1: -13.6, 6: -1029.4, 7: -1484.9, 8: -2041.8}, "energy_shift": -4.9,
              "energy_scale": 0.95}
    net = build_model(config).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def timed_calls(calc, atoms, steps: int, seed: int = 0) -> tuple[float, list[float]]:
    """(first-call seconds, per-call seconds of the next ``steps`` calls)."""
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    atoms.get_forces()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        atoms.positions += 0.005 * rng.normal(size=atoms.positions.shape)
        start = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
    return first, times


def run_case(case: str, dtype: torch.dtype, steps: int, folder: Path) -> dict:
    from forcefield import ForceFieldCalculator
    from forcefield.pt2 import export_pt2

    system, preset = case.split(":")
    atoms = structure(system)
    net = model(preset, dtype)
    start = time.perf_counter()
    package = export_pt2(copy.deepcopy(net), folder / f"{preset}_{system}.pt2", dtype)
    export_s = time.perf_counter() - start
    calcs = {"eager": ForceFieldCalculator(net),
             "compiled": ForceFieldCalculator(copy.deepcopy(net), compile=True),
             "exported": ForceFieldCalculator(str(package))}
    first, samples = {}, {name: [] for name in calcs}
    for name, calc in calcs.items():
        first[name], _ = timed_calls(calc, atoms, 1)
    for round_ in range(3):  # interleaved rounds
        for name, calc in calcs.items():
            samples[name] += timed_calls(calc, atoms, max(1, steps // 3), seed=round_)[1]
    median = {name: statistics.median(values) for name, values in samples.items()}
    return {"case": case, "natoms": len(atoms), "median_ms": median, "first_s": first,
            "export_s": export_s}


def training_case(preset: str, dtype: torch.dtype, steps: int, batch_size: int) -> dict:
    """Median seconds of one training step, eager and compiled, on the same batches."""
    import ase.io
    from torch_geometric.data import Batch

    from forcefield.data import AtomicData
    from forcefield.training.compiled import CompiledTraining

    frames = ase.io.read(ROOT / "data" / "3bpa" / "train_300K.xyz", f":{4 * batch_size}")
    net = model(preset, dtype).train()
    r_max = float(net.config["r_max"])
    graphs = [AtomicData.from_ase(a, r_max=r_max) for a in frames]
    batches = [Batch.from_data_list(graphs[k:k + batch_size])
               for k in range(0, len(graphs), batch_size)]
    nets = {"eager": net, "compiled": copy.deepcopy(net)}
    compiled = CompiledTraining(nets["compiled"])
    forward = {"eager": lambda b: nets["eager"](b, compute_forces=True, training=True),
               "compiled": lambda b: compiled(b, compute_forces=True, compute_stress=False)}
    optimisers = {name: torch.optim.Adam(n.parameters(), lr=1e-4) for name, n in nets.items()}

    def step(name: str, batch) -> float:
        start = time.perf_counter()
        out = forward[name](batch)
        loss = ((out["energy"] - batch.energy.to(dtype)) ** 2).mean() + \
            ((out["forces"] - batch.forces.to(out["forces"].dtype)) ** 2).mean()
        optimisers[name].zero_grad()
        loss.backward()
        optimisers[name].step()
        return time.perf_counter() - start

    first = {name: step(name, batches[0]) for name in nets}
    samples: dict[str, list[float]] = {name: [] for name in nets}
    for k in range(steps):
        for name in nets:
            samples[name].append(step(name, batches[k % len(batches)]))
    return {"case": preset, "median_s": {n: statistics.median(v) for n, v in samples.items()},
            "first_s": first, "atoms": int(batches[0].num_nodes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["molecule:gaunt_mace_small",
                                                       "bulk:gaunt_mace_small",
                                                       "molecule:gaunt_mace"])
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--training", action="store_true",
                        help="time training steps; --cases are then presets")
    parser.add_argument("--batch", type=int, default=5, help="structures per training batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.training:
        print(f"# {cpu_name()}, torch {torch.__version__}, {args.threads} threads, "
              f"{args.dtype}, training steps on batches of {args.batch} 3BPA structures")
        print("| preset | atoms per batch | eager ms | compiled ms | speed-up | "
              "first step eager / compiled s |")
        print("|---|---:|---:|---:|---:|---|")
        for case in args.cases:
            r = training_case(case, dtype, args.steps, args.batch)
            m, f = r["median_s"], r["first_s"]
            print(f"| {case} | {r['atoms']} | {1e3 * m['eager']:.1f} | "
                  f"{1e3 * m['compiled']:.1f} | {m['eager'] / m['compiled']:.2f}x | "
                  f"{f['eager']:.2f} / {f['compiled']:.0f} |", flush=True)
        return
    print(f"# {cpu_name()}, torch {torch.__version__}, "
          f"{args.threads} threads, {args.dtype}")
    print("| case | atoms | eager ms | compiled ms | exported ms | speed-up compiled | "
          "speed-up exported | first call eager / compiled / exported s | export s |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            r = run_case(case, dtype, args.steps, Path(tmp))
            m, f = r["median_ms"], r["first_s"]
            print(f"| {case} | {r['natoms']} | {1e3 * m['eager']:.2f} | "
                  f"{1e3 * m['compiled']:.2f} | {1e3 * m['exported']:.2f} | "
                  f"{m['eager'] / m['compiled']:.2f}x | {m['eager'] / m['exported']:.2f}x | "
                  f"{f['eager']:.2f} / {f['compiled']:.1f} / {f['exported']:.2f} | "
                  f"{r['export_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
