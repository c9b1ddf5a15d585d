"""Reference side of tests/test_port_fairchem.py: run in the fairchem environment only.

    .venv-fairchem/bin/python tests/fairchem_eqv2_reference.py IN.pt OUT.pt

IN.pt (written by the test): ``cases``, each with ``backbone`` (EquiformerV2Backbone
arguments), ``heads``, ``seed`` and ``perturb`` (every parameter then moves by that times
N(0, 1)), and ``structures``: per structure ``pos`` [N, 3], ``cell`` [3, 3], ``numbers``
[N], the graph as fairchem reads it with ``otf_graph=False`` (``edge_index`` [2, E] with row
0 the source, ``cell_offsets`` [E, 3]) and ``rotation`` [E, 3, 3], our deterministic edge
frames.  Builds per case a randomly initialised fairchem hydra EquiformerV2 in float64
(``torch.set_default_dtype`` before construction, so its Wigner-D matrices, grids and
Gaussian centres are float64 too), replaces only the random roll of its edge frames by
``rotation`` (fairchem draws a random vector per edge and call; both frames send the edge
to +y, so they differ by a roll about the edge alone) and evaluates the batch in eval mode.
(fairchem's own graph, ``otf_graph=True``, cannot be built in float64: radius_graph_pbc
mixes in float32 tensors.)

OUT.pt: ``fairchem_version`` and ``cases``, each with ``checkpoint`` ({"state_dict":
{"module." + key: tensor}, "config": {"model": hydra config}}, the layout of a fairchem 1.x
trainer checkpoint), ``energy`` [B] and ``forces`` [N, 3].  No forcefield import: the two
sides share only these files.
"""

from __future__ import annotations

import sys

import torch


def main(path_in: str, path_out: str) -> None:
    torch.set_default_dtype(torch.float64)
    # importing the model module registers the backbone and the heads
    import fairchem.core
    import fairchem.core.models.equiformer_v2.equiformer_v2  # noqa: F401
    from fairchem.core.models.base import HydraModel
    from torch_geometric.data import Batch, Data

    spec = torch.load(path_in, weights_only=True)
    items, rotations = [], []
    for s in spec["structures"]:
        n = s["numbers"].shape[0]
        items.append(Data(pos=s["pos"], cell=s["cell"].reshape(1, 3, 3),
                          atomic_numbers=s["numbers"].to(torch.float64),
                          natoms=torch.tensor([n]), edge_index=s["edge_index"],
                          cell_offsets=s["cell_offsets"].to(torch.float64),
                          neighbors=torch.tensor([s["edge_index"].shape[1]]),
                          fixed=torch.zeros(n)))
        rotations.append(s["rotation"])
    batch = Batch.from_data_list(items)
    rotation = torch.cat(rotations)

    def fixed_roll(data, edge_index, edge_distance_vec):
        # the frames must belong to these edges: each sends its edge to +y
        unit = edge_distance_vec / edge_distance_vec.norm(dim=-1, keepdim=True)
        y = torch.einsum("eij,ej->ei", rotation, unit)
        assert torch.allclose(y, torch.tensor([0.0, 1.0, 0.0]).expand_as(y), atol=1e-10)
        return rotation.detach()

    results = []
    for case in spec["cases"]:
        torch.manual_seed(int(case["seed"]))
        backbone = {"model": "equiformer_v2_backbone", **case["backbone"]}
        model = HydraModel(backbone=backbone, heads=case["heads"], otf_graph=False)
        model.eval()
        with torch.no_grad():  # biases, norm weights and projection biases off their
            for p in model.parameters():  # initial 0 / 1: a wrong layout of any shows
                p.add_(float(case["perturb"]) * torch.randn_like(p))
        model.backbone._init_edge_rot_mat = fixed_roll
        out = model(batch)
        # hydra outputs are {head: {output_name: tensor}} unless the heads pass them through
        energy, forces = (out[k][k] if isinstance(out[k], dict) else out[k]
                          for k in ("energy", "forces"))
        state = {"module." + k: v.detach().clone() for k, v in model.state_dict().items()}
        config = {"model": {"name": "hydra", "backbone": backbone, "heads": case["heads"],
                            "otf_graph": False}}
        results.append({"checkpoint": {"state_dict": state, "config": config},
                        "energy": energy.detach().reshape(-1),
                        "forces": forces.detach().reshape(-1, 3)})
    torch.save({"cases": results,
                "fairchem_version": str(getattr(fairchem.core, "__version__", "unknown"))},
               path_out)

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
