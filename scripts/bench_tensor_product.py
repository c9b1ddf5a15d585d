"""Benchmark the Gaunt tensor product against e3nn, side by side in one run.

For L = 1..8 and lmax_out in {L, 2L} (lmax1 = lmax2 = L), with nodes x channels inputs,
it times forward and forward+backward of each of our methods ("grid" runs the fused CPU
kernel; "grid_torch" is the same method on torch matrix products, its fallback), "auto",
e3nn's CG ``TensorProduct`` restricted to the same even paths with Gaunt path weights (the
fair reference: it computes the same numbers, which the script checks), and e3nn's
``FullTensorProduct``.  Prints a table in milliseconds with the speed-up of "auto" over
the e3nn reference, and writes JSON.  e3nn is a benchmark/test oracle only.

    python scripts/bench_tensor_product.py --device cpu --dtype float32 --json bench_tp.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import torch

from forcefield.runtime import cpu_description, tune_cpu_allocator
from forcefield.so3 import GauntTensorProduct, grid_kernel

OURS = ("dense", "grid", "grid_torch", "fourier", "auto")


def interleaved_medians(candidates: dict, device: torch.device, budget_s: float,
                        max_rounds: int = 60) -> dict[str, float]:
    """Median wall time (ms) of each callable, timed round-robin so that load changes on a
    shared machine hit every candidate alike, in a new (seeded) order each round so that no
    candidate always follows the same cache-thrashing neighbour; at least 3 rounds, then
    until the budget."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in candidates.values():  # warm-up (e3nn code generation, allocator, caches)
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates)
    shuffle = random.Random(0).shuffle
    start = time.perf_counter()
    for round_index in range(max_rounds):
        if round_index >= 3 and time.perf_counter() - start > budget_s:
            break
        shuffle(order)
        for name in order:
            fn = candidates[name]
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}


def without_kernel(module):
    """The module with its grid product forced onto the torch matrix-product route."""
    def call(a, b):
        with grid_kernel.disabled():
            return module(a, b)

    return call


def e3nn_gaunt_reference(lmax: int, lmax_out: int):
    """e3nn TensorProduct with only the even (l1 + l2 + l) paths, weighted to give Gaunt."""
    from e3nn import o3
    from sympy.physics.wigner import wigner_3j

    irreps = o3.Irreps.spherical_harmonics(lmax)
    irreps_out = o3.Irreps.spherical_harmonics(lmax_out)
    instructions = []
    for i1, (_, ir1) in enumerate(irreps):
        for i2, (_, ir2) in enumerate(irreps):
            for io, (_, ir) in enumerate(irreps_out):
                l1, l2, l = ir1.l, ir2.l, ir.l
                if (l1 + l2 + l) % 2 or not abs(l1 - l2) <= l <= l1 + l2:
                    continue
                c = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l + 1) / (4 * math.pi))
                c *= abs(float(wigner_3j(l1, l2, l, 0, 0, 0)))
                # e3nn multiplies by sqrt(path_weight): pass c**2 to get c.
                instructions.append((i1, i2, io, "uuu", False, c * c))
    return o3.TensorProduct(irreps, irreps, irreps_out, instructions,
                            irrep_normalization="none", path_normalization="none")


def e3nn_full(lmax: int):
    from e3nn import o3

    irreps = o3.Irreps.spherical_harmonics(lmax)
    return o3.FullTensorProduct(irreps, irreps, irrep_normalization="none")


def forward_and_step(fn, x1, x2):
    """Callables for the forward pass alone and for forward + backward of fn(x1, x2)."""
    def forward() -> None:
        with torch.no_grad():
            fn(x1, x2)

    def step() -> None:
        a = x1.detach().requires_grad_()
        b = x2.detach().requires_grad_()
        fn(a, b).square().sum().backward()

    return forward, step


def dense_fits(lmax: int, lmax_out: int, rows: int, itemsize: int, limit_gb: float) -> bool:
    """The dense contraction's intermediate [rows, D2 * D_out] must fit in memory."""
    return rows * (lmax + 1) ** 2 * (lmax_out + 1) ** 2 * itemsize / 1e9 < limit_gb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--nodes", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--lmax", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--skip-full", action="store_true", help="skip e3nn FullTensorProduct")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 gives stable numbers on a loaded machine)")
    parser.add_argument("--json", default="bench_tensor_product.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = tune_cpu_allocator()  # same process: helps e3nn exactly as much as us

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = args.nodes * args.channels
    results = []

    def flat(fn):
        """e3nn takes [rows, D]: fold nodes x channels into rows."""
        return lambda a, b: fn(a.flatten(0, -2), b.flatten(0, -2))

    header = (f"{'L':>2} {'Lout':>4} | " + " ".join(f"{m:>15}" for m in OURS)
              + f" | {'e3nn gaunt':>15} {'e3nn full':>15} | {'auto x':>7} {'auto/best':>9}")
    print(f"# {rows} rows ({args.nodes} nodes x {args.channels} channels), {args.dtype}, "
          f"{device}, torch {torch.__version__}, {cpu_description()}, "
          f"{torch.get_num_threads()} threads, malloc tuning {'on' if tuned else 'off'}")
    print("# each cell: forward / forward+backward in ms")
    print(header)
    for lmax in args.lmax:
        for lmax_out in sorted({lmax, 2 * lmax}):
            generator = torch.Generator().manual_seed(lmax)
            x1 = torch.randn(args.nodes, args.channels, (lmax + 1) ** 2, generator=generator)
            x2 = torch.randn(args.nodes, args.channels, (lmax + 1) ** 2, generator=generator)
            x1, x2 = x1.to(device, dtype), x2.to(device, dtype)
            row = {"lmax": lmax, "lmax_out": lmax_out}
            candidates = {}
            for method in OURS:
                if method == "grid_torch":  # the grid method without the fused CPU kernel
                    candidates[method] = without_kernel(candidates["grid"])
                    continue
                module = GauntTensorProduct(lmax, lmax, lmax_out, method).to(device)
                if method == "auto":
                    # "auto" is the very module of the method it picks: time that once, so
                    # auto/best measures the rule, not the noise between two equal runs.
                    row["auto_method"] = module.method
                    continue
                if module.method == "dense" and not dense_fits(
                        lmax, lmax_out, rows, x1.element_size(), 2.0):
                    continue
                candidates[method] = module
            reference = e3nn_gaunt_reference(lmax, lmax_out).to(device=device, dtype=dtype)
            candidates["e3nn_gaunt"] = flat(reference)
            if not args.skip_full and lmax_out == 2 * lmax:
                full = e3nn_full(lmax).to(device=device, dtype=dtype)
                candidates["e3nn_full"] = flat(full)
            with torch.no_grad():
                ours_out = candidates[row["auto_method"]](x1[:8], x2[:8])
                e3nn_out = candidates["e3nn_gaunt"](x1[:8], x2[:8]).reshape(ours_out.shape)
            error = (e3nn_out - ours_out).abs().max().item()
            row["max_abs_difference_vs_e3nn"] = error
            pairs = {name: forward_and_step(fn, x1, x2) for name, fn in candidates.items()}
            forward = interleaved_medians({n: p[0] for n, p in pairs.items()}, device, args.budget)
            backward = interleaved_medians({n: p[1] for n, p in pairs.items()}, device, args.budget)
            for name in candidates:
                row[name] = [forward[name], backward[name]]
            row["auto"] = row[row["auto_method"]]
            ours = [row[m] for m in OURS[:-1] if row.get(m)]
            best_forward = min(t[0] for t in ours)
            best_backward = min(t[1] for t in ours)
            row["speedup_auto_vs_e3nn"] = [row["e3nn_gaunt"][i] / row["auto"][i] for i in (0, 1)]
            row["auto_over_best"] = [row["auto"][0] / best_forward, row["auto"][1] / best_backward]
            results.append(row)

            def cell(value) -> str:
                return f"{value[0]:7.2f}/{value[1]:7.2f}" if value else f"{'n/a':>15}"

            print(f"{lmax:>2} {lmax_out:>4} | " + " ".join(cell(row.get(m)) for m in OURS)
                  + f" | {cell(row['e3nn_gaunt'])} {cell(row.get('e3nn_full'))} | "
                  + f"{row['speedup_auto_vs_e3nn'][0]:6.1f}x/{row['speedup_auto_vs_e3nn'][1]:.1f}x "
                  + f"{row['auto_over_best'][0]:.2f}/{row['auto_over_best'][1]:.2f}"
                  + f" ({row['auto_method']}, |diff| {error:.1e})", flush=True)
    with open(args.json, "w") as handle:
        json.dump({"device": str(device), "dtype": args.dtype, "rows": rows,
                   "torch": torch.__version__, "results": results}, handle, indent=1)
    print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
