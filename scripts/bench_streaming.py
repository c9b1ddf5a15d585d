"""Benchmark the streaming data layer on synthetic OC20-like data (N = 1e4 .. 1e6).

    python scripts/bench_streaming.py                       # the README table
    python scripts/bench_streaming.py --sizes 10000 100000 --workers 0 1 --json out.json

Data: slabs of 72 metal atoms plus an adsorbate (~73 atoms, vacuum along z, FixAtoms,
synthetic labels), in .aselmdb shards of 100,000 rows + metadata.npz, written once into the
cache (``--cache``; 1e6 structures is ~3.5 GB). A pool of 2,000 distinct rows is encoded
by ase-db-backends and repeated, so the rows are byte-for-byte what forcefield convert writes.

Measured, each case in a fresh child process (so nothing is inherited):
* memory: peak anonymous memory (PSS: Pss_Anon) summed over the main process and its
  DataLoader workers while iterating batches (page cache of the memory-mapped LMDB
  excluded), per epoch;
* time to the first batch (dataset + sampler + loader construction, metadata present);
* throughput (structures/s, atoms/s) for read+decode, + graph (6 A, and 12 A capped at 20
  neighbours), + collate, with 0, 1 and 2 workers;
* the fraction of a training step spent waiting for data with experiment=oc20_s2ef's model
  (GauntMACE, float32) on the CPU;
* the in-memory path (every graph built at setup) on the same data, where it fits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

SHARD_ROWS = 100_000
POOL = 2000


# --------------------------------------------------------------------------- data
def _pool_rows() -> tuple[list[bytes], np.ndarray]:
    """2,000 encoded .aselmdb rows (zlib JSON, as ase-db-backends writes them) and natoms."""
    import ase.db
    import lmdb

    from forcefield.data.synthetic import oc20_like

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pool.aselmdb")
        natoms = []
        with ase.db.connect(path, use_lock_file=False) as db:
            for atoms in oc20_like(POOL, seed=0, kind="slab", size=(3, 3, 8)):
                db.write(atoms, key_value_pairs={"sid": atoms.info["sid"], "fid": 0})
                natoms.append(len(atoms))
        env = lmdb.open(path, subdir=False, readonly=True, lock=False)
        with env.begin() as txn:
            rows = [bytes(txn.get(str(i + 1).encode())) for i in range(POOL)]
        env.close()
    return rows, np.asarray(natoms, dtype=np.int32)


def ensure_data(root: Path, n: int) -> Path:
    """``root/n<N>``: N rows in .aselmdb shards + metadata.npz (written once)."""
    import lmdb

    from forcefield.data.metadata import write_metadata

    out = root / f"n{n}"
    if (out / "metadata.npz").is_file():
        return out
    rows, pool_natoms = _pool_rows()
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".n{n}."))
    names, lengths = [], []
    nextid = zlib.compress(b"%d" % 0)
    for s, start in enumerate(range(0, n, SHARD_ROWS)):
        stop = min(start + SHARD_ROWS, n)
        name = f"data.{s:04d}.aselmdb"
        env = lmdb.open(str(tmp / name), subdir=False, map_size=2**36, lock=False,
                        writemap=True)
        with env.begin(write=True) as txn:
            for k in range(start, stop):
                txn.put(str(k - start + 1).encode(), rows[k % POOL])
            nextid = zlib.compress(str(stop - start + 1).encode())
            txn.put(b"nextid", nextid)
        env.close()
        names.append(name)
        lengths.append(stop - start)
        print(f"  wrote {name} ({stop} of {n})", file=sys.stderr, flush=True)
    natoms = pool_natoms[np.arange(n) % POOL]
    write_metadata(tmp / "metadata.npz", natoms=natoms, shard_names=np.array(names),
                   shard_lengths=np.array(lengths, dtype=np.int64))
    tmp.chmod(0o755)
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- memory
def _anon_kb(pid: int) -> int:
    """Proportional anonymous memory (Pss_Anon) of a process in kB: pages shared with a
    forked worker count half in each, so the sum over processes is the real footprint
    (RssAnon would count the copy-on-write index twice); file-backed LMDB pages excluded."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1])
        with open(f"/proc/{pid}/status") as fh:  # kernels without Pss_Anon
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_anon_kb(pid: int) -> int:
    """RssAnon of one process in kB (its own anonymous pages, shared or not)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


class PeakAnon:
    """Samples RssAnon of this process and its children (workers) every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop:
            total = _anon_kb(me) + sum(_anon_kb(c) for c in _children(me))
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self) -> PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()

    def reset(self) -> None:
        self.peak = 0


# --------------------------------------------------------------------------- child cases
def child_stream(args) -> dict:
    """Memory per epoch, time to first batch and loader throughput for one (N, workers)."""
    import torch
    from torch.utils.data import DataLoader

    from forcefield.data.sampler import BudgetBatchSampler
    from forcefield.data.streaming import StreamingDataset, collate_graphs

    torch.set_num_threads(1)
    result: dict = {"case": "stream", "n": args.n, "workers": args.workers}
    with PeakAnon() as mem:
        base = _rss_anon_kb(os.getpid())
        t0 = time.perf_counter()
        ds = StreamingDataset(args.data, args.r_max, max_neighbors=args.max_neighbors,
                              progress=False)
        sampler = BudgetBatchSampler(ds.natoms, max_atoms=args.max_atoms, seed=0)
        kwargs = {"persistent_workers": True, "prefetch_factor": 2,
                  "multiprocessing_context": "fork"} if args.workers else {}
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=args.workers,
                            collate_fn=collate_graphs, **kwargs)
        it = iter(loader)
        first = next(it)
        result["first_batch_s"] = time.perf_counter() - t0
        # the parent's growth up to the first batch: index arrays, sampler, loader (and,
        # with no workers, the first batch itself)
        result["parent_index_kb"] = _rss_anon_kb(os.getpid()) - base
        peaks = []
        structures = atoms = 0
        t1 = time.perf_counter()
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            mem.reset()
            it = iter(loader) if epoch else it
            for k, batch in enumerate(it):
                structures += int(batch.num_graphs)
                atoms += int(batch.num_nodes)
                if k + 1 >= args.batches:
                    break
            peaks.append(mem.peak)
        dt = time.perf_counter() - t1
        del first
    result["peak_anon_mb_per_epoch"] = [p / 1024 for p in peaks]
    result["structures_per_s"] = structures / dt
    result["atoms_per_s"] = atoms / dt
    return result


def child_stages(args) -> dict:
    """Per-worker throughput of read+decode, +graph, +collate (no workers: one core)."""
    import torch

    from forcefield.data.streaming import StreamingDataset, collate_graphs

    torch.set_num_threads(1)
    ds = StreamingDataset(args.data, args.r_max, max_neighbors=args.max_neighbors,
                          progress=False)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(ds), size=args.samples, replace=False)
    out = {"case": "stages", "n": args.n, "r_max": args.r_max,
           "max_neighbors": args.max_neighbors}
    t = time.perf_counter()
    fields = [ds.fields([int(i)])[0] for i in idx]
    out["read_decode_per_s"] = len(idx) / (time.perf_counter() - t)
    t = time.perf_counter()
    graphs = [ds[int(i)] for i in idx]
    out["read_graph_per_s"] = len(idx) / (time.perf_counter() - t)
    t = time.perf_counter()
    for start in range(0, len(graphs), 16):
        collate_graphs(graphs[start:start + 16])
    collate_s = time.perf_counter() - t
    out["read_graph_collate_per_s"] = len(idx) / (len(idx) / out["read_graph_per_s"] + collate_s)
    out["atoms_per_structure"] = float(np.mean([len(f["numbers"]) for f in fields]))
    out["edges_per_atom"] = float(np.mean([g.edge_index.shape[1] / g.num_nodes
                                           for g in graphs]))
    return out


def child_memory_path(args) -> dict:
    """The in-memory datamodule path (every graph built at setup) on the same data."""
    import torch

    from forcefield.data.graphs import build_graphs
    from forcefield.data.readers import iter_records

    torch.set_num_threads(1)
    with PeakAnon() as mem:
        t0 = time.perf_counter()
        graphs = build_graphs(iter_records(args.data), args.r_max,
                              max_neighbors=args.max_neighbors)
        setup = time.perf_counter() - t0
    return {"case": "in_memory", "n": args.n, "setup_s": setup, "graphs": len(graphs),
            "peak_anon_mb": mem.peak / 1024}


def child_train_wait(args) -> dict:
    """Fraction of a training step spent waiting for data (oc20_s2ef model, CPU, float32)."""
    import torch
    from torch.utils.data import DataLoader

    from forcefield.data.sampler import BudgetBatchSampler
    from forcefield.data.statistics import DatasetStatistics
    from forcefield.data.streaming import StreamingDataset, collate_graphs
    from forcefield.models import build_model

    torch.set_num_threads(args.threads)
    ds = StreamingDataset(args.data, args.r_max, max_neighbors=args.max_neighbors,
                          progress=False)
    stats = DatasetStatistics(species=list(range(1, 84)), e0s={z: 0.0 for z in range(1, 84)},
                              mean_interaction_energy_per_atom=0.0, force_rms=1.0,
                              avg_num_neighbors=20.0)
    model = build_model({"name": args.model, "r_max": args.r_max}, stats).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sampler = BudgetBatchSampler(ds.natoms, batch_size=args.train_batch, seed=0)
    kwargs = {"persistent_workers": True, "prefetch_factor": 2,
              "multiprocessing_context": "fork"} if args.workers else {}
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=args.workers,
                        collate_fn=collate_graphs, **kwargs)
    wait = step = 0.0
    it = iter(loader)
    next(it)  # workers started and warm
    for _ in range(args.train_steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        batch.pos = batch.pos.float()
        batch.cell = batch.cell.float()
        out = model(batch, compute_forces=True, training=True)
        loss = (out["energy"].double() - batch.energy).pow(2).mean() + \
            (out["forces"].double() - batch.forces).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        wait += t1 - t0
        step += t2 - t1
    return {"case": "train_wait", "model": args.model, "workers": args.workers,
            "batch": args.train_batch,
            "wait_fraction": wait / (wait + step), "step_s": step / args.train_steps,
            "wait_s": wait / args.train_steps}


CHILDREN = {"stream": child_stream, "stages": child_stages, "in_memory": child_memory_path,
            "train_wait": child_train_wait}


def run_child(case: str, **kw) -> dict:
    argv = [sys.executable, __file__, "--child", case]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{case} {kw} failed with exit code {proc.returncode} (-9: killed, "
                           f"e.g. out of memory):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "forcefield" /
                                          "bench_streaming"))
    p.add_argument("--batches", type=int, default=150, help="batches per epoch measured")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-atoms", type=int, default=1500)
    p.add_argument("--in-memory-sizes", type=int, nargs="*", default=[10_000])
    p.add_argument("--train-steps", type=int, default=4)
    p.add_argument("--train-batch", type=int, default=2,
                   help="structures per training step (gaunt_mace in float32 needs ~10 GB "
                        "per 8 OC20 structures on the CPU)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    # child-process options
    p.add_argument("--child", choices=sorted(CHILDREN), default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--r-max", type=float, default=6.0)
    p.add_argument("--max-neighbors", type=lambda s: None if s == "None" else int(s),
                   default=None)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--model", default="gaunt_mace")
    args = p.parse_args()
    if args.child:
        args.workers = args.workers[0]
        print(json.dumps(CHILDREN[args.child](args)))
        return

    root = Path(args.cache)
    root.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    print(f"load average at start: {os.getloadavg()}", flush=True)
    data = {n: ensure_data(root, n) for n in args.sizes}
    largest = max(args.sizes)

    print(f"\n== memory and time to first batch (max_atoms={args.max_atoms}, 6 A) ==")
    print(f"{'N':>9} {'workers':>7} {'first batch s':>13} {'parent MB':>9} "
          f"{'peak anon MB per epoch':>30} {'structures/s':>12}")
    for n in args.sizes:
        for w in args.workers:
            r = run_child("stream", data=data[n], n=n, workers=w, batches=args.batches,
                          epochs=args.epochs, max_atoms=args.max_atoms)
            results.append(r)
            peaks = " ".join(f"{x:7.1f}" for x in r["peak_anon_mb_per_epoch"])
            print(f"{n:>9} {w:>7} {r['first_batch_s']:>13.2f} "
                  f"{r['parent_index_kb'] / 1024:>9.1f} {peaks:>30} "
                  f"{r['structures_per_s']:>12.1f}", flush=True)
    for w in args.workers:
        rows = [r for r in results if r["case"] == "stream" and r["workers"] == w]
        growth = max(rows[-1]["peak_anon_mb_per_epoch"]) - max(rows[0]["peak_anon_mb_per_epoch"])
        print(f"growth of peak anon memory from N={rows[0]['n']} to N={rows[-1]['n']}, "
              f"{w} workers: {growth:+.1f} MB")

    print(f"\n== per-worker throughput (one core, no workers) at N={largest} ==")
    print(f"{'cutoff':>10} {'read+decode/s':>13} {'+graph/s':>9} {'+collate/s':>10} "
          f"{'atoms/s':>9} {'edges/atom':>10}")
    for r_max, cap in ((6.0, None), (12.0, 20)):
        r = run_child("stages", data=data[largest], n=largest, r_max=r_max, max_neighbors=cap)
        results.append(r)
        label = f"{r_max:.0f} A" + (f" cap {cap}" if cap else "")
        print(f"{label:>10} {r['read_decode_per_s']:>13.0f} {r['read_graph_per_s']:>9.0f} "
              f"{r['read_graph_collate_per_s']:>10.0f} "
              f"{r['read_graph_collate_per_s'] * r['atoms_per_structure']:>9.0f} "
              f"{r['edges_per_atom']:>10.1f}", flush=True)

    print("\n== data waiting in a training step (float32, CPU, 6 A) ==")
    print("gaunt_mace: experiment=oc20_s2ef's model; gaunt_mace_small: a shorter step")
    for model in ("gaunt_mace", "gaunt_mace_small"):
        for w in [x for x in args.workers if x > 0] or [0]:
            r = run_child("train_wait", data=data[min(args.sizes)], n=min(args.sizes),
                          workers=w, train_steps=args.train_steps,
                          train_batch=args.train_batch, threads=args.threads, model=model)
            results.append(r)
            print(f"{model:>16}, workers {w}: step {r['step_s']:.2f} s, waiting "
                  f"{r['wait_s'] * 1e3:.1f} ms ({100 * r['wait_fraction']:.1f} % of the step)",
                  flush=True)

    print("\n== the in-memory path on the same data ==")
    for n in args.in_memory_sizes:
        if n not in data:
            data[n] = ensure_data(root, n)
        r = run_child("in_memory", data=data[n], n=n)
        results.append(r)
        stream = [x for x in results if x["case"] == "stream" and x["n"] == n
                  and x["workers"] == 0]
        extra = (f" (streaming, 0 workers: first batch {stream[0]['first_batch_s']:.2f} s, "
                 f"peak {max(stream[0]['peak_anon_mb_per_epoch']):.0f} MB)") if stream else ""
        print(f"N={n}: setup {r['setup_s']:.1f} s, peak anon {r['peak_anon_mb']:.0f} MB"
              + extra, flush=True)
    print(f"\nload average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
