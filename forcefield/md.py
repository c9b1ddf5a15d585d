"""Molecular dynamics with a forcefield model through ASE's integrators.

:func:`run_md` is what ``forcefield md`` runs; from Python::

    from ase.io import read
    from forcefield.md import run_md

    summary = run_md("model.pt", read("molecule.xyz"), ensemble="nve",
                     temperature_K=300, timestep_fs=0.5, steps=1000, output_dir="md_run")

Initial velocities are drawn from the Maxwell-Boltzmann distribution at
``temperature_K`` (seeded) and the total momentum is removed. Outputs in
``output_dir``: ``md.traj`` (ASE trajectory, every ``log_interval`` steps), ``md.log``
(time, potential, kinetic and total energy, temperature) and ``md_summary.json`` (steps,
steps per second, maximum |E_total - E_total(0)| per atom in meV, final temperature, the
number of torch.compile compilations during the run), written atomically.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from forcefield.atomic_io import atomic_write_json
from forcefield.errors import ForceFieldError, RunError

ENSEMBLES = ("nve", "langevin")


class MDError(ForceFieldError):
    """A bad MD setting (ensemble, timestep, ...) or a run that blew up."""


class MDDivergedError(MDError, RunError):
    """The dynamics started and then blew up (non-finite energy, drift above the limit)."""


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _maxwell_boltzmann(atoms: Atoms, temperature_K: float, rng) -> None:
    """Maxwell-Boltzmann momenta (ASE >= 3.29 renamed the function)."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):
        vd.thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    else:  # pragma: no cover - ASE < 3.29
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


def run_md(
    model: Any,
    atoms: Atoms,
    *,
    ensemble: str = "nve",
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    steps: int = 1000,
    output_dir: str | os.PathLike = "md",
    friction: float = 0.01,
    seed: int = 0,
    log_interval: int = 10,
    dtype: str | None = "float64",
    device: str = "cpu",
    progress: bool = True,
    max_drift_meV_per_atom: float | None = None,
    allow_direct_forces: bool = False,
) -> dict:
    """Run MD on ``atoms`` and return the summary (also written to ``md_summary.json``).

    Args:
        model: a model file path, a loaded model, or an ASE calculator (used as is).
        atoms: the starting structure (copied; not modified).
        ensemble: ``"nve"`` (velocity Verlet) or ``"langevin"`` (NVT).
        temperature_K: temperature of the initial velocities and of the Langevin bath.
        timestep_fs: integration timestep in femtoseconds.
        steps: number of MD steps.
        output_dir: folder for ``md.traj``, ``md.log`` and ``md_summary.json``.
        friction: Langevin friction in 1/fs (ignored for NVE).
        seed: seeds the initial velocities and the Langevin noise.
        log_interval: steps between log lines and trajectory frames.
        dtype, device: passed to :class:`~forcefield.calculator.ForceFieldCalculator`.
        progress: show a tqdm progress bar (steps/s).
        max_drift_meV_per_atom: stop early (status ``"diverged"``) if the NVE energy
            drifts more than this; None never stops on drift. Non-finite energies
            always stop the run.
        allow_direct_forces: run a direct-force model (forces not -dE/dx: the energy
            drifts) with a warning instead of refusing it; ignored when ``model`` is a
            calculator (the calculator's own setting applies).
    """
    from ase.calculators.calculator import BaseCalculator
    from ase.io.trajectory import Trajectory
    from ase.md.velocitydistribution import Stationary

    ensemble = str(ensemble).lower()
    if ensemble not in ENSEMBLES:
        raise MDError(f"unknown ensemble {ensemble!r}; choose one of {', '.join(ENSEMBLES)}")
    if not timestep_fs > 0:
        raise MDError(f"timestep_fs must be positive, got {timestep_fs!r}")
    if int(steps) < 0:
        raise MDError(f"steps must be >= 0, got {steps!r}")
    if temperature_K < 0:
        raise MDError(f"temperature_K must be >= 0, got {temperature_K!r}")
    if ensemble == "langevin" and not friction > 0:
        raise MDError(f"friction must be positive for Langevin dynamics, got {friction!r}")
    steps = int(steps)
    log_interval = max(1, int(log_interval))

    if isinstance(model, BaseCalculator):
        calc = model
    else:
        from forcefield.calculator import ForceFieldCalculator

        calc = ForceFieldCalculator(model, device=device, dtype=dtype,
                                    allow_direct_forces=allow_direct_forces)

    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    if temperature_K > 0:
        _maxwell_boltzmann(atoms, temperature_K, rng)
        Stationary(atoms)
    else:
        atoms.set_momenta(np.zeros((len(atoms), 3)))

    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    else:
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin

        if not atoms.constraints:  # keep the centre of mass still, as ASE recommends
            atoms.set_constraint(FixCom())
        dyn = Langevin(
            atoms,
            timestep=timestep_fs * units.fs,
            temperature_K=temperature_K,
            friction=friction / units.fs,
            fixcm=False,
            rng=rng,
        )

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    natoms = len(atoms)
    state = {
        "e0": None,
        "max_drift": 0.0,
        "epot": float("nan"),
        "ekin": float("nan"),
        "status": "ok",
    }

    def energies() -> tuple[float, float]:
        return float(atoms.get_potential_energy()), float(atoms.get_kinetic_energy())

    class _Stop(Exception):
        pass

    def observe() -> None:
        epot, ekin = energies()
        state["epot"], state["ekin"] = epot, ekin
        etot = epot + ekin
        if not math.isfinite(etot):
            state["status"] = "diverged"
            raise _Stop
        if state["e0"] is None:
            state["e0"] = etot
        drift = abs(etot - state["e0"]) / natoms * 1000.0
        state["max_drift"] = max(state["max_drift"], drift)
        if (
            ensemble == "nve"
            and max_drift_meV_per_atom is not None
            and drift > max_drift_meV_per_atom
        ):
            state["status"] = "diverged"
            raise _Stop

    log = open(out / "md.log", "w")  # noqa: SIM115 - closed in finally
    log.write(
        f"# forcefield md: ensemble={ensemble} T={temperature_K} K dt={timestep_fs} fs "
        f"natoms={natoms}\n"
        f"#{'time[ps]':>11} {'Epot[eV]':>16} {'Ekin[eV]':>14} {'Etot[eV]':>16} {'T[K]':>10}\n"
    )
    traj = Trajectory(str(out / "md.traj"), "w", atoms)

    def write_log(handle) -> None:
        epot, ekin = state["epot"], state["ekin"]
        temp = atoms.get_temperature()
        time_ps = dyn.get_time() / (1000.0 * units.fs)
        handle.write(
            f"{time_ps:12.5f} {epot:16.6f} {ekin:14.6f} {epot + ekin:16.6f} {temp:10.2f}\n"
        )
        handle.flush()

    def record() -> None:
        write_log(log)
        traj.write()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, unit="step", desc=f"MD {ensemble}", dynamic_ncols=True)

    def step_observer() -> None:
        observe()
        if bar is not None and dyn.nsteps > 0:
            bar.update(1)
            if dyn.nsteps % 10 == 0:
                bar.set_postfix(T=f"{atoms.get_temperature():.0f}K",
                                drift=f"{state['max_drift']:.3f}meV/at", refresh=False)

    dyn.attach(step_observer, interval=1)
    dyn.attach(record, interval=log_interval)
    compiled_before = _compilations()
    start = time.perf_counter()
    try:
        dyn.run(steps)
    except _Stop:
        pass
    finally:
        elapsed = time.perf_counter() - start
        if bar is not None:
            bar.close()
        traj.close()
        log.close()
    done = int(dyn.nsteps)
    if done % log_interval and state["status"] == "ok":
        with open(out / "md.log", "a") as log:  # the final state, off the log interval
            write_log(log)
        with Trajectory(str(out / "md.traj"), "a", atoms) as tail:
            tail.write()

    temp = atoms.get_temperature() if state["status"] == "ok" else float("nan")
    summary = {
        "status": state["status"],
        "ensemble": ensemble,
        "natoms": natoms,
        "steps": done,
        "steps_requested": steps,
        "timestep_fs": float(timestep_fs),
        "simulated_time_ps": done * timestep_fs / 1000.0,
        "temperature_K": float(temperature_K),
        "friction_per_fs": float(friction) if ensemble == "langevin" else None,
        "seed": int(seed),
        "wall_time_s": elapsed,
        "steps_per_second": done / elapsed if elapsed > 0 and done else 0.0,
        "max_energy_drift_meV_per_atom": _finite(state["max_drift"]),
        "initial_total_energy_eV": _finite(state["e0"]) if state["e0"] is not None else None,
        "final_total_energy_eV": _finite(state["epot"] + state["ekin"]),
        "final_temperature_K": _finite(temp),
        # graphs torch.compile built during the run (compile=true: 1, the first call's, with
        # no recompilation as atoms move and edge counts change; 0 for eager and .pt2)
        "compilations": _compilations() - compiled_before,
    }
    atomic_write_json(out / "md_summary.json", summary)
    if state["status"] == "diverged":
        raise MDDivergedError(
            f"MD diverged after {done} steps (non-finite energy or drift above "
            f"{max_drift_meV_per_atom} meV/atom); try a smaller timestep_fs, float64, "
            f"or check the structure; partial results are in {out}"
        )
    return summary


def _compilations() -> int:
    """How many graphs torch.compile has compiled in this process so far."""
    import sys

    if "torch._dynamo" not in sys.modules:  # nothing was compiled
        return 0
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


__all__ = ["ENSEMBLES", "MDDivergedError", "MDError", "run_md"]
