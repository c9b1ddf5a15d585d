"""ASE calculator for forcefield models.

    from ase.io import read
    from forcefield import ForceFieldCalculator

    atoms = read("structure.xyz")
    atoms.calc = ForceFieldCalculator("model.pt", dtype="float64")
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()  # stress: periodic only

``dtype=None`` runs the model in the precision it was saved in. Use ``"float64"`` for
molecular dynamics: energy conservation (NVE drift) and finite-difference consistency
need double precision; ``"float32"`` is faster and fine for screening and relaxations.
The calculator never changes torch's global default dtype, so float32 and float64
calculators can be used side by side.

A list of model files gives a committee: the results are the committee mean, with the
standard deviation across models in ``calc.results["energy_std"]``, ``"forces_std"``
(and ``"stress_std"``), and every member's energy in ``"energy_committee"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from forcefield.data.elements import element_names
from forcefield.data.errors import DataError
from forcefield.data.neighbours import check_cell
from forcefield.direct_forces import check_direct_forces
from forcefield.errors import ForceFieldError
from forcefield.export import load_model, resolve_dtype


class CalculatorError(ForceFieldError):
    """A structure the calculator cannot evaluate (empty, unknown element, bad cell)."""


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The precision a model (or a traced or packaged one) computes in."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype


class ForceFieldCalculator(Calculator):
    """ASE calculator running one forcefield model (or a committee of models).

    Args:
        model_path: path of a model file (``model.pt``), an already loaded model, or a
            list of either (committee: mean and standard deviation).
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"``, ``"float64"``, a torch dtype, or None for the model's own
            dtype. float64 is the right choice for MD (energy conservation).
        compute_stress: ``"auto"`` (default) computes the stress for every structure with a
            fully periodic cell in the same backward pass as the forces (one model call
            serves ``get_forces`` and ``get_stress``); False computes it only when asked.
        neighbour_backend: ``"vesin"`` (default, fast) or ``"ase"``.
        compile: trace each model with its forces and virial and compile it with
            ``torch.compile`` (free atom and edge counts: compiled once, on the first call,
            for every structure size). Conservative models only. A ``.pt2`` package
            (``forcefield export format=pt2``) is already compiled and needs no flag.
        allow_direct_forces: use a direct-force model (``model.forces=direct``, forces not
            -dE/dx) anyway, with one warning; by default such a model is refused
            (:mod:`forcefield.direct_forces`). ``calc.direct_forces`` tells which it is.

    Results: ``energy`` and ``free_energy`` (eV), ``energies`` (per atom, eV), ``forces``
    (eV/A), ``stress`` (Voigt xx, yy, zz, yz, xz, xy; eV/A^3, ASE sign) for structures
    whose cell has a non-zero volume and at least one periodic direction. For molecules
    without a cell ``get_stress`` raises ASE's ``PropertyNotImplementedError``.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model_path: str | os.PathLike | torch.nn.Module | Sequence,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        compute_stress: str | bool = "auto",
        neighbour_backend: str = "vesin",
        compile: bool = False,
        allow_direct_forces: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.dtype_request = resolve_dtype(dtype)
        sources = (
            list(model_path)
            if isinstance(model_path, (list, tuple))
            else [model_path]
        )
        if not sources:
            raise ValueError("ForceFieldCalculator needs at least one model")
        self.models = [self._load(src) for src in sources]
        self.direct_forces = check_direct_forces(self.models, allow_direct_forces)
        if compile:
            from forcefield.traced import TracedPotential, compiled_potential

            self.models = [m if isinstance(m, TracedPotential) else compiled_potential(m)
                           for m in self.models]
        first = self.models[0]
        self.dtype = _model_dtype(first)
        config = getattr(first, "config", {}) or {}
        self.r_max = float(config["r_max"])
        self.species = sorted(int(z) for z in config["species"])
        for model in self.models[1:]:
            other = getattr(model, "config", {}) or {}
            if float(other["r_max"]) != self.r_max:
                self.r_max = max(self.r_max, float(other["r_max"]))
            extra = set(self.species) ^ {int(z) for z in other["species"]}
            if extra:
                raise ValueError(
                    "committee models know different elements "
                    f"({element_names(sorted(extra))}); "
                    "every member must be trained on the same species"
                )
        # the edges each model needs: an eager model without a neighbour cap selects its own
        # from any longer list; a traced one (or one with a cap) needs exactly its own
        self._edge_rules = [self._edge_rule(m) for m in self.models]
        self.max_neighbors = self._edge_rules[0][1]
        self._known = np.zeros(max(119, max(self.species) + 1), dtype=bool)
        self._known[self.species] = True
        self.compute_stress = compute_stress
        self.neighbour_backend = neighbour_backend
        self._numbers_cache: tuple[np.ndarray, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ loading
    def _load(self, source) -> torch.nn.Module:
        if isinstance(source, torch.nn.Module):
            model = source
            if self.dtype_request is not None:
                model = model.to(dtype=self.dtype_request)
            model = model.to(self.device).eval()
            return model
        return load_model(source, device=self.device, dtype=self.dtype_request)

    def _edge_rule(self, model: torch.nn.Module) -> tuple[float, int | None]:
        """(cutoff, neighbour cap) of the edge list that ``model`` is to be given."""
        from forcefield.traced import TracedPotential, neighbour_cap

        cap = neighbour_cap(model)
        if cap is None and not isinstance(model, TracedPotential):
            return self.r_max, None
        return float(model.config["r_max"]), cap

    @property
    def model(self) -> torch.nn.Module:
        """The (first) model."""
        return self.models[0]

    # ------------------------------------------------------------------ checks
    def check_atoms(self, atoms: Atoms) -> None:
        """Raise :class:`CalculatorError` for structures the model cannot evaluate."""
        if len(atoms) == 0:
            raise CalculatorError("the Atoms object is empty; give at least one atom")
        numbers = atoms.numbers
        known = self._known
        if numbers.min() < 0 or numbers.max() >= len(known) or not known[numbers].all():
            unknown = sorted({int(z) for z in numbers if not 0 <= z < len(known) or not known[z]})
            raise CalculatorError(
                f"the model was not trained on {element_names(unknown)}; it knows only "
                f"{element_names(self.species)}"
            )
        try:
            check_cell(atoms.cell.array, atoms.pbc)
        except DataError as err:  # same sentence, as the calculator's own error type
            raise CalculatorError(str(err)) from None

    # ------------------------------------------------------------------ input
    def _numbers(self, numbers: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._numbers_cache
        if cache is not None and cache[0].shape == numbers.shape and (cache[0] == numbers).all():
            return cache[1], cache[2]
        z = torch.as_tensor(np.asarray(numbers, dtype=np.int64), device=self.device)
        batch = torch.zeros(len(numbers), dtype=torch.long, device=self.device)
        self._numbers_cache = (numbers.copy(), z, batch)
        return z, batch

    def build_input(self, atoms: Atoms, rule: tuple[float, int | None] | None = None):
        """The model input (a torch_geometric ``Data`` in batch form) for ``atoms``, with the
        edges of ``rule`` (cutoff, neighbour cap; None: the first model's)."""
        from torch_geometric.data import Data

        from forcefield.data import neighbour_list

        r_max, cap = rule or self._edge_rules[0]
        pos = np.asarray(atoms.positions, dtype=np.float64)
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        i, j, shifts = neighbour_list(pos, cell, pbc, r_max, backend=self.neighbour_backend,
                                      max_neighbors=cap)
        dev = self.device
        z, batch = self._numbers(atoms.numbers)
        n = len(atoms)
        data = Data(
            pos=torch.from_numpy(pos).to(dev),
            atomic_numbers=z,
            cell=torch.from_numpy(cell).to(dev).view(1, 3, 3),
            pbc=torch.from_numpy(pbc).to(dev).view(1, 3),
            natoms=torch.tensor([n], device=dev),
            edge_index=torch.from_numpy(np.stack((i, j))).to(dev),
            cell_shifts=torch.from_numpy(shifts).to(dev),
            batch=batch,
            ptr=torch.tensor([0, n], device=dev),
        )
        data.num_graphs = 1
        return data

    def _wants_stress(self, atoms: Atoms, properties) -> bool:
        if not atoms.pbc.any() or abs(atoms.cell.volume) < 1e-12:
            return False
        if "stress" in properties:
            return True
        return self.compute_stress == "auto" and bool(atoms.pbc.all())

    # ------------------------------------------------------------------ calculate
    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation, by exact comparison.

        ASE's own check compares each array with ``numpy.allclose`` (atol 1e-15): about
        0.5 ms per call for a small molecule, and an MD step asks up to three times, which
        is several percent of a 27-atom step. Exact equality never keeps a result that
        ASE's check would discard (values within 1e-15 count as changed here), so ``tol``
        is not used; it stays for ASE's signature.
        """
        if self.atoms is None:
            return list(all_changes)
        old, ignored, changes = self.atoms, set(self.ignored_changes), []
        # ASE's order: the attributes cell and pbc, then the per-atom arrays
        attributes = ("cell", "pbc")
        for name in [*attributes, *(n for n in all_changes if n not in attributes)]:
            if name in ignored:
                continue
            if name in attributes:
                same = np.array_equal(getattr(old, name), getattr(atoms, name))
            else:
                a, b = old.arrays.get(name), atoms.arrays.get(name)
                same = a is None and b is None or (
                    a is not None and b is not None and np.array_equal(a, b))
            if not same:
                changes.append(name)
        return changes

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        properties = properties or ["energy"]
        Calculator.calculate(self, atoms, properties, system_changes)
        atoms = self.atoms
        self.check_atoms(atoms)
        stress = self._wants_stress(atoms, properties)
        inputs = {}
        outputs = []
        for model, rule in zip(self.models, self._edge_rules, strict=True):
            if rule not in inputs:
                inputs[rule] = self.build_input(atoms, rule)
            data = inputs[rule]
            with torch.enable_grad():  # forces are autograd gradients, even under no_grad
                out = model(data, compute_forces=True, compute_stress=stress)
            outputs.append(
                {
                    "energy": out["energy"].detach().double().sum().item(),
                    "energies": out["node_energy"].detach().double().cpu().numpy(),
                    "forces": out["forces"].detach().double().cpu().numpy(),
                    "stress": (
                        out["stress"].detach().double().cpu().numpy().reshape(3, 3)
                        if stress
                        else None
                    ),
                }
            )
        self.results = self._combine(outputs, stress)

    @staticmethod
    def _voigt(s: np.ndarray) -> np.ndarray:
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])

    def _combine(self, outputs: list[dict], stress: bool) -> dict:
        results: dict = {}
        energies = np.array([o["energy"] for o in outputs])
        results["energy"] = float(energies.mean())
        results["free_energy"] = results["energy"]
        results["energies"] = np.mean([o["energies"] for o in outputs], axis=0)
        forces = np.stack([o["forces"] for o in outputs])
        results["forces"] = forces.mean(axis=0)
        if stress:
            stresses = np.stack([self._voigt(o["stress"]) for o in outputs])
            results["stress"] = stresses.mean(axis=0)
        if len(outputs) > 1:
            results["energy_committee"] = energies
            results["energy_std"] = float(energies.std())
            results["forces_std"] = forces.std(axis=0)
            if stress:
                results["stress_std"] = stresses.std(axis=0)
        return results


__all__ = ["CalculatorError", "ForceFieldCalculator"]
