"""The fused CPU kernel of the grid Gaunt product against the torch routes.

The kernel (forcefield/ops/csrc/grid_kernel.c, the forcefield::gaunt_grid operator) is built
by ``pip install``; these tests check
that it was, that it gives the dense contraction's numbers to round-off for every shape of
input the module accepts, and that the torch fallback (no compiler, or
FORCEFIELD_NO_CPU_KERNEL=1) still gives the same numbers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from forcefield.so3 import GauntTensorProduct, grid_kernel

F64 = torch.float64
DEGREES = [(0, 0, 0), (1, 1, 2), (2, 3, 1), (3, 2, 5), (4, 4, 4), (5, 0, 5), (0, 6, 6),
           (6, 6, 12), (3, 7, 4), (8, 8, 8)]


def features(lmax: int, *lead: int, dtype=F64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100 + lmax)
    return torch.randn(*lead, (lmax + 1) ** 2, generator=generator, dtype=dtype)


@pytest.fixture
def torch_route():
    """Make the grid method take the torch matrix-product route."""
    with grid_kernel.disabled():
        yield


def dense(l1: int, l2: int, lo: int, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    return GauntTensorProduct(l1, l2, lo, "dense")(x1, x2)


@pytest.mark.skipif(bool(os.environ.get("FORCEFIELD_NO_CPU_KERNEL")),
                    reason="kernel disabled by FORCEFIELD_NO_CPU_KERNEL")
def test_kernel_was_built_by_the_install() -> None:
    assert grid_kernel.available(), (
        "forcefield/ops/_C*.so is missing: reinstall with a C++ compiler "
        "(pip install --no-build-isolation -e .)")


needs_kernel = pytest.mark.skipif(not grid_kernel.available(), reason="kernel not built")


@needs_kernel
@pytest.mark.parametrize("l1,l2,lo", DEGREES)
def test_kernel_equals_dense(l1: int, l2: int, lo: int) -> None:
    x1, x2 = features(l1, 37, 3), features(l2, 37, 3, seed=1)
    out = GauntTensorProduct(l1, l2, lo, "grid")(x1, x2)
    torch.testing.assert_close(out, dense(l1, l2, lo, x1, x2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("l1,l2,lo", DEGREES[:7])
def test_torch_route_equals_dense(torch_route, l1: int, l2: int, lo: int) -> None:
    x1, x2 = features(l1, 37, 3), features(l2, 37, 3, seed=1)
    out = GauntTensorProduct(l1, l2, lo, "grid")(x1, x2)
    torch.testing.assert_close(out, dense(l1, l2, lo, x1, x2), atol=1e-12, rtol=0)


@needs_kernel
@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9, 31, 32, 33])
def test_kernel_any_number_of_rows(rows: int) -> None:
    """Rows come in blocks of 32 (float32) or 16 (float64); short last blocks are fine."""
    for dtype, atol in ((F64, 1e-12), (torch.float32, 2e-5)):
        x1, x2 = features(3, rows, dtype=dtype), features(2, rows, dtype=dtype, seed=2)
        out = GauntTensorProduct(3, 2, 4, "grid")(x1, x2)
        assert out.shape == (rows, 25) and out.dtype == dtype
        torch.testing.assert_close(out, dense(3, 2, 4, x1, x2), atol=atol, rtol=0)


@needs_kernel
@pytest.mark.parametrize("shape1,shape2", [
    ((5, 4), (5, 1)),        # nodes x channels against nodes x 1
    ((1, 4), (5, 1)),        # both broadcast
    ((), (6,)),              # a single feature against a batch
    ((2, 3, 4), (2, 1, 4)),  # broadcast in a middle dimension
    ((2, 3, 4), (3, 1)),
])
def test_kernel_broadcasting(shape1, shape2) -> None:
    x1, x2 = features(3, *shape1), features(3, *shape2, seed=3)
    out = GauntTensorProduct(3, 3, 3, "grid")(x1, x2)
    torch.testing.assert_close(out, dense(3, 3, 3, x1, x2), atol=1e-12, rtol=0)


@needs_kernel
def test_kernel_non_contiguous_inputs() -> None:
    base = features(2, 6, 5)
    x1 = base.transpose(0, 1)  # [5, 6, 9], strided rows
    x2 = features(2, 5, 12, seed=4)[:, ::2]  # every other row
    out = GauntTensorProduct(2, 2, 4, "grid")(x1, x2)
    torch.testing.assert_close(out, dense(2, 2, 4, x1, x2), atol=1e-12, rtol=0)


@needs_kernel
def test_kernel_threads_split_rows_exactly() -> None:
    """Row ranges on several threads give bit-identical results to one thread."""
    x1, x2 = features(4, 3000, 2, dtype=torch.float32), features(4, 3000, 1, seed=5,
                                                                  dtype=torch.float32)
    product = GauntTensorProduct(4, 4, 4, "grid")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = product(x1, x2)
        torch.set_num_threads(3)
        split = product(x1, x2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, split)


@needs_kernel
def test_kernel_float32_accuracy() -> None:
    x1, x2 = features(6, 200), features(6, 200, seed=6)
    exact = dense(6, 6, 6, x1, x2)
    out = GauntTensorProduct(6, 6, 6, "grid")(x1.float(), x2.float()).double()
    assert ((out - exact).norm() / exact.norm()).item() < 1e-6


@needs_kernel
def test_kernel_gradients() -> None:
    """Backward (two adjoint kernel products) and double backward match dense autograd."""
    x1 = features(3, 4, 2).requires_grad_()
    x2 = features(2, 4, 1, seed=7).requires_grad_()
    product = GauntTensorProduct(3, 2, 3, "grid")
    assert torch.autograd.gradcheck(product, (x1, x2))
    assert torch.autograd.gradgradcheck(product, (x1, x2))


def test_torch_route_gradients(torch_route) -> None:
    x1 = features(2, 2, 2).requires_grad_()
    x2 = features(1, 2, 1, seed=7).requires_grad_()
    product = GauntTensorProduct(2, 1, 2, "grid")
    assert torch.autograd.gradcheck(product, (x1, x2))
    assert torch.autograd.gradgradcheck(product, (x1, x2))


def test_environment_variable_disables_the_kernel() -> None:
    code = (
        "import torch\n"
        "from forcefield.so3 import GauntTensorProduct, grid_kernel\n"
        "assert not grid_kernel.available()\n"
        "x = torch.randn(10, 16, dtype=torch.float64)\n"
        "d = GauntTensorProduct(3, 3, 3, 'dense')(x, x)\n"
        "g = GauntTensorProduct(3, 3, 3, 'grid')(x, x)\n"
        "assert (d - g).abs().max() < 1e-12\n"
    )
    env = dict(os.environ, FORCEFIELD_NO_CPU_KERNEL="1")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


@needs_kernel
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kernel_threads_work_in_a_forked_child() -> None:
    """A forked process (e.g. a data-loader worker) starts with no pool threads; the kernel
    must not wait on the parent's."""
    x1, x2 = features(2, 4000, dtype=torch.float32), features(2, 4000, seed=8,
                                                              dtype=torch.float32)
    product = GauntTensorProduct(2, 2, 2, "grid")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = product(x1, x2)  # creates the parent's pool
        pid = os.fork()
        if pid == 0:  # child: exit 0 only if the product completes and agrees
            try:  # compared in numpy: torch's OpenMP regions are not usable after a fork
                same = np.array_equal(product(x1, x2).numpy(), expected.numpy())
                os._exit(0 if same else 1)
            finally:
                os._exit(2)
        deadline = time.monotonic() + 60
        while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if waited[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the kernel hung in a forked child (waiting on the parent's threads)")
    finally:
        torch.set_num_threads(threads)
    assert os.waitstatus_to_exitcode(waited[1]) == 0


@needs_kernel
def test_vector_widths_give_the_same_bits(tmp_path) -> None:
    """The AVX-512, AVX2 and baseline builds of the kernel, chosen with FORCEFIELD_ISA, give
    the dense numbers; the FMA builds (AVX-512, AVX2) give the same bits, every lane doing
    the same operations whatever the vector width."""
    from forcefield import ops

    code = (
        "import sys, torch\n"
        "from forcefield import ops\n"
        "from forcefield.so3 import GauntTensorProduct\n"
        "g = torch.Generator().manual_seed(3)\n"
        "out = {}\n"
        "for dtype in (torch.float32, torch.float64):\n"
        "    x1 = torch.randn(70, 3, 49, generator=g, dtype=dtype)\n"
        "    x2 = torch.randn(70, 3, 25, generator=g, dtype=dtype)\n"
        "    out[str(dtype)] = GauntTensorProduct(6, 4, 6, 'grid')(x1, x2)\n"
        "out['isa'] = ops.vector_isa()\n"
        "torch.save(out, sys.argv[1])\n"
    )
    results = {}
    for cap in ("", "avx2", "base"):
        path = tmp_path / f"{cap or 'native'}.pt"
        env = dict(os.environ, FORCEFIELD_ISA=cap)
        subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True,
                       timeout=120)
        results[cap or "native"] = torch.load(path)
    assert results["native"]["isa"] == ops.vector_isa()
    assert results["base"]["isa"] == "base"
    g = torch.Generator().manual_seed(3)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        x1 = torch.randn(70, 3, 49, generator=g, dtype=dtype)
        x2 = torch.randn(70, 3, 25, generator=g, dtype=dtype)
        exact = dense(6, 4, 6, x1.double(), x2.double())
        for name, result in results.items():
            out = result[str(dtype)].double()
            assert ((out - exact).norm() / exact.norm()).item() < tol, (name, dtype)
        if results["native"]["isa"] == "avx512":
            assert torch.equal(results["native"][str(dtype)], results["avx2"][str(dtype)])
