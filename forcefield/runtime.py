"""Process-level performance settings for CPU runs.

glibc returns every freed block above its mmap threshold (128 KiB at first) to the OS,
so each large temporary tensor is page-faulted in again on the next step; on CPU that
costs more than the matrix products themselves (measured 9.4 ms -> 2.1 ms for one
[32768, 25] x [25, 91] product).  ``tune_cpu_allocator`` raises the thresholds so freed
memory is reused, which is what jemalloc/tcmalloc users get.  Opt out with
FORCEFIELD_NO_MALLOC_TUNING=1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1 << 30  # glibc clamps this to its maximum (32 MiB on 64-bit)
_TRIM_THRESHOLD_BYTES = 1 << 30

_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks in the heap (glibc only); return True when applied."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("FORCEFIELD_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1 and ok
    _tuned = ok
    return ok


def cpu_description() -> str:
    """The CPU model and widest vector unit (Linux ``/proc/cpuinfo``), and the instruction
    set the grid kernel runs with: what every benchmark prints beside its figures, since
    hosts differ (AVX2 only, or AVX-512) and ratios compare only within one run."""
    import platform

    from forcefield import ops

    try:
        with open("/proc/cpuinfo") as handle:
            info = handle.read()
    except OSError:
        return f"{platform.machine()}, kernels {ops.vector_isa()}"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), platform.machine())
    isa = "AVX-512" if " avx512f" in info else "AVX2" if " avx2" in info else "no AVX2"
    return f"{model}, {isa}, kernels {ops.vector_isa()}"
