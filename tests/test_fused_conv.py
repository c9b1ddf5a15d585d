"""The fused Gaunt convolution kernels (forcefield/ops/csrc/conv_kernel.c) against torch.

The kernels compute the partials of T = sum g * Z(hg, wn, r, sh) (``fused_conv``); these
tests check Z and every partial against a plain torch formula, gradcheck/gradgradcheck
the autograd Function, check edge cases (no edges, nodes without incoming or outgoing
edges), bit-identical results for any thread count, and that ``GauntConvolution`` gives
the torch route's numbers on both presets' layer shapes.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from helpers import followed_by_nan

from forcefield import so3
from forcefield.nn.gaunt_blocks import GauntConvolution
from forcefield.so3 import conv_kernel, fused_conv, grid_kernel

F64 = torch.float64
needs_kernel = pytest.mark.skipif(not conv_kernel.available(), reason="kernel not built")


@pytest.mark.skipif(bool(os.environ.get("FORCEFIELD_NO_CPU_KERNEL")),
                    reason="kernel disabled by FORCEFIELD_NO_CPU_KERNEL")
def test_kernel_was_built_by_the_install() -> None:
    assert conv_kernel.available(), (
        "forcefield/ops/_C*.so is missing: reinstall with a C++ compiler "
        "(pip install --no-build-isolation -e .)")


def graph(num_nodes: int, num_edges: int, seed: int = 0, skip: int | None = None):
    """Random edges; node ``skip`` (if given) neither sends nor receives, and the last node
    only sends."""
    gen = torch.Generator().manual_seed(seed)
    nodes = torch.tensor([n for n in range(num_nodes) if n != skip])
    sender = nodes[torch.randint(0, len(nodes), (num_edges,), generator=gen)]
    receivers = nodes[nodes != num_nodes - 1]
    receiver = receivers[torch.randint(0, len(receivers), (num_edges,), generator=gen)]
    return sender, receiver


def inputs(n1: int, n2: int, pp: int, num_nodes: int, num_edges: int, channels: int = 3,
           dtype=F64, seed: int = 0, node_weights: bool = True):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    hg = randn(num_nodes, channels, n1, pp)
    wn = randn(num_edges, channels, n1) if node_weights else None
    r = randn(num_edges, channels, n2 + 1)[:, :, :n2]  # strided, as in the model
    sh = randn(num_edges, (n2 + 1) ** 2)[:, : n2 * n2]
    return hg, wn, r, sh


def reference_z(hg, wn, r, sh, ysh, sender, receiver):
    """Z by torch operations (per-edge grid tensors): the definition in conv_kernel.c."""
    n2 = r.shape[-1]
    degree = so3.degree_index(n2 - 1)
    yg = torch.zeros(sh.shape[0], n2, ysh.shape[1], dtype=sh.dtype)
    yg.index_add_(1, degree, sh[:, :, None] * ysh[None])
    x = hg[sender].sum(2) if wn is None else torch.einsum("ecl,eclp->ecp", wn, hg[sender])
    y = torch.einsum("ecl,elp->ecp", r, yg)
    return torch.zeros(hg.shape[0], *x.shape[1:], dtype=x.dtype).index_add_(0, receiver, x * y)


def z_of(ysh, index):
    def z(hg, wn, r, sh):
        return fused_conv.convolution(hg, wn, r, sh, ysh, index)

    return z


TABLES = {"grid (2, 3, 2)": lambda: fused_conv.conv_grid_tables(2, 3, 2)["ysh"],
          "first layer (l=2)": lambda: fused_conv.first_layer_tables(2)["ysh"]}


@needs_kernel
@pytest.mark.parametrize("name", list(TABLES))
@pytest.mark.parametrize("dtype,atol", [(F64, 1e-12), (torch.float32, 2e-5)])
def test_z_and_partials_equal_torch(name: str, dtype, atol: float) -> None:
    ysh = TABLES[name]().to(dtype)
    n2, pp = math.isqrt(ysh.shape[0]), ysh.shape[1]
    first = name.startswith("first")
    sender, receiver = graph(6, 40, skip=2)
    index = fused_conv.EdgeIndex.build(sender, receiver, 6)
    hg, wn, r, sh = inputs(1 if first else 3, n2, pp, 6, 40, dtype=dtype,
                           node_weights=not first)
    if first:  # the first layer repeats h over the coefficients
        hg = hg[:, :, :, :1].expand(hg.shape)
    args = [a.requires_grad_() if a is not None else None for a in (hg, wn, r, sh)]
    z = z_of(ysh, index)(*args)
    expected = reference_z(*args, ysh, sender, receiver)
    torch.testing.assert_close(z, expected, atol=atol, rtol=0)
    assert not z[2].detach().any() and not z[5].detach().any()  # nodes with no incoming edge
    g = torch.randn_like(z)
    live = [a for a in args if a is not None]
    got = torch.autograd.grad((z * g).sum(), live)
    want = torch.autograd.grad((expected * g).sum(), live)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=10 * atol, rtol=0)


@needs_kernel
@pytest.mark.parametrize("node_weights", [True, False])
def test_gradcheck_and_gradgradcheck(node_weights: bool) -> None:
    ysh = fused_conv.conv_grid_tables(1, 1, 1)["ysh"]
    sender, receiver = graph(4, 7, seed=3)
    index = fused_conv.EdgeIndex.build(sender, receiver, 4)
    hg, wn, r, sh = inputs(2 if node_weights else 1, 2, ysh.shape[1], 4, 7, channels=2,
                           node_weights=node_weights)
    args = tuple(a.requires_grad_() for a in (hg, wn, r, sh) if a is not None)

    def z(*a):
        full = list(a) if node_weights else [a[0], None, *a[1:]]
        return z_of(ysh, index)(*full)

    assert torch.autograd.gradcheck(z, args)
    assert torch.autograd.gradgradcheck(z, args)


@needs_kernel
def test_no_edges_and_no_nodes() -> None:
    ysh = fused_conv.conv_grid_tables(1, 1, 1)["ysh"]
    for num_nodes in (0, 3):
        empty = torch.zeros(0, dtype=torch.long)
        index = fused_conv.EdgeIndex.build(empty, empty, num_nodes)
        hg, wn, r, sh = inputs(2, 2, ysh.shape[1], num_nodes, 0)
        hg.requires_grad_()
        z = z_of(ysh, index)(hg, wn, r, sh)
        assert z.shape == (num_nodes, 3, ysh.shape[1]) and not z.any()
        (grad,) = torch.autograd.grad(z.sum(), hg)
        assert grad.shape == hg.shape and not grad.any()


@needs_kernel
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_threads_give_bit_identical_results(dtype) -> None:
    ysh = fused_conv.conv_grid_tables(2, 2, 2)["ysh"].to(dtype)
    sender, receiver = graph(50, 3000, seed=4)
    index = fused_conv.EdgeIndex.build(sender, receiver, 50)
    hg, wn, r, sh = inputs(3, 3, ysh.shape[1], 50, 3000, channels=2, dtype=dtype)
    g = torch.randn(50, 2, ysh.shape[1], dtype=dtype)
    u = inputs(3, 3, ysh.shape[1], 50, 3000, channels=2, dtype=dtype, seed=1)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((conv_kernel.receivers(hg, wn, r, sh, ysh, index),
                            *conv_kernel.senders(hg, wn, r, sh, ysh, g, index, (True,) * 4),
                            conv_kernel.double_receivers(hg, wn, r, sh, ysh, u, index),
                            *conv_kernel.double_senders(hg, wn, r, sh, ysh, g, u, index,
                                                        (True,) * 4)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def substituted_partials(args, ysh, index, u):
    """The double backward by its definition: for each k, the partials of T with argument k
    replaced by u_k, summed (what the operators' autograd computes in a double backward)."""
    hg, wn, r, sh, g = args
    total = [None] * 5
    for k, uk in enumerate(u):
        if uk is None:
            continue
        substituted = [hg, wn, r, sh, g]
        substituted[k] = uk
        partials = [*conv_kernel.senders(*substituted[:4], ysh, substituted[4], index,
                                          (True,) * 4),
                    conv_kernel.receivers(*substituted[:4], ysh, index)]
        for j, value in enumerate(partials):
            if j == k or value is None:
                continue
            total[j] = value if total[j] is None else total[j] + value
    return total


@needs_kernel
@pytest.mark.parametrize("name", list(TABLES))
@pytest.mark.parametrize("dtype,atol", [(F64, 1e-12), (torch.float32, 1e-4)])
@pytest.mark.parametrize("missing", [None, 0, 2, 3])
def test_double_kernels_equal_the_substituted_partials(name: str, dtype, atol: float,
                                                       missing: int | None) -> None:
    """double_senders and double_receivers == the sum over substituted arguments of the
    single-pass kernels; a partial without incoming gradient (``missing``) counts as zero."""
    ysh = TABLES[name]().to(dtype)
    n2, pp = math.isqrt(ysh.shape[0]), ysh.shape[1]
    first = name.startswith("first")
    sender, receiver = graph(7, 45, seed=5, skip=2)
    index = fused_conv.EdgeIndex.build(sender, receiver, 7)
    hg, wn, r, sh = inputs(1 if first else 3, n2, pp, 7, 45, dtype=dtype, node_weights=not first)
    u0, u1, u2, u3 = inputs(1 if first else 3, n2, pp, 7, 45, dtype=dtype, seed=1,
                            node_weights=not first)
    g = torch.randn(7, hg.shape[1], pp, dtype=dtype)
    u = [u0, u1, u2, u3]
    if missing is not None:
        u[missing] = None
    expected = substituted_partials((hg, wn, r, sh, g), ysh, index, u)
    zeros = [torch.zeros_like(a) if a is not None and b is None else b
             for a, b in zip((hg, wn, r, sh), u, strict=True)]
    got = [*conv_kernel.double_senders(hg, wn, r, sh, ysh, g, zeros, index, (True,) * 4),
           conv_kernel.double_receivers(hg, wn, r, sh, ysh, zeros, index)]
    for j, (a, b) in enumerate(zip(got, expected, strict=True)):
        if j == 1 and first:
            assert a is None
            continue
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, atol=atol * scale, rtol=0)
    assert not got[4][2].any() and not got[0][2].any()  # node 2 has no edges


@needs_kernel
@pytest.mark.parametrize("name", list(TABLES))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_kernels_read_nothing_past_their_arguments(name: str, dtype) -> None:
    """Every convolution kernel gives the same numbers when NaN lies right after each of
    its arguments in memory (a read past the end finds NaN only sometimes in real runs)."""
    ysh = TABLES[name]().to(dtype)
    n2, pp = math.isqrt(ysh.shape[0]), ysh.shape[1]
    first = name.startswith("first")
    sender, receiver = graph(6, 31, seed=7)
    index = fused_conv.EdgeIndex.build(sender, receiver, 6)
    args = inputs(1 if first else 3, n2, pp, 6, 31, dtype=dtype, node_weights=not first)
    u = inputs(1 if first else 3, n2, pp, 6, 31, dtype=dtype, seed=1, node_weights=not first)
    g = torch.randn(6, args[0].shape[1], pp, dtype=dtype)

    def run(hg, wn, r, sh, g, ysh, u):
        return [conv_kernel.receivers(hg, wn, r, sh, ysh, index),
                *conv_kernel.senders(hg, wn, r, sh, ysh, g, index, (True,) * 4),
                *conv_kernel.double_senders(hg, wn, r, sh, ysh, g, u, index, (True,) * 4),
                conv_kernel.double_receivers(hg, wn, r, sh, ysh, u, index)]

    clean = run(*args, g, ysh, tuple(u))
    dirty = run(*(followed_by_nan(x) for x in (*args, g, ysh)),
                tuple(followed_by_nan(x) for x in u))
    for x, y in zip(clean, dirty, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.isfinite(x).all() and torch.equal(x, y)


@needs_kernel
@pytest.mark.parametrize("node_weights", [True, False])
def test_force_training_backward_equals_torch(node_weights: bool) -> None:
    """The gradient of a loss on first derivatives (training on forces: the double kernels)
    equals the same computed through the torch formula."""
    ysh = fused_conv.conv_grid_tables(1, 2, 1)["ysh"]
    sender, receiver = graph(5, 20, seed=6)
    index = fused_conv.EdgeIndex.build(sender, receiver, 5)
    hg, wn, r, sh = inputs(2 if node_weights else 1, 3, ysh.shape[1], 5, 20,
                           node_weights=node_weights)
    g = torch.randn(5, 3, ysh.shape[1], dtype=F64)
    live = [a.requires_grad_() for a in (hg, wn, r, sh) if a is not None]

    def gradients(z_function):
        full = live if node_weights else [live[0], None, *live[1:]]
        energy = (z_function(*full) * g).sum()
        first = torch.autograd.grad(energy, live, create_graph=True)
        loss = sum(f.sin().sum() for f in first)
        return torch.autograd.grad(loss, live)

    fused = gradients(z_of(ysh, index))
    reference = gradients(lambda *a: reference_z(*a, ysh, sender, receiver))
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


@needs_kernel
def test_third_derivative_is_refused() -> None:
    ysh = fused_conv.conv_grid_tables(1, 1, 1)["ysh"]
    sender, receiver = graph(4, 7, seed=3)
    index = fused_conv.EdgeIndex.build(sender, receiver, 4)
    hg, wn, r, sh = (a.requires_grad_() for a in inputs(2, 2, ysh.shape[1], 4, 7))
    z = z_of(ysh, index)(hg, wn, r, sh)
    (d1,) = torch.autograd.grad(z.pow(2).sum(), hg, create_graph=True)
    (d2,) = torch.autograd.grad(d1.pow(2).sum(), r, create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(d2.sum(), sh)


def convolution(lmax_in: int, lmax_sh: int, channels: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    conv = GauntConvolution(channels, lmax_in, lmax_sh, 2, 5, [8], 3.0).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.mul_(1.0 + 0.3 * torch.randn_like(p))
    return conv


def conv_inputs(conv: GauntConvolution, num_nodes: int, num_edges: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(num_nodes, conv.channels, (conv.lmax_in + 1) ** 2, generator=gen, dtype=F64)
    radial = torch.randn(num_edges, 5, generator=gen, dtype=F64)
    vec = torch.randn(num_edges, 3, generator=gen, dtype=F64)
    sender, receiver = graph(num_nodes, num_edges, seed=seed, skip=1)
    return h, radial, vec, sender, receiver


@needs_kernel
@pytest.mark.parametrize("lmax_in,lmax_sh", [(0, 2), (2, 2), (0, 3), (2, 3)])
def test_convolution_kernel_equals_torch_route(lmax_in: int, lmax_sh: int) -> None:
    """Both presets' layers (small: lmax_sh 2; paper size: 3), values, first and second
    derivatives, float64 to 1e-12 and float32 to its round-off."""
    conv = convolution(lmax_in, lmax_sh)
    h, radial, vec, sender, receiver = conv_inputs(conv, 6, 30)
    h.requires_grad_()
    vec.requires_grad_()
    weights = list(conv.parameters())

    def run():
        sh = so3.spherical_harmonics(lmax_sh, vec) * math.sqrt(4 * math.pi)
        out = conv(h, radial, sh, sender, receiver)
        first = torch.autograd.grad((out**2).sum(), [h, vec], create_graph=True)
        second = torch.autograd.grad(sum((f**2).sum() for f in first), [vec, *weights])
        return out, *first, *second

    assert conv.use_kernel(h)
    fused = run()
    with grid_kernel.disabled():
        assert not conv.use_kernel(h)
        reference = run()
    for a, b in zip(fused, reference, strict=True):
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, atol=1e-12 * scale, rtol=0)
    conv.float()
    out32 = conv(h.detach().float(), radial.float(),
                 so3.spherical_harmonics(lmax_sh, vec.detach().float()) * math.sqrt(4 * math.pi),
                 sender, receiver)
    torch.testing.assert_close(out32.double(), reference[0], atol=2e-5, rtol=0)


@needs_kernel
def test_edge_index_cache_follows_the_tensors() -> None:
    sender, receiver = graph(5, 12)
    first = fused_conv.edge_index(sender, receiver, 5)
    assert fused_conv.edge_index(sender, receiver, 5) is first
    assert fused_conv.edge_index(sender.clone(), receiver, 5) is not first
    receiver2 = receiver.clone()
    index = fused_conv.edge_index(sender, receiver2, 5)
    receiver2[0] = (receiver2[0] + 1) % 4  # in-place change: version bump, rebuilt
    again = fused_conv.edge_index(sender, receiver2, 5)
    assert again is not index and torch.equal(again.receiver, receiver2)
