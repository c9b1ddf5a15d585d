"""Compiled training: the model's loss inputs (energies, forces, virials) as one compiled graph.

``torch.compile`` cannot follow the ``torch.autograd.grad(create_graph=True)`` that force
training needs inside the model.  So, as for inference (``forcefield.traced``), the forward
pass *and* its gradient with respect to positions (and strain) are traced once at the
operator level with ``make_fx`` -- this time with the parameters as graph inputs -- giving a
plain graph whose force part is made of first-derivative operators
(``forcefield::conv_senders``, ``powers_backward`` and aten ops).  ``torch.compile`` then
compiles that graph; the training backward differentiates it once more (the registered
double-backward operators), so the loss gradient reaches the parameters as in eager mode.

Atom, edge and structure counts are symbolic: one compilation serves every batch.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn

from forcefield import ops
from forcefield.traced import OUTPUTS

__all__ = ["CompiledTraining"]


class _TrainingFunction(nn.Module):
    """The model as a function of (parameters, buffers, batch tensors) -> loss inputs."""

    def __init__(self, model: nn.Module, forces: bool, stress: bool) -> None:
        super().__init__()
        self.model = model
        self.forces = forces
        self.stress = stress
        self.parameter_names = [name for name, _ in model.named_parameters()]
        self.buffer_names = [name for name, _ in model.named_buffers()]

    def forward(self, parameters: list[Tensor], buffers: list[Tensor], pos: Tensor,
                atomic_numbers: Tensor, cell: Tensor, edge_index: Tensor, cell_shifts: Tensor,
                batch: Tensor) -> tuple[Tensor, ...]:
        state = dict(zip(self.parameter_names, parameters, strict=True))
        state.update(zip(self.buffer_names, buffers, strict=True))
        data = SimpleNamespace(pos=pos, atomic_numbers=atomic_numbers, cell=cell,
                               edge_index=edge_index, cell_shifts=cell_shifts, batch=batch)
        out = torch.func.functional_call(
            self.model, state, (data,),
            {"compute_forces": self.forces, "compute_stress": self.stress, "training": True})
        return tuple(out[key] for key in OUTPUTS if key in out)


def _example_batch(model: nn.Module, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Two small structures (sizes no two symbols share), the traced batch's layout."""
    from forcefield.traced import example_inputs

    species = int(model.config["species"][0])
    pos, numbers, _, edge_index, shifts = example_inputs(dtype, num_atoms=7, num_edges=17,
                                                          species=species)
    cell = 10.0 * torch.eye(3, dtype=dtype).expand(2, 3, 3).clone()
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    same = batch[edge_index[0]] == batch[edge_index[1]]
    return pos, numbers, cell, edge_index[:, same], shifts[same], batch


class CompiledTraining:
    """``model``'s training forward (``compute_forces``, ``compute_stress``,
    ``training=True``), traced with its force graph and compiled with ``torch.compile``.

    Direct-force models (``model.forces=direct``) are traced the same way, without a force
    graph.  ``self(batch, compute_forces, compute_stress)`` returns the model's output dict; the
    parameters are the live ``model.parameters()``, so optimiser steps, EMA and DDP see them
    as usual.  One graph per (forces, stress) combination, traced on first use.
    ``backend`` is ``torch.compile``'s (``inductor``; ``aot_eager`` runs the same traced and
    differentiated graph without code generation, minutes faster to build).
    """

    def __init__(self, model: nn.Module, backend: str = "inductor") -> None:
        self.model = model
        self.backend = backend
        self._compiled: dict[tuple[bool, bool], object] = {}

    def _build(self, forces: bool, stress: bool):
        from torch.fx.experimental.proxy_tensor import make_fx

        from forcefield.traced import free_shapes, inductor_options

        model = self.model
        dtype = next(model.parameters()).dtype
        function = _TrainingFunction(model, forces, stress)
        example = _example_batch(model, dtype)
        parameters = [p.detach() for p in model.parameters()]
        buffers = [b.detach() for b in model.buffers()]
        function(parameters, buffers, *example)  # real table caches: graph constants
        with ops.tracing(), free_shapes():  # dropout is traced in the model's current mode
            graph = make_fx(function, tracing_mode="symbolic",
                            _allow_non_fake_inputs=True)(parameters, buffers, *example)
        # parameters keep their shapes; the data's sizes are marked dynamic per call
        options = (inductor_options(model) or None) if self.backend == "inductor" else None
        return torch.compile(graph, backend=self.backend, dynamic=False, fullgraph=True,
                             options=options)

    def __call__(self, data, compute_forces: bool, compute_stress: bool) -> dict[str, Tensor]:
        key = (bool(compute_forces), bool(compute_stress))
        if key not in self._compiled:
            self._compiled[key] = self._build(*key)
        dtype = next(self.model.parameters()).dtype
        n = data.pos.shape[0]
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=data.pos.device)
        inputs = (data.pos.to(dtype), data.atomic_numbers.to(torch.int64),
                  data.cell.to(dtype).reshape(-1, 3, 3), data.edge_index.to(torch.int64),
                  data.cell_shifts.to(dtype), batch.to(torch.int64))
        for tensor, dim in zip(inputs, (0, 0, 0, 1, 0, 0), strict=True):
            torch._dynamo.maybe_mark_dynamic(tensor, dim)  # atoms, structures, edges
        values = self._compiled[key](list(self.model.parameters()),
                                     list(self.model.buffers()), *inputs)
        names = [k for k in OUTPUTS if k not in ("forces",) or compute_forces]
        names = [k for k in names if k != "virial" or compute_stress]
        out = dict(zip(names, values, strict=True))
        if compute_stress:
            from forcefield.nn.conservative import stress_from_virial

            out["stress"] = stress_from_virial(out["virial"], data.cell.reshape(-1, 3, 3))
        return out
