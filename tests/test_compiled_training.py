"""Compiled training (``training.compile=true``): the traced force graph, compiled, gives the
eager model's energies, forces, virials and -- through the double backward -- the same
parameter gradients of a force loss, for batches of any size without recompiling.

The graph is compiled with the ``aot_eager`` backend here: the same dynamo capture
(fullgraph), symbolic shapes and AOTAutograd differentiation as Inductor, without two minutes
of C++ code generation; Inductor's code for the traced force graph is checked against eager
in tests/test_pt2.py, and ``scripts/bench_compile.py --training`` runs the Inductor route."""

from __future__ import annotations

import copy

import ase.io
import pytest
import torch
from helpers import packed_box, trained_tiny_model
from torch_geometric.data import Batch

from forcefield import ops
from forcefield.data import AtomicData
from forcefield.training.compiled import CompiledTraining

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ops.available(), reason="operator library not built")]


def batches(repo_root) -> list[Batch]:
    """3BPA molecules in batches of 2 and 3, and one periodic box (new sizes each time)."""
    frames = ase.io.read(repo_root / "data" / "3bpa" / "train_300K.xyz", "10:15")
    box = packed_box(grid=(1, 1, 2))
    graphs = [AtomicData.from_ase(a, r_max=4.0, check_labels=False) for a in frames]
    box_graph = AtomicData.from_ase(box, r_max=4.0, check_labels=False)
    return [Batch.from_data_list(graphs[:2]), Batch.from_data_list(graphs[2:]),
            Batch.from_data_list([box_graph, graphs[0]])]


def loss_and_grads(out: dict, model: torch.nn.Module) -> tuple[torch.Tensor, list]:
    loss = (out["energy"] ** 2).sum() * 1e-4 + (out["forces"] ** 2).sum()
    if "virial" in out:
        loss = loss + (out["virial"] ** 2).sum() * 1e-2
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return loss, [torch.zeros_like(p) if g is None else g
                  for g, p in zip(grads, model.parameters(), strict=True)]


def test_compiled_training_equals_eager(repo_root) -> None:
    """Forces and virials (the OC20 and stress-trained case; the graph without stress is
    the same trace minus the strain)."""
    from torch._dynamo.utils import counters

    model = trained_tiny_model().train()
    reference = copy.deepcopy(model)
    torch._dynamo.reset()
    counters.clear()
    compiled = CompiledTraining(model, backend="aot_eager")
    for batch in batches(repo_root):
        got = compiled(batch, compute_forces=True, compute_stress=True)
        want = reference(batch, compute_forces=True, compute_stress=True, training=True)
        for key in ("energy", "forces") + ("virial", "stress"):
            scale = float(want[key].detach().abs().max()) + 1e-12
            assert float((got[key] - want[key]).abs().max()) <= 1e-10 * scale, key
        loss, grads = loss_and_grads(got, model)
        loss_ref, grads_ref = loss_and_grads(want, reference)
        assert float(abs(loss - loss_ref)) <= 1e-10 * float(loss_ref)
        for name, (g, h) in zip(dict(model.named_parameters()), zip(grads, grads_ref,
                                                                     strict=True), strict=True):
            scale = float(h.abs().max()) + 1e-12
            assert float((g - h).abs().max()) <= 1e-9 * scale, name
    assert counters["stats"]["unique_graphs"] == 1  # no recompilation for new sizes
