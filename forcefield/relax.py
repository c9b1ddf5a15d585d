"""Structure relaxation with a forcefield model through ASE's optimisers.

:func:`relax_structures` is what ``forcefield relax`` runs; from Python::

    from ase.io import read
    from forcefield import ForceFieldCalculator
    from forcefield.relax import relax_structures

    calc = ForceFieldCalculator("model.pt", dtype="float64")
    summary = relax_structures(calc, read("slabs.extxyz", ":"), "relax_run",
                               optimizer="FIRE", fmax=0.05, steps=300)

Each structure is relaxed with FIRE, BFGS or LBFGS until the largest force on a free atom
is below ``fmax`` (eV/A) or ``steps`` optimiser steps were taken. Fixed atoms (ASE
``FixAtoms`` constraints, as OC20 slabs and extxyz ``move_mask`` carry them) do not move.
With ``relax_cell=True`` the cell relaxes too (ASE's ``FrechetCellFilter``; periodic
structures only): the criterion then includes the stress (eV/A^3 times the volume).

Outputs in ``output_dir``, each written atomically: ``relaxed.extxyz`` (the final
structures, with ``converged``, ``steps``, ``energy``, ``fmax`` in ``info``),
``trajectories/<index>_<formula>.traj`` (one ASE trajectory per structure) and
``relax_summary.json`` (per structure: converged, steps, final energy, fmax; totals; with
relaxed-energy labels, as in OC20 IS2RE data, the energy MAE and EwT of the relaxed
energies: IS2RE by relaxation).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from forcefield.atomic_io import atomic_path, atomic_write_json
from forcefield.errors import ForceFieldError

OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")
EWT_THRESHOLD_EV = 0.02
"""OC20's energy-within-threshold: |E_pred - E_ref| < 0.02 eV."""


class RelaxError(ForceFieldError):
    """A bad relaxation setting or a structure that cannot be relaxed as asked."""


def _optimizer_class(name: str):
    from ase import optimize

    key = str(name).upper()
    if key not in OPTIMIZERS:
        raise RelaxError(f"optimizer={name!r} is not available; choose one of "
                         f"{', '.join(OPTIMIZERS)}")
    return getattr(optimize, key)


def check_optimizer(optimizer: str, calc) -> None:
    """A direct-force calculator (forces not -dE/dx) relaxes with FIRE only: FIRE uses the
    forces alone, while BFGS and LBFGS assume they are the energy's gradient."""
    if getattr(calc, "direct_forces", False) and str(optimizer).upper() != "FIRE":
        raise RelaxError(f"optimizer={optimizer} assumes forces that are the energy's "
                         "gradient, and this model has direct forces; use optimizer=FIRE")


def _label(atoms: Atoms, index: int) -> str:
    name = atoms.info.get("name") or atoms.info.get("sid")
    return f"{index}_{name}" if name is not None else f"{index}_{atoms.get_chemical_formula()}"


def reference_energy(atoms: Atoms, key: str | None) -> float | None:
    """The relaxed-energy label of ``atoms``: ``info[key]``, or with ``key="energy"`` the
    energy stored with the structure (OC20 IS2RE LMDBs store the relaxed energy there)."""
    if not key:
        return None
    if key in atoms.info:
        value = atoms.info[key]
    elif key == "energy" and atoms.calc is not None:
        try:
            value = atoms.calc.get_property("energy", atoms, allow_calculation=False)
        except Exception:  # noqa: BLE001 - no stored energy
            value = None
    else:
        value = None
    if value is None:
        return None
    value = float(np.asarray(value).reshape(-1)[0])
    return value if math.isfinite(value) else None


def check_structures(structures: Sequence[Atoms], calc, relax_cell: bool) -> None:
    """Every structure must be one the model can evaluate (and periodic for relax_cell)."""
    for i, atoms in enumerate(structures):
        try:
            calc.check_atoms(atoms)
        except ValueError as exc:
            raise RelaxError(f"structure {i} ({atoms.get_chemical_formula()}): {exc}") from None
        if relax_cell and not (atoms.pbc.all() and abs(atoms.cell.volume) > 1e-9):
            raise RelaxError(
                f"structure {i} ({atoms.get_chemical_formula()}) is not periodic in all three "
                "directions, so its cell cannot relax; use relax_cell=false for it")


def relax_one(atoms: Atoms, calc, *, optimizer: str = "FIRE", fmax: float = 0.05,
              steps: int = 500, relax_cell: bool = False,
              trajectory: str | os.PathLike | None = None) -> dict[str, Any]:
    """Relax ``atoms`` in place; return its record (converged, steps, energy, fmax, ...)."""
    cls = _optimizer_class(optimizer)
    check_optimizer(optimizer, calc)
    atoms.calc = calc
    target: Any = atoms
    if relax_cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms)
    initial_energy = float(atoms.get_potential_energy())
    t0 = time.perf_counter()
    # the optimiser is an IOContext: leaving the block closes its trajectory file
    with cls(target, logfile=None, trajectory=str(trajectory) if trajectory else None) as opt:
        converged = bool(opt.run(fmax=float(fmax), steps=int(steps)))
    forces = target.get_forces()  # constrained (fixed atoms: zero), cell dofs with a filter
    record: dict[str, Any] = {
        "converged": converged,
        "steps": int(opt.nsteps),
        "energy_eV": float(atoms.get_potential_energy()),
        "initial_energy_eV": initial_energy,
        "fmax_eV_A": float(np.sqrt((forces**2).sum(axis=1)).max()) if len(forces) else 0.0,
        "natoms": len(atoms),
        "formula": atoms.get_chemical_formula(),
        "time_s": time.perf_counter() - t0,
    }
    if relax_cell:
        stress = atoms.get_stress(voigt=True)
        record["stress_max_eV_A3"] = float(np.abs(stress).max())
        record["volume_A3"] = float(atoms.get_volume())
    if not math.isfinite(record["energy_eV"]):
        record["converged"] = False
    return record


def relax_structures(
    calc,
    structures: Sequence[Atoms],
    output_dir: str | os.PathLike,
    *,
    optimizer: str = "FIRE",
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool = False,
    reference_key: str | None = "y_relaxed",
    trajectories: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Relax every structure with ``calc``; write the outputs; return the summary dict."""
    from ase.io import write
    from tqdm.auto import tqdm

    _optimizer_class(optimizer)
    check_optimizer(optimizer, calc)
    if not fmax > 0:
        raise RelaxError(f"fmax={fmax} must be a positive force in eV/A")
    if int(steps) < 0:
        raise RelaxError(f"steps={steps} must be zero or more")
    structures = [a.copy() for a in structures]
    if not structures:
        raise RelaxError("no structures to relax")
    check_structures(structures, calc, relax_cell)
    out = Path(output_dir)
    traj_dir = out / "trajectories"
    records: list[dict[str, Any]] = []
    finals: list[Atoms] = []
    t0 = time.perf_counter()
    bar = tqdm(structures, desc="relax", unit="structure", disable=not progress)
    for i, atoms in enumerate(bar):
        reference = reference_energy(atoms, reference_key)
        label = _label(atoms, i)
        if trajectories:
            traj_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(traj_dir / f"{label}.traj") as tmp:
                record = relax_one(atoms, calc, optimizer=optimizer, fmax=fmax, steps=steps,
                                   relax_cell=relax_cell, trajectory=tmp)
            record["trajectory"] = str(Path("trajectories") / f"{label}.traj")
        else:
            record = relax_one(atoms, calc, optimizer=optimizer, fmax=fmax, steps=steps,
                               relax_cell=relax_cell)
        record = {"index": i, "name": label, **record}
        if reference is not None:
            record["reference_energy_eV"] = reference
            record["energy_error_eV"] = record["energy_eV"] - reference
        records.append(record)
        final = atoms.copy()
        final.calc = None
        final.info.update({k: record[k] for k in ("converged", "steps", "energy_eV", "fmax_eV_A")})
        finals.append(final)
        bar.set_postfix(converged=f"{sum(r['converged'] for r in records)}/{len(records)}")
    bar.close()
    summary = summarize(records, optimizer=optimizer, fmax=fmax, steps=steps,
                        relax_cell=relax_cell, wall_time_s=time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "relaxed.extxyz", suffix=".extxyz") as tmp:
        write(tmp, finals, format="extxyz")
    atomic_write_json(out / "relax_summary.json", summary)
    return summary


def summarize(records: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """Totals over the structures (+ IS2RE energy MAE and EwT where labels exist)."""
    n = len(records)
    totals: dict[str, Any] = {
        "n_structures": n,
        "n_converged": sum(bool(r["converged"]) for r in records),
        "total_steps": sum(int(r["steps"]) for r in records),
        "not_converged": [r["name"] for r in records if not r["converged"]],
    }
    errors = np.array([r["energy_error_eV"] for r in records if "energy_error_eV" in r])
    if len(errors):
        totals["n_labelled"] = int(len(errors))
        totals["energy_mae_meV"] = float(np.abs(errors).mean() * 1000.0)
        totals["energy_rmse_meV"] = float(np.sqrt((errors**2).mean()) * 1000.0)
        totals["ewt"] = float((np.abs(errors) < EWT_THRESHOLD_EV).mean())
    return {"settings": settings, "totals": totals, "structures": records}


__all__ = ["OPTIMIZERS", "RelaxError", "check_structures", "reference_energy", "relax_one",
           "relax_structures", "summarize"]
