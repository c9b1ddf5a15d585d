"""A model as one traced graph of plain tensors, forces and virial included.

``torch.compile`` cannot follow ``torch.autograd.grad`` inside a model, and an exported
program must compute forces without autograd at run time.  So the whole computation --
energy, then its gradient with respect to positions and a strain -- is traced once at the
operator level (``make_fx``, symbolic shapes: atom and edge counts stay free), giving a
graph in which the backward is plain operators (``forcefield::conv_senders`` and friends).
That graph is what ``torch.compile`` compiles (``compile=true``) and what AOTInductor
packages (``forcefield export format=pt2``).

The function's signature is the packaged model's: ``(positions [N, 3], atomic_numbers [N],
cell [3, 3], edge_index [2, E], cell_shifts [E, 3])`` (one structure; ``edge_index`` row 0
the centre atom i, row 1 the neighbour j, vectors ``r_j - r_i + shifts @ cell``) ->
``(energy [], node_energy [N], forces [N, 3], virial [3, 3])`` in float64.  Atomic numbers
are not checked inside the graph: callers check them against the model's species first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from forcefield import ops
from forcefield.nn.conservative import stress_from_virial

__all__ = ["OUTPUTS", "PotentialFunction", "TracedPotential", "compiled_potential",
           "example_inputs", "inductor_options", "packaged_potential", "trace_potential"]

#: the outputs of a traced potential, in order
OUTPUTS = ("energy", "node_energy", "forces", "virial")


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


def example_inputs(dtype: torch.dtype, num_atoms: int = 5, num_edges: int = 12,
                   species: int = 1) -> tuple[Tensor, ...]:
    """Small random inputs of the traced signature (sizes that no shape may be equal to,
    so that tracing keeps atoms and edges as separate symbols)."""
    gen = torch.Generator().manual_seed(0)
    positions = 3.0 * torch.rand(num_atoms, 3, generator=gen, dtype=dtype)
    sender = torch.randint(0, num_atoms, (num_edges,), generator=gen)
    receiver = (sender + torch.randint(1, num_atoms, (num_edges,), generator=gen)) % num_atoms
    return (positions, torch.full((num_atoms,), species, dtype=torch.int64),
            10.0 * torch.eye(3, dtype=dtype), torch.stack([receiver, sender]),
            torch.zeros(num_edges, 3, dtype=dtype))


@contextlib.contextmanager
def _free_shapes() -> Iterator[None]:
    """Symbols of equal size stay distinct (atoms may equal edges in some call)."""
    from torch.fx.experimental import _config

    with _config.patch(use_duck_shape=False):
        yield


def trace_potential(model: nn.Module, dtype: torch.dtype | None = None) -> torch.fx.GraphModule:
    """The traced graph of ``PotentialFunction(model)`` (weights as constants), for any
    number of atoms and edges; ``model`` must compute forces as -dE/dx."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from forcefield.direct_forces import FINETUNE_HINT, DirectForcesError, is_direct

    if is_direct(model):
        raise DirectForcesError("only models with gradient forces (-dE/dx) can be traced; this "
                                f"model predicts forces directly (model.forces=direct): "
                                f"{FINETUNE_HINT}")
    dtype = dtype or next(model.parameters()).dtype
    species = int(model.species[0]) if hasattr(model, "species") else 1
    function = PotentialFunction(model.eval())
    example = example_inputs(dtype, species=species)
    function(*example)  # fills the models' table caches with real tensors: graph constants
    with ops.tracing(), _free_shapes():
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
    from forcefield.pt2 import load_pt2

    runner, meta = load_pt2(path)
    own = resolve_dtype(meta["dtype"])
    if dtype is not None and dtype != own:
        raise ModelFileError(f"{path} is a {meta['dtype']} package; run it in {meta['dtype']} "
                             "(dtype=null) or export it again with dtype=...")
    if torch.device(device).type != meta.get("AOTI_DEVICE_KEY", "cpu"):
        raise ModelFileError(f"{path} was built for {meta.get('AOTI_DEVICE_KEY')}, not "
                             f"{device}; export it again on that device")
    config = {"species": meta["species"], "r_max": meta["r_max"], "e0s": meta["e0s"]}
    potential = TracedPotential(runner, config, own, source=str(path))
    potential.metadata = meta
    return potential
