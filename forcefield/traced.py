"""A model as one traced graph of plain tensors, forces and virial included.

``torch.compile`` cannot follow ``torch.autograd.grad`` inside a model, and an exported
program must compute forces without autograd at run time.  So the whole computation --
energy, then its gradient with respect to positions and a strain -- is traced once at the
operator level (``make_fx``, symbolic shapes: atom and edge counts stay free), giving a
graph in which the backward is plain operators (``forcefield::conv_senders`` and friends).
That graph is what ``torch.compile`` compiles (``compile=true``) and what AOTInductor
packages (``forcefield export format=pt2``).

Two signatures (package ``target``s), both for one structure with ``edge_index`` row 0 the
centre atom i and row 1 the neighbour j:

- ``ase`` (:class:`PotentialFunction`, the calculator's): ``(positions [N, 3],
  atomic_numbers [N], cell [3, 3], edge_index [2, E], cell_shifts [E, 3])``, vectors
  ``r_j - r_i + shifts @ cell`` -> ``(energy [], node_energy [N], forces [N, 3],
  virial [3, 3])``, the virial from a strain of positions and cell.
- ``local`` (:class:`LocalPotentialFunction`, for hosts that hand over a piece of a larger
  system: LAMMPS subdomains with ghost atoms, batches of structures): ``(positions [N, 3],
  atomic_numbers [N], edge_index [2, E], edge_shifts [E, 3], energy_mask [N])``, vectors
  ``r_j - r_i + edge_shifts`` (Cartesian, A) -> ``(energy [] = sum(mask * node_energy),
  node_energy [N], forces [N, 3] on every atom (ghosts included), atom_virial [N, 3, 3])``.

Outputs are float64.  Atomic numbers are not checked inside the graph, nor edge lengths:
callers check the atomic numbers against the model's species first, and hand over the
edges within ``r_max``, capped to the ``max_neighbors`` nearest of each atom where the
model has that cap (:func:`neighbour_cap`; the calculator does both).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from forcefield import ops
from forcefield.nn.conservative import stress_from_virial

__all__ = ["LOCAL_OUTPUTS", "OUTPUTS", "TARGETS", "LocalPotentialFunction", "PotentialFunction",
           "TracedPotential", "compiled_potential", "example_inputs", "free_shapes",
           "inductor_options", "neighbour_cap", "packaged_potential", "potential_function",
           "trace_potential"]

#: the outputs of a traced potential (target ``ase``), in order
OUTPUTS = ("energy", "node_energy", "forces", "virial")
#: the outputs of target ``local``, in order
LOCAL_OUTPUTS = ("energy", "node_energy", "forces", "atom_virial")
#: the package targets: the signature each one is traced with
TARGETS = ("ase", "local")


class PotentialFunction(nn.Module):
    """``model`` (a conservative forcefield model) as a function of plain tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, positions: Tensor, atomic_numbers: Tensor, cell: Tensor,
                edge_index: Tensor, cell_shifts: Tensor) -> tuple[Tensor, ...]:
        data = SimpleNamespace(pos=positions, atomic_numbers=atomic_numbers,
                               cell=cell.reshape(1, 3, 3), edge_index=edge_index,
                               cell_shifts=cell_shifts, batch=None)
        out = self.model(data, compute_forces=True, compute_stress=True)
        return (out["energy"].to(torch.float64).reshape(()),
                out["node_energy"].to(torch.float64), out["forces"].to(torch.float64),
                out["virial"].reshape(3, 3).to(torch.float64))


class LocalPotentialFunction(nn.Module):
    """``model`` as the function of target ``local``: a piece of a system (a subdomain with
    its ghost atoms, or many structures as one graph), per-atom virials included.

    The model is called with the identity cell and the Cartesian ``edge_shifts`` as cell
    shifts, so its edge vectors are ``r_ij = pos[j] - pos[i] + edge_shifts``, and the
    gradient of the masked energy with respect to ``edge_shifts`` is exactly
    ``g_ij = dE/dr_ij`` per edge.  Forces are ``-dE/dpos`` for every atom, ghosts included
    (a host adds ghost forces to their owners); the virial of edge ij, ``-r_ij (x) g_ij``,
    goes half to atom i and half to atom j, so the atom virials sum to the strain virial
    (the models depend on positions only through edge vectors).  The strain is symmetric,
    so strictly the strain virial is the symmetric part of that sum; for a rotation-invariant
    model the sum is symmetric (GauntMACE: to 1e-15; GauntEquiformerV2's S2 grid leaves an
    antisymmetric part of its rotation error, ~1e-7 relative).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, positions: Tensor, atomic_numbers: Tensor, edge_index: Tensor,
                edge_shifts: Tensor, energy_mask: Tensor) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            positions = positions.detach().requires_grad_(True)
            edge_shifts = edge_shifts.detach().requires_grad_(True)
            eye = torch.eye(3, dtype=positions.dtype, device=positions.device)
            data = SimpleNamespace(pos=positions, atomic_numbers=atomic_numbers,
                                   cell=eye.reshape(1, 3, 3), edge_index=edge_index,
                                   cell_shifts=edge_shifts, batch=None)
            # training=True only keeps the autograd graph (no forces or stress asked of the
            # model: the gradients are taken here, with respect to these inputs)
            out = self.model(data, compute_forces=False, compute_stress=False, training=True)
            node_energy = out["node_energy"].to(torch.float64)
            energy = (node_energy * energy_mask.to(torch.float64)).sum()
            grad_pos, grad_edge = torch.autograd.grad(energy, [positions, edge_shifts],
                                                      allow_unused=True)
        grad_pos = torch.zeros_like(positions) if grad_pos is None else grad_pos
        grad_edge = torch.zeros_like(edge_shifts) if grad_edge is None else grad_edge
        receiver, sender = edge_index[0], edge_index[1]
        vectors = (positions[sender] - positions[receiver] + edge_shifts).detach()
        edge_virial = -0.5 * (vectors.to(torch.float64)[:, :, None]
                              * grad_edge.to(torch.float64)[:, None, :])
        atom_virial = torch.zeros(positions.shape[0], 3, 3, dtype=torch.float64,
                                  device=positions.device)
        atom_virial = atom_virial.index_add(0, receiver, edge_virial)
        atom_virial = atom_virial.index_add(0, sender, edge_virial)
        return (energy.detach(), node_energy.detach(), -grad_pos.to(torch.float64).detach(),
                atom_virial)


def potential_function(model: nn.Module, target: str = "ase") -> nn.Module:
    """The function of plain tensors that a package of ``target`` holds."""
    if target == "ase":
        return PotentialFunction(model)
    if target == "local":
        return LocalPotentialFunction(model)
    raise ValueError(f"target={target!r} is not a package target; use one of "
                     f"{', '.join(TARGETS)}")


def example_inputs(dtype: torch.dtype, num_atoms: int = 5, num_edges: int = 12,
                   species: int = 1, target: str = "ase") -> tuple[Tensor, ...]:
    """Small random inputs of the traced signature of ``target`` (sizes that no shape may
    be equal to, so that tracing keeps atoms and edges as separate symbols)."""
    gen = torch.Generator().manual_seed(0)
    positions = 3.0 * torch.rand(num_atoms, 3, generator=gen, dtype=dtype)
    sender = torch.randint(0, num_atoms, (num_edges,), generator=gen)
    receiver = (sender + torch.randint(1, num_atoms, (num_edges,), generator=gen)) % num_atoms
    numbers = torch.full((num_atoms,), species, dtype=torch.int64)
    edge_index = torch.stack([receiver, sender])
    shifts = torch.zeros(num_edges, 3, dtype=dtype)
    if target == "local":
        return (positions, numbers, edge_index, shifts, torch.ones(num_atoms, dtype=dtype))
    return positions, numbers, 10.0 * torch.eye(3, dtype=dtype), edge_index, shifts


@contextlib.contextmanager
def free_shapes() -> Iterator[None]:
    """Symbols of equal size stay distinct (atoms may equal edges in some call)."""
    from torch.fx.experimental import _config

    with _config.patch(use_duck_shape=False):
        yield


def trace_potential(model: nn.Module, dtype: torch.dtype | None = None,
                    target: str = "ase") -> torch.fx.GraphModule:
    """The traced graph of ``model``'s function of ``target`` (``PotentialFunction`` or
    ``LocalPotentialFunction``; weights as constants), for any number of atoms and edges.

    A direct-force model (``model.forces=direct``) traces for target ``ase``: its forces
    come from its force head, its virial from the strain derivative of its energy.  Target
    ``local`` needs -dE/dx (ghost forces, atom virials) and so a conservative model, without
    a neighbour cap (a host's ghost atoms would be capped differently from their owners).
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    from forcefield.direct_forces import FINETUNE_HINT, DirectForcesError, is_direct

    if target == "local" and is_direct(model):
        raise DirectForcesError("a target=local package (LAMMPS) needs forces -dE/dx; this "
                                f"model predicts forces directly (model.forces=direct): "
                                f"{FINETUNE_HINT}")
    if target == "local" and neighbour_cap(model) is not None:
        raise ValueError(f"a target=local package (LAMMPS) cannot keep the model's neighbour "
                         f"cap (model.max_neighbors={neighbour_cap(model)}): LAMMPS' ghost "
                         "atoms would be capped differently from the atoms they copy; export "
                         "target=ase, or fine-tune without the cap (model.max_neighbors=null)")
    dtype = dtype or next(model.parameters()).dtype
    species = int(model.species[0]) if hasattr(model, "species") else 1
    function = potential_function(model.eval(), target)
    example = example_inputs(dtype, species=species, target=target)
    function(*example)  # fills the models' table caches with real tensors: graph constants
    with ops.tracing(), free_shapes():
        return make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)


class TracedPotential(nn.Module):
    """A traced function (compiled graph or loaded package) behind the models' call
    interface: ``potential(data, compute_forces=True, compute_stress=False)`` -> the dict a
    model returns (energy, node_energy, forces, virial, stress) for one structure.

    ``config`` holds at least ``species`` and ``r_max``; ``dtype`` is the precision the
    function takes.  Used by the calculator (``compile=True``, ``.pt2`` files), ``md`` and
    ``relax``; training needs the model itself.
    """

    def __init__(self, function, config: dict, dtype: torch.dtype, source: str = "") -> None:
        super().__init__()
        self.function = function
        self.config = dict(config)
        self._dtype = dtype
        self.source = source
        self._known = torch.zeros(119, dtype=torch.bool)
        self._known[[int(z) for z in self.config["species"]]] = True

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def species(self) -> list[int]:
        return [int(z) for z in self.config["species"]]

    def _check(self, numbers: Tensor) -> None:
        from forcefield.data.elements import element_names, symbol_list

        numbers = numbers.cpu()
        bad = (numbers < 0) | (numbers >= self._known.shape[0])
        bad = bad | ~self._known[numbers.clamp(0, self._known.shape[0] - 1)]
        if bool(bad.any()):
            names = element_names(sorted({int(z) for z in numbers[bad]}))
            where = self.source or "this model"
            raise ValueError(f"element {names} is not in the species of {where} "
                             f"[{symbol_list(self.species)}]")

    def forward(self, data, compute_forces: bool = True, compute_stress: bool = False,
                training: bool = False) -> dict[str, Tensor]:
        if training:
            raise RuntimeError("a traced or packaged model cannot be trained; train the "
                               "model.pt or checkpoint it came from")
        cell = data.cell.reshape(-1, 3, 3)
        if cell.shape[0] != 1:
            raise ValueError("a traced or packaged model takes one structure per call")
        self._check(data.atomic_numbers)
        dtype = self._dtype
        energy, node_energy, forces, virial = self.function(
            data.pos.to(dtype).contiguous(), data.atomic_numbers.to(torch.int64).contiguous(),
            cell[0].to(dtype).contiguous(), data.edge_index.to(torch.int64).contiguous(),
            data.cell_shifts.to(dtype).contiguous())
        out = {"energy": energy.reshape(1), "node_energy": node_energy, "forces": forces,
               "virial": virial.reshape(1, 3, 3)}
        if compute_stress:
            out["stress"] = stress_from_virial(out["virial"], cell)
        return out


def neighbour_cap(model: nn.Module) -> int | None:
    """The model's neighbour cap (``config["max_neighbors"]``: keep each atom's k nearest
    neighbours), or None.  A traced graph cannot select edges by value, so whoever builds
    the edges of a traced or packaged model applies the cap (the calculator does)."""
    cap = (getattr(model, "config", None) or {}).get("max_neighbors")
    return None if cap is None else int(cap)


def inductor_options(model: nn.Module) -> dict[str, object]:
    """Inductor settings a model's graph needs.  GauntEquiformerV2: with torch 2.13 the
    vectorised CPU code of one of its fused force kernels gives forces off by ~1e-2 eV/A
    (energies exact; the graph itself, aot_eager and unvectorised Inductor code all match
    eager to 1e-15), so its graph is compiled without vectorisation."""
    if type(model).__name__ == "GauntEquiformerV2":
        return {"cpp.simdlen": 1}
    return {}


def compiled_potential(model: nn.Module) -> TracedPotential:
    """``model`` traced and compiled with ``torch.compile`` (free atom and edge counts: one
    compilation serves every structure size)."""
    dtype = next(model.parameters()).dtype
    graph = trace_potential(model, dtype)
    function = torch.compile(graph, dynamic=True, fullgraph=True,
                             options=inductor_options(model) or None)
    return TracedPotential(function, dict(model.config), dtype, source="the compiled model")


def packaged_potential(path, device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None) -> TracedPotential:
    """The ``.pt2`` package at ``path`` behind the models' call interface."""
    from forcefield.export import resolve_dtype
    from forcefield.model_files import ModelFileError
    from forcefield.pt2 import load_pt2, read_pt2_metadata

    meta = read_pt2_metadata(path)
    if meta["target"] != "ase":
        raise ModelFileError(f"{path} is a target={meta['target']} package (LAMMPS and other "
                             "hosts of system pieces); the calculator, md and relax need a "
                             "target=ase package: export it again with target=ase")
    runner, meta = load_pt2(path)
    own = resolve_dtype(meta["dtype"])
    if dtype is not None and dtype != own:
        raise ModelFileError(f"{path} is a {meta['dtype']} package; run it in {meta['dtype']} "
                             "(dtype=null) or export it again with dtype=...")
    if torch.device(device).type != meta.get("AOTI_DEVICE_KEY", "cpu"):
        raise ModelFileError(f"{path} was built for {meta.get('AOTI_DEVICE_KEY')}, not "
                             f"{device}; export it again on that device")
    config = {"species": meta["species"], "r_max": meta["r_max"], "e0s": meta["e0s"],
              "forces": meta["forces"], "max_neighbors": meta["max_neighbors"]}
    potential = TracedPotential(runner, config, own, source=str(path))
    potential.metadata = meta
    return potential
