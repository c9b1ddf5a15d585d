"""Benchmark the data pipeline: graph building per structure and data waiting per training step.

    OMP_NUM_THREADS=1 python scripts/bench_data.py [--repeats 20] [--steps 30] [--device cpu]

Part 1 times, per structure, the neighbour list alone and the full ``AtomicData.from_ase``
with vesin (ours) and with ASE's ``neighbor_list`` (reference), for a 3BPA molecule
(27 atoms, 5 A), an OC20-like slab + adsorbate (~80 atoms, 6 and 12 A, EMT-labelled) and
a 1008-atom fcc bulk cell (5 A), and prints the speed-up.

Part 2 trains ``GauntMACE`` (small preset; a stand-in MLP if the model is unavailable) on
3BPA with the datamodule's default loader settings (graphs precomputed at setup,
num_workers=0) and reports the fraction of each step spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import statistics as st
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forcefield.data import AtomicData, ThreeBPADataModule, neighbour_list  # noqa: E402
from forcefield.data.readers import read_ase_file  # noqa: E402
from forcefield.data.synthetic import emt_bulk, emt_slab, label_with_emt  # noqa: E402


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return st.median(times)


def structures():
    dm_root = ThreeBPADataModule().root
    mol = next(read_ase_file(dm_root / "train_300K.xyz"))[0]
    rng = np.random.default_rng(0)
    slab = label_with_emt(emt_slab(rng, size=(4, 4, 5), metal="Cu", adsorbate="CO"))
    bulk = emt_bulk(np.random.default_rng(1), repeat=(6, 6, 7), metal="Cu")
    bare = mol.copy()
    bare.cell[:] = 0.0  # the same molecule without the file's 50 A box
    return [("3BPA molecule (50 A box, as read)", mol, 5.0), ("3BPA molecule (no cell)", bare, 5.0),
            ("OC20-like slab", slab, 6.0),
            ("OC20-like slab", slab, 12.0), ("fcc bulk", bulk, 5.0)]


def part1(repeats: int) -> list[dict]:
    rows = []
    print(f"## Graph building per structure (median of {repeats}, ms)")
    print("| system | atoms | r_max (A) | edges | NL vesin | NL ASE | NL speed-up "
          "| from_ase vesin | from_ase ASE | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, atoms, r in structures():
        pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
        n_edges = len(neighbour_list(pos, cell, pbc, r)[0])
        reps = max(3, repeats // 4) if len(atoms) > 500 else repeats
        nl_v = _time(lambda: neighbour_list(pos, cell, pbc, r, "vesin"), reps)  # noqa: B023
        nl_a = _time(lambda: neighbour_list(pos, cell, pbc, r, "ase"), reps)  # noqa: B023
        fa_v = _time(lambda: AtomicData.from_ase(atoms, r), reps)  # noqa: B023
        fa_a = _time(lambda: AtomicData.from_ase(atoms, r, backend="ase"), reps)  # noqa: B023
        row = dict(system=name, atoms=len(atoms), r_max=r, edges=n_edges, nl_vesin=nl_v * 1e3,
                   nl_ase=nl_a * 1e3, from_ase_vesin=fa_v * 1e3, from_ase_ase=fa_a * 1e3)
        rows.append(row)
        print(f"| {name} | {len(atoms)} | {r:g} | {n_edges} | {nl_v*1e3:.3f} | {nl_a*1e3:.2f} "
              f"| {nl_a/nl_v:.0f}x | {fa_v*1e3:.3f} | {fa_a*1e3:.2f} | {fa_a/fa_v:.0f}x |")
    return rows


class _StandIn(torch.nn.Module):
    """Energy = sum over atoms of an MLP of a smooth neighbour density (forces by autograd)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 32)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.SiLU(),
                                       torch.nn.Linear(64, 1))

    def forward(self, data, training=True):
        from torch_geometric.utils import scatter

        from forcefield.data import batch_edge_vectors

        pos = data.pos.requires_grad_(True)
        d = batch_edge_vectors(data).norm(dim=-1, keepdim=True)
        rbf = torch.exp(-((d - torch.linspace(0.5, 5, 8, dtype=d.dtype)) ** 2))
        dens = scatter(rbf, data.edge_index[0], 0, dim_size=data.num_nodes)
        h = torch.cat([self.emb(data.atomic_numbers).to(d.dtype), dens], -1)
        e = scatter(self.mlp(h).squeeze(-1), data.batch, 0, dim_size=data.num_graphs)
        (g,) = torch.autograd.grad(e.sum(), pos, create_graph=training)
        return {"energy": e, "forces": -g}


def part2(steps: int, device: str, dtype: torch.dtype) -> dict:
    t0 = time.perf_counter()
    dm = ThreeBPADataModule(stats_cache=False)  # default loader settings
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    try:
        from forcefield.models import build_model

        model = build_model({"name": "gaunt_mace_small"}, dm.statistics)
        label = "GauntMACE (gaunt_mace_small preset)"
    except Exception as err:  # pragma: no cover - model not there yet
        print(f"(GauntMACE unavailable: {err}; using a stand-in)")
        model, label = _StandIn(), "stand-in MLP"
    model = model.to(device=device, dtype=dtype).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    wait, compute = [], []
    it = iter(dm.train_dataloader())
    for step in range(steps + 3):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            batch = next(it)
        batch = batch.to(device)
        t1 = time.perf_counter()
        out = model(batch, training=True) if label == "stand-in MLP" else \
            model(batch, compute_forces=True, training=True)
        loss = ((out["energy"].double() - batch.energy) ** 2).mean() * 1e-4 + \
            ((out["forces"].double() - batch.forces) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if step >= 3:  # warm-up
            wait.append(t1 - t0)
            compute.append(t2 - t1)
    w, c = float(np.mean(wait)), float(np.mean(compute))
    print(f"\n## Data waiting per training step ({label}, 3BPA, batch_size={dm.batch_size}, "
          f"num_workers={dm.num_workers}, {device}, {str(dtype).replace('torch.', '')})")
    print(f"setup (read 500 structures + build graphs + statistics): {setup_s:.2f} s")
    print(f"data wait {w*1e3:.2f} ms / step, compute {c*1e3:.1f} ms / step, "
          f"waiting fraction {100*w/(w+c):.2f} %")
    return dict(model=label, wait_ms=w * 1e3, compute_ms=c * 1e3, fraction=w / (w + c),
                setup_s=setup_s)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--skip-graphs", action="store_true")
    p.add_argument("--skip-step", action="store_true")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_graphs:
        part1(args.repeats)
    if not args.skip_step:
        part2(args.steps, args.device, getattr(torch, args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
