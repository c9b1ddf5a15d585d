"""forcefield models in TorchSim (``torch-sim-atomistic``): batched MD and relaxations.

    import torch
    import torch_sim as ts
    from forcefield.integrations.torch_sim import ForceFieldModel

    model = ForceFieldModel("model.pt", device="cpu", dtype=torch.float64)
    state = ts.io.atoms_to_state(list_of_atoms, model.device, model.dtype)
    out = model(state)  # energy [n_systems], forces [n_atoms, 3], stress [n_systems, 3, 3]

TorchSim holds many systems in one ``SimState`` (positions of all atoms, one cell per
system, the system index of every atom) and calls the model once per step for all of them.
A ``model.pt`` is evaluated in one batched call for the whole state (the model's own batch
format: one graph of all systems); that is where batching pays, on a GPU most of all.  A
``.pt2`` package takes one structure per call, so it is called once per system: the same
numbers, without the batching speed-up.

Units and conventions are TorchSim's (its "metal" units are ASE's): A, eV, eV/A, and the
stress in eV/A^3 with ASE's sign (positive under tension, ``stress = -virial / volume``;
TorchSim's NPT and cell filters compute ``virial = -volume * (stress + pressure)``).
TorchSim stores cells as columns (``state.cell[b][:, k]`` is lattice vector k); the
neighbour list reads ``state.row_vector_cell``.  Systems without a periodic axis (TorchSim
molecules: ``pbc=False``) get a zero stress, where the ASE calculator has none.

The neighbour list is forcefield's own (``forcefield.data.neighbour_list``, vesin), built
per system on the CPU every call, so it is exactly the calculator's.  TorchSim's ``pbc`` is
one value (or three axes) for the whole state: to batch molecules with crystals, put each
molecule in a periodic box with more than ``r_max`` of vacuum around it.  The state's
system index is ``system_idx`` (TorchSim >= 0.3) or ``batch`` (0.2); both are read, and
``pbc`` may be one bool (up to 0.4) or three axes (0.5 on).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from forcefield.optional import installed

if not installed("torch_sim"):
    raise ImportError("forcefield.integrations.torch_sim needs TorchSim: "
                      "pip install torch-sim-atomistic")

from torch_sim.models.interface import ModelInterface  # noqa: E402

from forcefield.data.elements import element_names, symbol_list  # noqa: E402
from forcefield.data.errors import DataError  # noqa: E402
from forcefield.data.neighbours import neighbour_list  # noqa: E402
from forcefield.direct_forces import check_direct_forces  # noqa: E402
from forcefield.errors import ForceFieldError  # noqa: E402
from forcefield.export import load_model, resolve_dtype  # noqa: E402
from forcefield.traced import neighbour_cap  # noqa: E402

__all__ = ["ForceFieldModel", "TorchSimInputError"]


class TorchSimInputError(ForceFieldError):
    """A state the model cannot evaluate (unknown element, bad cell, missing field)."""


def _system_index(state: Any) -> torch.Tensor:
    """The per-atom system index: ``system_idx`` (TorchSim >= 0.3) or ``batch`` (0.2)."""
    if isinstance(state, Mapping):
        index = state.get("system_idx", state.get("batch"))
    else:
        # checked first: from 0.3 on, reading ``batch`` warns that it is deprecated
        index = getattr(state, "system_idx", None)
        if index is None:
            index = getattr(state, "batch", None)
    if index is None:
        positions = _field(state, "positions")
        index = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
    return index


def _field(state: Any, name: str) -> Any:
    value = state.get(name) if isinstance(state, Mapping) else getattr(state, name, None)
    if value is None:
        raise TorchSimInputError(f"the TorchSim state has no {name!r}; give positions, cell, "
                                 "pbc and atomic_numbers")
    return value


def _pbc_per_system(pbc: Any, n_systems: int) -> np.ndarray:
    """``pbc`` (a bool up to TorchSim 0.4, a [3] tensor from 0.5, or [n_systems, 3]) as a
    [n_systems, 3] bool array."""
    if isinstance(pbc, torch.Tensor):
        pbc = pbc.detach().cpu().numpy()
    pbc = np.asarray(pbc, dtype=bool)
    if pbc.ndim == 0:
        pbc = np.repeat(pbc, 3)
    return np.broadcast_to(pbc, (n_systems, 3))


class ForceFieldModel(ModelInterface):
    """A forcefield model (``model.pt`` or ``.pt2``) as a TorchSim ``ModelInterface``.

    ``model(state)`` returns ``energy`` [n_systems] (eV), ``forces`` [n_atoms, 3] (eV/A,
    -dE/dx), ``stress`` [n_systems, 3, 3] (eV/A^3, ASE's sign; zero for a system with no
    periodic axis) when ``compute_stress``, and per-atom ``energies`` [n_atoms] when
    ``per_atom_energies``; all in ``dtype`` on ``device``.

    A ``model.pt`` (GauntMACE or GauntEquiformerV2) evaluates every system of the state in
    one batched call.  A ``.pt2`` package (``forcefield export format=pt2``) takes one
    structure per call, so it is called once per system (it must have been built for
    ``device``, and ``dtype`` must be the package's or None).

    Args:
        model_path: a ``model.pt``, a ``.pt2`` package, or an already loaded model.
        device: torch device of the model and of the returned tensors (``"cpu"``,
            ``"cuda"``); the state must be on the same device.
        dtype: the precision the model runs in and the results are returned in
            (``torch.float64`` for MD, ``torch.float32`` for screening; a string such as
            ``"float32"`` works too); None: the model's own.  Build the state in it too.
        compute_stress: return the stress (TorchSim's NPT integrators and cell filters
            need it); one extra strain gradient in the same backward pass.
        compute_forces: return the forces (every TorchSim integrator and optimiser needs
            them).
        per_atom_energies: also return ``energies``, the per-atom energies [n_atoms].
        neighbour_backend: ``"vesin"`` (default) or ``"ase"`` (reference, slow).
        allow_direct_forces: run a direct-force model (``model.forces=direct``: forces not
            -dE/dx) anyway, with one warning; by default it is refused as the ASE
            calculator refuses it (:mod:`forcefield.direct_forces`).
    """

    def __init__(
        self,
        model_path: str | os.PathLike | torch.nn.Module,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = torch.float64,
        compute_stress: bool = True,
        compute_forces: bool = True,
        per_atom_energies: bool = False,
        neighbour_backend: str = "vesin",
        allow_direct_forces: bool = False,
    ) -> None:
        super().__init__()
        self._device = torch.device(device)
        requested = resolve_dtype(dtype)
        if isinstance(model_path, torch.nn.Module):
            model = model_path
            if requested is not None:
                model = model.to(dtype=requested)
            model = model.to(self._device).eval()
        else:
            model = load_model(model_path, device=self._device, dtype=requested)
        self.direct_forces = check_direct_forces([model], allow_direct_forces)
        self.model = model
        own = getattr(model, "dtype", None)
        self._dtype = own if isinstance(own, torch.dtype) else next(model.parameters()).dtype
        config = getattr(model, "config", None) or {}
        self.r_max = float(config["r_max"])
        self.max_neighbors = neighbour_cap(model)  # a package's graph trusts the edges given
        self.species = sorted(int(z) for z in config["species"])
        known = torch.zeros(max(119, max(self.species) + 1), dtype=torch.bool)
        known[self.species] = True
        self.register_buffer("_known", known.to(self._device), persistent=False)
        # a .pt2 package (forcefield.traced.TracedPotential) takes one structure per call
        self.one_structure_per_call = hasattr(model, "function")
        self._compute_stress = bool(compute_stress)
        self._compute_forces = bool(compute_forces)
        self.per_atom_energies = bool(per_atom_energies)
        self.neighbour_backend = neighbour_backend
        self._memory_scales_with = "n_atoms_x_density"

    @ModelInterface.compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        """TorchSim's cell filters switch the stress on."""
        self._compute_stress = bool(value)

    @ModelInterface.compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    # ------------------------------------------------------------------ input
    def _check_elements(self, numbers: torch.Tensor, system_idx: torch.Tensor) -> None:
        """One sentence naming the elements the model does not know, and where they are."""
        known = self._known
        inside = (numbers >= 0) & (numbers < known.shape[0])
        ok = inside & known[numbers.clamp(0, known.shape[0] - 1)]
        if bool(ok.all()):
            return
        bad = (~ok).cpu()
        unknown = sorted({int(z) for z in numbers.cpu()[bad]})
        systems = sorted({int(b) for b in system_idx.cpu()[bad]})
        listed = ", ".join(str(b) for b in systems[:5]) + (", ..." if len(systems) > 5 else "")
        raise TorchSimInputError(
            f"the model was not trained on {element_names(unknown)} (in system {listed} of "
            f"the state); it knows only {symbol_list(self.species)}")

    def _graph(self, positions: torch.Tensor, row_cell: torch.Tensor, pbc: np.ndarray,
               bounds: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Edge index (global atom numbers) [2, E], cell shifts [E, 3] and the number of
        edges of each system, from forcefield's neighbour list of every system."""
        pos = positions.detach().to("cpu", torch.float64).numpy()
        cells = row_cell.detach().to("cpu", torch.float64).numpy()
        edges, shifts, counts = [], [], []
        for b in range(len(bounds) - 1):
            start, stop = int(bounds[b]), int(bounds[b + 1])
            try:
                i, j, s = neighbour_list(pos[start:stop], cells[b], pbc[b], self.r_max,
                                         backend=self.neighbour_backend, index=b,
                                         max_neighbors=self.max_neighbors)
            except DataError as err:
                raise TorchSimInputError(str(err)) from None
            edges.append(np.stack((i, j)) + start)
            shifts.append(s)
            counts.append(len(i))
        edge_index = torch.from_numpy(np.concatenate(edges, axis=1)).to(self._device)
        cell_shifts = torch.from_numpy(np.concatenate(shifts)).to(self._device)  # int64
        return edge_index, cell_shifts, counts

    # ------------------------------------------------------------------ forward
    def forward(self, state: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Energy, forces and stress of every system of ``state`` (a ``SimState``, or a
        mapping with ``positions``, ``cell`` (column vectors), ``pbc``, ``atomic_numbers``
        and ``system_idx``)."""
        positions = _field(state, "positions")
        cell = _field(state, "cell")  # [n_systems, 3, 3], lattice vectors as columns
        cell = cell.reshape(-1, 3, 3)
        row_cell = cell.transpose(-1, -2)
        numbers = _field(state, "atomic_numbers").to(self._device, torch.int64)
        system_idx = _system_index(state).to(self._device, torch.int64)
        n_systems = cell.shape[0]
        pbc = _pbc_per_system(_field(state, "pbc"), n_systems)
        self._check_elements(numbers, system_idx)
        counts = torch.bincount(system_idx, minlength=n_systems).cpu().numpy()
        if len(counts) != n_systems:
            raise TorchSimInputError(f"the state has {n_systems} cells but atoms of "
                                     f"{len(counts)} systems; give one cell per system")
        bounds = np.concatenate(([0], np.cumsum(counts)))
        edge_index, cell_shifts, edge_counts = self._graph(positions, row_cell, pbc, bounds)
        positions = positions.to(self._device, self._dtype)
        row_cell = row_cell.to(self._device, self._dtype)
        # a state of molecules only has zero stress: no strain derivative to compute
        stress = self._compute_stress and bool(pbc.any())
        if self.one_structure_per_call:
            out = self._per_system(positions, numbers, row_cell, edge_index, cell_shifts,
                                   bounds, np.concatenate(([0], np.cumsum(edge_counts))),
                                   stress)
        else:
            data = SimpleNamespace(pos=positions, atomic_numbers=numbers, cell=row_cell,
                                   edge_index=edge_index, cell_shifts=cell_shifts,
                                   batch=system_idx, num_graphs=n_systems)
            with torch.enable_grad():  # forces are gradients, even under no_grad
                out = self.model(data, compute_forces=self._compute_forces,
                                 compute_stress=stress)
        return self._results(out, pbc, stress, n_systems)

    def _per_system(self, positions: torch.Tensor, numbers: torch.Tensor,
                    row_cell: torch.Tensor, edge_index: torch.Tensor,
                    cell_shifts: torch.Tensor, bounds: np.ndarray, edge_bounds: np.ndarray,
                    stress: bool) -> dict[str, torch.Tensor]:
        """A one-structure model (``.pt2``) called once per system, outputs concatenated."""
        parts: dict[str, list[torch.Tensor]] = {}
        for b in range(len(bounds) - 1):
            a0, a1 = int(bounds[b]), int(bounds[b + 1])
            e0, e1 = int(edge_bounds[b]), int(edge_bounds[b + 1])
            data = SimpleNamespace(pos=positions[a0:a1], atomic_numbers=numbers[a0:a1],
                                   cell=row_cell[b:b + 1], edge_index=edge_index[:, e0:e1] - a0,
                                   cell_shifts=cell_shifts[e0:e1], batch=None)
            out = self.model(data, compute_forces=True, compute_stress=stress)
            for key in ("energy", "node_energy", "forces", "stress"):
                if key in out:
                    parts.setdefault(key, []).append(out[key])
        return {key: torch.cat(values) for key, values in parts.items()}

    def _results(self, out: dict[str, torch.Tensor], pbc: np.ndarray, stress: bool,
                 n_systems: int) -> dict[str, torch.Tensor]:
        dtype = self._dtype
        results = {"energy": out["energy"].detach().reshape(-1).to(dtype)}
        if self._compute_forces:
            results["forces"] = out["forces"].detach().to(dtype)
        if self._compute_stress and not stress:
            results["stress"] = torch.zeros(n_systems, 3, 3, dtype=dtype, device=self._device)
        elif stress:
            value = out["stress"].detach().reshape(-1, 3, 3)
            periodic = torch.from_numpy(pbc.any(axis=1).copy()).to(value.device)
            results["stress"] = torch.where(periodic[:, None, None], value,
                                            torch.zeros_like(value)).to(dtype)
        if self.per_atom_energies:
            results["energies"] = out["node_energy"].detach().to(dtype)
        return results
