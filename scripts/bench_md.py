#!/usr/bin/env python
"""MD throughput through the ASE calculator: forcefield vs mace-torch, side by side.

For each system (the 27-atom 3BPA molecule; a 972-atom periodic box of 36 randomly
rotated 3BPA molecules at ~0.85 g/cm^3, and a 216-atom one) and each model size (our
default ``gaunt_mace_small`` and the paper-size ``gaunt_mace``; mace-torch's
``ScaleShiftMACE`` with the same channels, L, l_max of the spherical harmonics,
correlation order, interactions, radial basis and MLP), ASE velocity-Verlet steps
(0.5 fs) run through ``ForceFieldCalculator`` and through mace-torch's
``MACECalculator``; each case in its own process. The median step time is reported
(robust to other processes competing for the CPU). Models are randomly initialised:
the speed does not depend on the weights. For our calculator the time spent outside
the model's forward/backward (neighbour list, tensor conversion, results, the
integrator) is reported as a fraction of the step.

mace-torch is not a dependency of forcefield: it lives in .venv-mace
(scripts/setup_mace_env.sh) and its cases run with that interpreter.

The "before" column is our calculator on its torch route (FORCEFIELD_NO_CPU_KERNEL=1: no
fused C kernels, as on a GPU or an install without a compiler), run interleaved with the
others, so the kernels' own gain is visible.

    python scripts/bench_md.py                                 # everything, 1 thread, float64
    python scripts/bench_md.py --threads 2 --cases bulk:gaunt_mace_small molecule:gaunt_mace
    python scripts/bench_md.py --json bench_md.json --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "3bpa"
DEFAULT_MACE_PYTHON = ROOT / ".venv-mace" / "bin" / "python"
PRESET_LABEL = {"gaunt_mace_small": "default (small)", "gaunt_mace": "paper-size"}
# name -> grid of 3BPA molecules in the periodic box (None: the free molecule)
SYSTEMS = {"molecule": None, "bulk": (3, 3, 4), "bulk216": (2, 2, 2)}
# The paper-size model on the 972-atom box needs ~15 GB (float64) per process, so by
# default it runs on the 216-atom box; ask for bulk:gaunt_mace explicitly on a big machine.
DEFAULT_CASES = ["molecule:gaunt_mace_small", "molecule:gaunt_mace", "bulk:gaunt_mace_small",
                 "bulk216:gaunt_mace"]


# ----------------------------------------------------------------------------- systems
def molecule():
    import ase.io

    return ase.io.read(DATA / "train_300K.xyz", 0)


def packed_box(grid=(3, 3, 4), spacing: float = 7.3, min_dist: float = 1.5, seed: int = 0):
    """3BPA molecules, randomly rotated, one per grid cell of a periodic box (972 atoms)."""
    import numpy as np
    from ase import Atoms
    from scipy.spatial.transform import Rotation

    mol = molecule()
    ref = mol.positions - mol.positions.mean(0)
    rng = np.random.default_rng(seed)
    lengths = np.array(grid, float) * spacing
    placed = np.zeros((0, 3))
    for idx in np.ndindex(*grid):
        centre = (np.array(idx) + 0.5) * spacing
        for _ in range(5000):
            rot = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
            trial = ref @ rot.T + centre
            if len(placed):
                d = trial[:, None, :] - placed[None, :, :]
                d -= lengths * np.round(d / lengths)
                if np.sqrt((d**2).sum(-1)).min() < min_dist:
                    continue
            placed = np.concatenate([placed, trial])
            break
        else:
            raise RuntimeError("could not pack the box; lower min_dist or raise spacing")
    n = len(placed) // len(mol)
    atoms = Atoms(numbers=np.tile(mol.numbers, n), positions=placed, cell=np.diag(lengths),
                  pbc=True)
    atoms.wrap()
    return atoms


def e0s() -> dict[int, float]:
    import ase.io

    return {int(a.numbers[0]): float(a.get_potential_energy())
            for a in ase.io.read(DATA / "iso_atoms.xyz", ":")}


def avg_neighbours(atoms, r_max: float) -> float:
    from ase.neighborlist import neighbor_list

    return len(neighbor_list("i", atoms, r_max)) / len(atoms)


# ----------------------------------------------------------------------------- workers
def build_ours(args, preset, atoms):
    import torch

    from forcefield.calculator import ForceFieldCalculator
    from forcefield.export import save_model
    from forcefield.models import build_model

    stats = {"species": sorted(e0s()), "e0s": e0s(),
             "avg_num_neighbors": avg_neighbours(atoms, preset["r_max"]),
             "mean_interaction_energy_per_atom": 0.0, "force_rms": 1.0}
    torch.manual_seed(0)
    model = build_model(preset, stats).to(getattr(torch, args.dtype))
    # the deployment path: model file -> load_model -> calculator
    path = Path(tempfile.mkdtemp(prefix="bench_md_model_")) / "model.pt"
    save_model(path, model)
    calc = ForceFieldCalculator(path, device=args.device, dtype=args.dtype)
    # time the model's own forward (+ autograd forces) separately
    timer = {"model": 0.0}
    forward = calc.model.forward

    def timed_forward(*a, **k):
        t0 = time.perf_counter()
        out = forward(*a, **k)
        if str(args.device).startswith("cuda"):
            torch.cuda.synchronize()
        timer["model"] += time.perf_counter() - t0
        return out

    calc.model.forward = timed_forward
    return calc, timer


def build_mace(args, preset, atoms):
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules
    from mace.calculators import MACECalculator

    table = e0s()
    zs = sorted(table)
    lmax, c = preset["lmax"], preset["channels"]
    hidden = " + ".join(f"{c}x{l}{'eo'[l % 2]}" for l in range(lmax + 1))
    torch.set_default_dtype(getattr(torch, args.dtype))  # mace builds in the default dtype
    torch.manual_seed(0)
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
        atomic_energies=np.array([table[z] for z in zs]),
        avg_num_neighbors=avg_neighbours(atoms, preset["r_max"]),
        atomic_numbers=zs,
        correlation=preset["correlation"],
        gate=torch.nn.functional.silu,
        radial_MLP=preset["radial_mlp"],
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    calc = MACECalculator(models=[model], device=args.device, default_dtype=args.dtype)
    return calc, None


def worker(args) -> dict:
    if args.worker != "mace":
        import forcefield  # noqa: F401  before torch, as users import it: sets its OpenMP spin default
    import ase.io
    import numpy as np
    import torch
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    torch.set_num_threads(args.threads)
    # the parent resolves the preset: the mace-torch environment has no forcefield
    # dependencies (torch_geometric, ...) and must not import forcefield
    preset = json.loads(args.preset_json)
    atoms = ase.io.read(args.structure)
    t0 = time.perf_counter()
    calc, timer = (build_mace if args.worker == "mace" else build_ours)(args, preset, atoms)
    setup = time.perf_counter() - t0
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(args.warmup)  # first calls: lazy initialisation, allocator warm-up
    if timer is not None:
        timer["model"] = 0.0
    steps = 0
    durations = []
    model_times = []
    t0 = time.perf_counter()
    while steps < args.steps and (steps < 2 or time.perf_counter() - t0 < args.max_seconds):
        m0 = timer["model"] if timer is not None else 0.0
        s0 = time.perf_counter()
        dyn.run(1)
        durations.append(time.perf_counter() - s0)
        if timer is not None:
            model_times.append(timer["model"] - m0)
        steps += 1
    elapsed = time.perf_counter() - t0
    # the median step: robust to other processes competing for the CPU now and then
    median = float(np.median(durations))
    result = {
        "impl": {"ours": "forcefield", "before": "before"}.get(args.worker, "mace-torch"),
        "preset": args.preset,
        "natoms": len(atoms),
        "steps": steps,
        "seconds": elapsed,
        "steps_per_second": 1.0 / median,
        "mean_steps_per_second": steps / elapsed,
        "ms_per_step": 1000 * median,
        "setup_s": setup,
        "params": sum(p.numel() for p in (calc.models[0] if args.worker == "mace"
                                          else calc.model).parameters()),
        "threads": args.threads,
        "dtype": args.dtype,
    }
    if timer is not None:
        outside = float(np.median(np.array(durations) - np.array(model_times)))
        result["outside_model_ms"] = 1000 * outside
        result["outside_model_fraction"] = outside / median
    return result


# ----------------------------------------------------------------------------- driver
def run_case(python, args, impl, preset, structure) -> dict:
    from forcefield.models import PRESETS

    cmd = [str(python), __file__, "--worker", impl, "--preset", preset,
           "--preset-json", json.dumps(PRESETS[preset]), "--structure",
           str(structure), "--threads", str(args.threads), "--dtype", args.dtype, "--device",
           args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--max-seconds", str(args.max_seconds)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(ROOT), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    if impl == "before":  # our calculator on its torch route
        env["FORCEFIELD_NO_CPU_KERNEL"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"impl": impl, "preset": preset, "error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES,
                        help="SYSTEM:PRESET pairs; systems: " + ", ".join(SYSTEMS))
    parser.add_argument("--impls", nargs="+", default=["ours", "before", "mace"],
                        choices=["ours", "before", "mace"],
                        help="before: ours on the torch route (no fused C kernels)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=50, help="max timed MD steps per case")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="stop timing a case after this long (at least 2 steps)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating rounds per case (best round kept)")
    parser.add_argument("--case-budget", type=float, default=90.0,
                        help="no further rounds once a case has taken this many seconds")
    parser.add_argument("--mace-python", default=str(DEFAULT_MACE_PYTHON))
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--worker", choices=["ours", "before", "mace"], help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--preset-json", help=argparse.SUPPRESS)
    parser.add_argument("--structure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    mace_python = Path(args.mace_python)
    impls = list(args.impls)
    if "mace" in impls and not mace_python.exists():
        print(f"note: {mace_python} not found (run scripts/setup_mace_env.sh); "
              "skipping mace-torch", file=sys.stderr)
        impls.remove("mace")
    tmp = Path(tempfile.mkdtemp(prefix="bench_md_"))
    cases = [tuple(c.split(":", 1)) for c in args.cases]
    structures = {}
    for system, _ in cases:
        if system not in SYSTEMS:
            parser.error(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
        if system not in structures:
            structures[system] = tmp / f"{system}.extxyz"
            grid = SYSTEMS[system]
            (molecule() if grid is None else packed_box(grid=grid)).write(structures[system])

    results = []
    for system, preset in cases:
        best: dict[str, dict] = {}
        start = time.perf_counter()
        for round_ in range(args.repeats):
            # alternate the implementations; keep each one's best round (other processes
            # on a shared machine only ever slow a round down)
            if round_ and time.perf_counter() - start > args.case_budget:
                break
            for impl in impls:
                python = mace_python if impl == "mace" else sys.executable
                res = run_case(python, args, impl, preset, structures[system])
                res["system"] = system
                res["load_average"] = os.getloadavg()[0]
                label = ("ERROR " + res["error"]) if "error" in res else (
                    f"{res['steps_per_second']:8.3f} steps/s ({res['steps']} steps, "
                    f"{res['natoms']} atoms, load {res['load_average']:.1f})")
                print(f"{system:9s} {preset:17s} {impl:5s} {label}", file=sys.stderr,
                      flush=True)
                old = best.get(impl)
                if old is None or res.get("steps_per_second", 0) > old.get("steps_per_second", 0):
                    res["rounds"] = round_ + 1
                    best[impl] = res
                else:
                    old["rounds"] = round_ + 1
        results.extend(best.values())

    print(f"\nMD (velocity Verlet, 0.5 fs) through the ASE calculator; {args.dtype}, "
          f"{args.threads} thread(s), device {args.device}\n", flush=True)
    print("| system | atoms | model | forcefield steps/s | before (torch route) steps/s |"
          " kernel gain | mace-torch steps/s | speed-up vs mace | outside model | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for system, preset in cases:
        ours = next((r for r in results if r["system"] == system and r["preset"] == preset
                     and r.get("impl") in ("forcefield", "ours")), {})
        theirs = next((r for r in results if r["system"] == system and r["preset"] == preset
                       and r.get("impl") in ("mace-torch", "mace")), {})
        old = next((r for r in results if r["system"] == system and r["preset"] == preset
                    and r.get("impl") == "before"), {})
        a, b = ours.get("steps_per_second"), theirs.get("steps_per_second")
        c = old.get("steps_per_second")
        speed = f"{a / b:.2f}x" if a and b else "-"
        gain = f"{a / c:.2f}x" if a and c else "-"
        frac = ours.get("outside_model_fraction")
        load = max((r.get("load_average", 0.0) for r in (ours, old, theirs)), default=0.0)
        print(f"| {system} | {ours.get('natoms', theirs.get('natoms', '-'))} | "
              f"{preset} ({PRESET_LABEL.get(preset, '')}) | "
              f"{f'{a:.3f}' if a else ours.get('error', '-')} | "
              f"{f'{c:.3f}' if c else old.get('error', '-')} | {gain} | "
              f"{f'{b:.3f}' if b else theirs.get('error', '-')} | {speed} | "
              f"{f'{100 * frac:.1f}%' if frac is not None else '-'} | {load:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
