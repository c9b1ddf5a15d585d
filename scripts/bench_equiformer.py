#!/usr/bin/env python
"""GauntEquiformerV2 (ours, with and without the Gaunt selfmix) against fairchem-core 1.10's
EquiformerV2 at matched hyperparameters, side by side, on OC20-like slabs with direct forces.

Measures, per configuration, in its own subprocess (clean peak memory):
  * training step per structure: energy + direct forces, an L1 loss, backward;
  * inference per structure (energy + forces, no backward);
  * peak memory (CPU: max RSS of the process; CUDA: max allocated);
  * the selfmix sub-layer's share of a block's forward time (ours, selfmix on).

Sizes: ``small`` (the gaunt_equiformer_v2_small preset's widths, direct forces, 6 A) and
``paper`` (the OC20 S2EF-2M model: 12 layers, 128 channels, L 6, M 2, 12 A, 20
neighbours).  fairchem runs in its own environment (scripts/setup_fairchem_env.sh creates
.venv-fairchem); without it only our two rows are printed.

    python scripts/bench_equiformer.py --size small --structures 2 --steps 3 --threads 2
    python scripts/bench_equiformer.py --size paper --structures 2 --steps 2 --threads 2
    python scripts/bench_equiformer.py --size paper --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAIRCHEM_PY = ROOT / ".venv-fairchem" / "bin" / "python"

SIZES = {
    "small": dict(num_layers=4, channels=64, lmax=4, mmax=2, heads=4, attn_hidden=32,
                  alpha_channels=16, value_channels=8, ffn_hidden=64, edge_channels=32,
                  num_radial=32, r_max=6.0, max_neighbors=20),
    "paper": dict(num_layers=12, channels=128, lmax=6, mmax=2, heads=8, attn_hidden=64,
                  alpha_channels=64, value_channels=16, ffn_hidden=128, edge_channels=128,
                  num_radial=128, r_max=12.0, max_neighbors=20),
}


def slabs(count: int, seed: int = 0):
    """OC20-like slabs: Cu(111) 3x4x6 (72 atoms) + a CO adsorbate, rattled, 74 atoms."""
    import numpy as np
    from ase.build import add_adsorbate, fcc111, molecule

    out = []
    rng = np.random.default_rng(seed)
    for _ in range(count):
        slab = fcc111("Cu", size=(3, 4, 6), vacuum=10.0)
        add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
        slab.positions += rng.normal(0, 0.05, slab.positions.shape)
        slab.pbc = (True, True, False)
        out.append(slab)
    return out


def _peak_memory(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(fn, steps: int, device) -> float:
    import torch

    fn()  # warm-up (first-call table builds, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def worker_ours(args) -> dict:
    import numpy as np
    import torch
    from ase.neighborlist import neighbor_list
    from torch_geometric.data import Batch, Data

    from forcefield.models import build_model

    device = torch.device(args.device)
    size = SIZES[args.size]
    atoms_list = slabs(args.structures)
    graphs = []
    for atoms in atoms_list:
        i, j, shifts = neighbor_list("ijS", atoms, size["r_max"])
        graphs.append(Data(
            pos=torch.tensor(atoms.positions, dtype=torch.float32),
            atomic_numbers=torch.tensor(atoms.numbers), natoms=torch.tensor([len(atoms)]),
            cell=torch.tensor(np.array(atoms.cell), dtype=torch.float32).reshape(1, 3, 3),
            edge_index=torch.tensor(np.stack([i, j])), cell_shifts=torch.tensor(shifts)))
    batch = Batch.from_data_list(graphs).to(device)
    cfg = dict(size, architecture="gaunt_equiformer_v2", species=[1, 6, 8, 29],
               selfmix=args.selfmix, forces="direct", alpha_drop=0.0, drop_path=0.0,
               parity=not args.complex_weights,
               avg_num_neighbors=float(size["max_neighbors"]))
    model = build_model(cfg).to(device).float().train()
    params = sum(p.numel() for p in model.parameters())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=args.precision == "bf16")

    def train_step():
        with autocast:
            out = model(batch, compute_forces=True, training=True)
            loss = out["energy"].abs().mean() + out["forces"].norm(dim=-1).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    def inference():
        with torch.no_grad(), autocast:
            model(batch, compute_forces=True)

    result = {"code": "ours", "selfmix": args.selfmix, "params": params,
              "parity": not args.complex_weights,
              "train_s_per_structure": _time(train_step, args.steps, device) / args.structures,
              "infer_s_per_structure": _time(inference, args.steps, device) / args.structures,
              "peak_mem_MiB": _peak_memory(device)}
    if args.selfmix:
        result["selfmix_share_of_block"] = _selfmix_share(model, batch, device, autocast)
    return result


def _selfmix_share(model, batch, device, autocast) -> float:
    """Forward time of the selfmix sub-layers (with their norm) over that of the blocks."""
    import torch

    times = {"block": 0.0, "selfmix": 0.0}
    starts: dict[int, float] = {}

    def pre(kind):
        def hook(module, inputs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            starts[id(module)] = time.perf_counter()
        return hook

    def post(kind):
        def hook(module, inputs, output):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[kind] += time.perf_counter() - starts[id(module)]
        return hook

    handles = []
    for block in model.blocks:
        for kind, mod in (("block", block), ("selfmix", block.selfmix),
                          ("selfmix", block.norm_selfmix)):
            handles.append(mod.register_forward_pre_hook(pre(kind)))
            handles.append(mod.register_forward_hook(post(kind)))
    with torch.no_grad(), autocast:
        model(batch, compute_forces=False)
    for h in handles:
        h.remove()
    return times["selfmix"] / times["block"]


def worker_fairchem(args) -> dict:
    import numpy as np
    import torch
    from fairchem.core.models.equiformer_v2.equiformer_v2 import (
        EquiformerV2Backbone,
        EquiformerV2EnergyHead,
        EquiformerV2ForceHead,
    )
    from torch_geometric.data import Batch, Data

    device = torch.device(args.device)
    size = SIZES[args.size]
    graphs = [Data(pos=torch.tensor(a.positions, dtype=torch.float32),
                   atomic_numbers=torch.tensor(a.numbers), natoms=torch.tensor([len(a)]),
                   cell=torch.tensor(np.array(a.cell), dtype=torch.float32).reshape(1, 3, 3),
                   pbc=torch.tensor([list(a.pbc)]), fixed=torch.zeros(len(a)))
              for a in slabs(args.structures)]
    batch = Batch.from_data_list(graphs).to(device)
    backbone = EquiformerV2Backbone(
        use_pbc=True, regress_forces=True, otf_graph=True,
        max_neighbors=size["max_neighbors"], max_radius=size["r_max"], max_num_elements=90,
        num_layers=size["num_layers"], sphere_channels=size["channels"],
        attn_hidden_channels=size["attn_hidden"], num_heads=size["heads"],
        attn_alpha_channels=size["alpha_channels"], attn_value_channels=size["value_channels"],
        ffn_hidden_channels=size["ffn_hidden"], norm_type="layer_norm_sh",
        lmax_list=[size["lmax"]], mmax_list=[size["mmax"]], grid_resolution=18,
        edge_channels=size["edge_channels"], num_distance_basis=size["num_radial"],
        use_grid_mlp=True, use_sep_s2_act=True, alpha_drop=0.0, drop_path_rate=0.0)
    energy_head = EquiformerV2EnergyHead(backbone)
    force_head = EquiformerV2ForceHead(backbone)
    modules = torch.nn.ModuleList([backbone, energy_head, force_head]).to(device).float().train()
    params = sum(p.numel() for p in modules.parameters())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=args.precision == "bf16")

    def forward():
        emb = backbone(batch)
        return energy_head(batch, emb)["energy"], force_head(batch, emb)["forces"]

    def train_step():
        with autocast:
            energy, forces = forward()
            loss = energy.abs().mean() + forces.norm(dim=-1).mean()
        loss.backward()
        modules.zero_grad(set_to_none=True)

    def inference():
        with torch.no_grad(), autocast:
            forward()

    return {"code": "fairchem", "selfmix": False, "params": params,
            "train_s_per_structure": _time(train_step, args.steps, device) / args.structures,
            "infer_s_per_structure": _time(inference, args.steps, device) / args.structures,
            "peak_mem_MiB": _peak_memory(device)}


def run_worker(python: str, code: str, args, selfmix: bool, complex_weights: bool = False
               ) -> dict | None:
    cmd = [python, __file__, "--worker", code, "--size", args.size,
           "--structures", str(args.structures), "--steps", str(args.steps),
           "--device", args.device, "--precision", args.precision]
    if selfmix:
        cmd.append("--selfmix")
    if complex_weights:
        cmd.append("--complex-weights")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{code} (selfmix={selfmix}) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--structures", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--fairchem-python", default=str(FAIRCHEM_PY))
    parser.add_argument("--skip-fairchem", action="store_true")
    parser.add_argument("--complex-weights", action="store_true",
                        help="also time ours with EquiformerV2's complex SO(2) weights "
                             "(model.parity=false), the exact weight layout of fairchem's")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", choices=["ours", "fairchem"], help=argparse.SUPPRESS)
    parser.add_argument("--selfmix", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        fn = worker_ours if args.worker == "ours" else worker_fairchem
        print(json.dumps(fn(args)))
        return 0
    rows = []
    variants = [(True, False), (False, False)]
    if args.complex_weights:
        variants += [(True, True), (False, True)]
    for selfmix, complex_weights in variants:
        row = run_worker(sys.executable, "ours", args, selfmix, complex_weights)
        if row:
            rows.append(row)
    if not args.skip_fairchem:
        if Path(args.fairchem_python).is_file():
            row = run_worker(args.fairchem_python, "fairchem", args, False)
            if row:
                rows.append(row)
        else:
            print(f"no {args.fairchem_python}: run scripts/setup_fairchem_env.sh for the "
                  "fairchem rows", file=sys.stderr)
    print(f"\n{args.size} size, {args.structures} slabs of 74 atoms, device {args.device}, "
          f"precision {args.precision}, {args.threads} threads")
    print(f"{'model':<30}{'params':>11}{'train s/str':>13}{'infer s/str':>13}"
          f"{'peak MiB':>10}{'selfmix/block':>15}")
    for row in rows:
        name = (f"{row['code']} EquiformerV2" if row["code"] == "fairchem" else
                f"ours {'+ selfmix' if row['selfmix'] else '(selfmix off)'}"
                f"{'' if row.get('parity', True) else ', complex'}")
        share = row.get("selfmix_share_of_block")
        print(f"{name:<30}{row['params']:>11,}{row['train_s_per_structure']:>13.3f}"
              f"{row['infer_s_per_structure']:>13.3f}{row['peak_mem_MiB']:>10.0f}"
              f"{'' if share is None else f'{100 * share:.1f} %':>15}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
