"""Gaunt powers of the many-body product on the fused kernel (``so3.fused_powers``).

Checked against the dense Gaunt powers (an independent route), the torch formula used for
the double backward, gradcheck/gradgradcheck, thread counts, empty inputs, and
``GauntManyBodyProduct`` on the kernel against its torch route.
"""

from __future__ import annotations

import pytest
import torch
from helpers import followed_by_nan

from forcefield import so3
from forcefield.nn.gaunt_blocks import GauntManyBodyProduct
from forcefield.so3 import conv_kernel, fused_powers, grid_kernel

F64 = torch.float64
needs_kernel = pytest.mark.skipif(not conv_kernel.available(), reason="kernel not built")


def operands(lmax: int, nodes: int, channels: int, orders: int, dtype=F64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(nodes, channels, (lmax + 1) ** 2, generator=gen, dtype=dtype)
    w = 1.0 + 0.3 * torch.randn(nodes, orders, channels, lmax + 1, generator=gen, dtype=dtype)
    return a, w


@needs_kernel
@pytest.mark.parametrize("lmax,correlation,lmax_out", [(2, 3, 2), (2, 3, 0), (1, 2, 2),
                                                       (3, 2, 1)])
def test_kernel_equals_dense_powers(lmax: int, correlation: int, lmax_out: int) -> None:
    tables = fused_powers.powers_tables(lmax, correlation, lmax_out)
    a, w = operands(lmax, 5, 3, correlation - 1)
    q = fused_powers.powers(a, w, tables, 2)
    degree = so3.degree_index(lmax)
    for j, nu in enumerate(range(2, correlation + 1)):
        dense = so3.GauntPowers(lmax, nu, lmax_out, method="dense")(a * w[:, j][..., degree])
        torch.testing.assert_close(q[:, j], dense[..., nu - 1, :], atol=1e-12, rtol=0)
    torch.testing.assert_close(q, fused_powers.powers_torch(a, w, tables, 2), atol=1e-12, rtol=0)
    tables32 = {k: v.float() for k, v in tables.items()}
    q32 = fused_powers.powers(a.float(), w.float(), tables32, 2)
    scale = float(q.abs().max())
    torch.testing.assert_close(q32.double(), q, atol=2e-6 * scale, rtol=0)


@needs_kernel
def test_gradcheck_and_gradgradcheck() -> None:
    tables = fused_powers.powers_tables(1, 3, 1)
    a, w = operands(1, 2, 2, 2, seed=1)
    args = (a.requires_grad_(), w.requires_grad_())

    def q(a, w):
        return fused_powers.powers(a, w, tables, 2)

    assert torch.autograd.gradcheck(q, args)
    assert torch.autograd.gradgradcheck(q, args)


@needs_kernel
def test_threads_and_empty_inputs() -> None:
    tables = fused_powers.powers_tables(2, 3, 2)
    a, w = operands(2, 800, 8, 2, dtype=torch.float32, seed=2)
    g = torch.randn(800, 2, 8, 9)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append((conv_kernel.powers_forward(a, w, tables["y"].float(),
                                                       tables["proj"].float(), 2),
                            *conv_kernel.powers_backward(a, w, tables["y"].float(),
                                                         tables["proj"].float(), 2, g,
                                                         (True, True))))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(x, y) for x, y in zip(*results, strict=True))
    a0, w0 = operands(2, 0, 8, 2)
    q0 = fused_powers.powers(a0.requires_grad_(), w0, tables, 2)
    assert q0.shape == (0, 2, 8, 9)
    assert torch.autograd.grad(q0.sum(), a0)[0].shape == a0.shape


@needs_kernel
@pytest.mark.parametrize("lmax_out", [2, 0])
def test_many_body_product_kernel_equals_torch_route(lmax_out: int) -> None:
    torch.manual_seed(0)
    product = GauntManyBodyProduct(3, 4, 2, lmax_out, 3).double()
    with torch.no_grad():
        product.weight_in.mul_(1.0 + 0.3 * torch.randn_like(product.weight_in))
    a = torch.randn(7, 4, 9, dtype=F64, requires_grad=True)
    species = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    weights = list(product.parameters())

    def run():
        out = product(a, species)
        (grad,) = torch.autograd.grad((out**2).sum(), a, create_graph=True)
        return out, grad, *torch.autograd.grad((grad**2).sum(), [a, *weights])

    assert product.use_kernel(a)
    fused = run()
    with grid_kernel.disabled():
        assert not product.use_kernel(a)
        reference = run()
    for x, y in zip(fused, reference, strict=True):
        torch.testing.assert_close(x, y, atol=1e-12 * max(1.0, float(y.abs().max())), rtol=0)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_kernels_read_nothing_past_their_arguments(dtype) -> None:
    """Scalar outputs (K_out = 1, the last layer) have gradient rows shorter than one vector:
    the double backward once built its zero vector from a load of 4 or 8 of them, reading
    past the end of g, and NaN there (freed memory in a long run) made the force-training
    gradients NaN."""
    tables = fused_powers.powers_tables(2, 3, 0)
    y, proj = tables["y"].to(dtype), tables["proj"].to(dtype)
    a, w = operands(2, 3, 2, 2, dtype=dtype, seed=3)
    g, u, vw = torch.randn(3, 2, 2, 1, dtype=dtype), torch.randn_like(a), torch.randn_like(w)

    def run(a, w, y, proj, g, u, vw):
        return [conv_kernel.powers_forward(a, w, y, proj, 2),
                *conv_kernel.powers_backward(a, w, y, proj, 2, g, (True, True)),
                *conv_kernel.powers_double(a, w, y, proj, 2, g, u, vw, (True, True, True))]

    clean = run(a, w, y, proj, g, u, vw)
    dirty = run(*(followed_by_nan(x) for x in (a, w, y, proj, g, u, vw)))
    for expected, got in zip(clean, dirty, strict=True):
        assert torch.isfinite(expected).all()
        assert torch.equal(expected, got)
