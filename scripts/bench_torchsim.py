"""Batched MD in TorchSim against one structure after another through ASE.

For each case, ``n`` copies of a system (different 3BPA frames for molecules, the same
packed box for ``box``) are simulated with velocity-Verlet NVE for ``--steps`` steps: once
as one TorchSim batch (``forcefield.integrations.torch_sim.ForceFieldModel``, one model call
per step for all systems), once one after another through ASE's ``VelocityVerlet`` with
``ForceFieldCalculator`` (one model call per system and step).  Both include their first
force call.  Printed: aggregate MD steps per second (system-steps / wall time) of each,
their ratio, the time of one ASE step, of one calculator call (energy and forces, new
neighbour list) and of the bare model call inside it (a prebuilt graph), interleaved; their
difference is the per-call overhead (neighbour list, input building, conversions) that a
batched step pays once per state instead of once per system.

    python scripts/bench_torchsim.py --threads 2 --steps 20            # CPU: 64 molecules
    python scripts/bench_torchsim.py --device cuda --steps 50          # GPU: 512 molecules,
                                                                       # 972-atom box x 16

Cases are ``molecules:N`` (N 3BPA frames, 27 atoms each) and ``box:N`` (N copies of the
972-atom periodic box of scripts/bench_md.py).  ``--ase-sample k`` runs only k systems
through ASE and counts the same steps per second for the rest (every system costs the
same there); the default runs all of them on the CPU and 16 on a GPU.  Weights are a
``gaunt_mace_small`` with perturbed untrained weights unless ``--model`` names a file:
timings only.  Ratios are measured side by side; run on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import runpy
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from forcefield.runtime import cpu_description

    return cpu_description()


def build_model(preset: str, dtype: torch.dtype, path: str | None) -> torch.nn.Module:
    """The model file at ``path``, else the perturbed preset of scripts/bench_compile.py."""
    from forcefield.export import load_model

    if path:
        return load_model(path, dtype=dtype)
    return runpy.run_path(str(ROOT / "scripts" / "bench_compile.py"))["model"](preset, dtype)


def systems(case: str) -> list:
    """The systems of ``molecules:N`` or ``box:N``, with 300 K Maxwell-Boltzmann momenta."""
    from ase.md import velocitydistribution

    # ASE 3.29 renamed MaxwellBoltzmannDistribution (same arguments)
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or \
        velocitydistribution.MaxwellBoltzmannDistribution

    kind, count = case.split(":")
    count = int(count)
    if kind == "molecules":
        frames = ase.io.read(ROOT / "data" / "3bpa" / "train_300K.xyz", f":{count}")
        out = [a.copy() for a in frames]
        for atoms in out:
            atoms.cell = np.zeros((3, 3))
            atoms.pbc = False
    elif kind == "box":
        box = runpy.run_path(str(ROOT / "scripts" / "bench_md.py"))["packed_box"]()
        out = [box.copy() for _ in range(count)]
    else:
        raise SystemExit(f"unknown case {case!r}; use molecules:N or box:N")
    if len(out) < count:
        raise SystemExit(f"{case}: only {len(out)} frames in the 3BPA file")
    for k, atoms in enumerate(out):
        thermalize(atoms, temperature_K=300, rng=np.random.default_rng(k))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_torchsim(net, atoms_list, steps: int, dt: float, device: torch.device) -> float:
    """Seconds for init + ``steps`` NVE steps of the whole batch."""
    import torch_sim as ts

    from forcefield.integrations.torch_sim import ForceFieldModel

    model = ForceFieldModel(net, device=device, dtype=net.dtype, compute_stress=False)
    dt_t = torch.tensor(dt, dtype=net.dtype, device=device)
    kt = torch.tensor(0.0, dtype=net.dtype, device=device)
    state = ts.io.atoms_to_state(atoms_list, device, net.dtype)
    momenta = np.concatenate([a.get_momenta() for a in atoms_list])
    if hasattr(ts, "nve_init"):  # TorchSim >= 0.4
        def init(s):
            return ts.nve_init(s, model, kT=kt)

        def step(s):
            return ts.nve_step(s, model, dt=dt_t)
    else:
        init, step = ts.integrators.nve(model, dt=dt_t, kT=kt)
    init(ts.io.atoms_to_state(atoms_list[:1], device, net.dtype))  # warm-up, not timed
    sync(device)
    start = time.perf_counter()
    state = init(state)
    state.momenta = torch.as_tensor(momenta, dtype=net.dtype, device=device)
    for _ in range(steps):
        state = step(state)
    sync(device)
    elapsed = time.perf_counter() - start
    if not bool(torch.isfinite(state.energy).all()):
        raise SystemExit("TorchSim run gave non-finite energies")
    return elapsed


def run_ase(net, atoms_list, steps: int, dt: float, device: torch.device) -> float:
    """Seconds for ``steps`` VelocityVerlet steps of each system, one after another."""
    from ase.md.verlet import VelocityVerlet

    from forcefield import ForceFieldCalculator

    calc = ForceFieldCalculator(net, device=device)
    warm = atoms_list[0].copy()
    warm.calc = calc
    warm.get_forces()  # warm-up, not timed
    sync(device)
    start = time.perf_counter()
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = calc
        VelocityVerlet(atoms, timestep=dt).run(steps)
    sync(device)
    return time.perf_counter() - start


def call_ms(net, atoms, device: torch.device, repeats: int = 20) -> tuple[float, float]:
    """Median ms of one calculator call (energy and forces, positions moved: a new
    neighbour list) and of the bare model call on a prebuilt graph, interleaved."""
    from forcefield import ForceFieldCalculator

    calc = ForceFieldCalculator(net, device=device)
    data = calc.build_input(atoms)
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(0)
    calls, bare = [], []
    for _ in range(repeats + 1):
        atoms.positions += 1e-4 * rng.normal(size=atoms.positions.shape)
        sync(device)
        start = time.perf_counter()
        atoms.get_forces()
        sync(device)
        calls.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.enable_grad():
            net(data, compute_forces=True)
        sync(device)
        bare.append(time.perf_counter() - start)
    return 1e3 * float(np.median(calls[1:])), 1e3 * float(np.median(bare[1:]))


def main() -> None:
    from ase import units

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="+", default=None,
                        help="molecules:N and/or box:N (default: molecules:64 on the CPU, "
                             "molecules:512 box:16 on a GPU)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="gaunt_mace_small")
    parser.add_argument("--model", default=None, help="a model.pt instead of the preset")
    parser.add_argument("--ase-sample", type=int, default=None,
                        help="systems run through ASE (default: all on the CPU, 16 on a GPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    cases = args.cases or (["molecules:512", "box:16"] if gpu else ["molecules:64"])
    dtype = getattr(torch, args.dtype)
    net = build_model(args.preset, dtype, args.model).to(device)
    from importlib.metadata import version

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {device_name(device)}; torch {torch.__version__}, torch-sim "
          f"{version('torch-sim-atomistic')}; {args.threads} threads; {args.dtype}; "
          f"{args.model or args.preset + ' (perturbed, untrained)'}; {args.steps} NVE steps "
          f"of {args.timestep_fs} fs; load average at start {load:.2f}")
    print("| case | atoms/system | TorchSim batch steps/s | ASE sequential steps/s | ratio | "
          "ASE ms/step | calculator call ms | bare model call ms | per-call overhead ms | "
          "batched ms per system-step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    dt = args.timestep_fs * units.fs
    for case in cases:
        atoms_list = systems(case)
        n = len(atoms_list)
        sample = min(n, args.ase_sample or (16 if gpu else n))
        ts_s = run_torchsim(net, atoms_list, args.steps, dt, device)
        ase_s = run_ase(net, atoms_list[:sample], args.steps, dt, device)
        ts_rate = n * args.steps / ts_s
        ase_rate = sample * args.steps / ase_s
        ase_ms = 1e3 * ase_s / (sample * args.steps)
        call, bare = call_ms(net, atoms_list[0], device)
        sampled = "" if sample == n else f" (ASE: {sample} of {n})"
        print(f"| {case}{sampled} | {len(atoms_list[0])} | {ts_rate:.1f} | {ase_rate:.1f} | "
              f"{ts_rate / ase_rate:.2f}x | {ase_ms:.2f} | {call:.2f} | {bare:.2f} | "
              f"{call - bare:.2f} | {1e3 * ts_s / (n * args.steps):.2f} |", flush=True)


if __name__ == "__main__":
    main()
