"""Building blocks of forcefield.nn: radial envelope, Gaunt convolution kernels, normalisation."""

from __future__ import annotations

import pytest
import torch

from forcefield import so3
from forcefield.nn import (
    DegreeLinear,
    GauntConvolution,
    GauntManyBodyProduct,
    PolynomialEnvelope,
    RadialEmbedding,
)


def test_envelope_vanishes_with_two_derivatives_at_r_max():
    env = PolynomialEnvelope(r_max=4.0, p=5)
    r = torch.tensor([0.0, 4.0], dtype=torch.float64, requires_grad=True)
    u = env(r)
    uv = u.detach()
    (du,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), r)
    assert float(uv[0]) == pytest.approx(1.0)
    assert float(uv[1]) == pytest.approx(0.0, abs=1e-12)
    assert float(du.detach()[1]) == pytest.approx(0.0, abs=1e-10)
    assert float(d2u[1]) == pytest.approx(0.0, abs=1e-8)
    beyond = env(torch.tensor([4.0 + 1e-9, 5.0, 9.0], dtype=torch.float64))
    assert torch.all(beyond == 0)


def test_radial_embedding_is_zero_beyond_r_max_and_smooth():
    emb = RadialEmbedding(r_max=3.0, num_basis=6)
    r = torch.linspace(0.5, 3.5, 301, dtype=torch.float64)[:, None]
    b = emb(r)
    assert b.shape == (301, 6)
    assert torch.all(b[r[:, 0] >= 3.0] == 0)
    assert torch.all(b[r[:, 0] < 2.5].abs().sum(-1) > 0)


def _conv_inputs(channels=5, lmax_in=2, lmax_sh=3, num_edges=17, num_nodes=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(num_nodes, channels, (lmax_in + 1) ** 2, generator=gen, dtype=torch.float64)
    radial = torch.randn(num_edges, 4, generator=gen, dtype=torch.float64)
    vec = torch.randn(num_edges, 3, generator=gen, dtype=torch.float64)
    sh = so3.spherical_harmonics(lmax_sh, vec) * (4 * torch.pi) ** 0.5
    sender = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    receiver = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    return h, radial, sh, sender, receiver


@pytest.mark.parametrize("lmax_in,lmax_sh,lmax_out", [(2, 3, 2), (1, 2, 2), (2, 2, 1), (3, 1, 3)])
@pytest.mark.parametrize("method", ["dense", "grid", "fourier"])
def test_fused_convolution_equals_so3_gaunt_product(lmax_in, lmax_sh, lmax_out, method):
    torch.manual_seed(0)
    fused = GauntConvolution(5, lmax_in, lmax_sh, lmax_out, 4, [8], 3.0, method="auto").double()
    ref = GauntConvolution(5, lmax_in, lmax_sh, lmax_out, 4, [8], 3.0, method=method).double()
    ref.load_state_dict(fused.state_dict())
    assert fused.fused and not ref.fused
    h, radial, sh, s, r = _conv_inputs(lmax_in=lmax_in, lmax_sh=lmax_sh)
    h.requires_grad_(True)
    a, b = fused(h, radial, sh, s, r), ref(h, radial, sh, s, r)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    (ga,) = torch.autograd.grad(a.pow(2).sum(), h)
    (gb,) = torch.autograd.grad(b.pow(2).sum(), h)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-11)


def test_fused_tables_stay_exact_after_float_round_trip():
    torch.manual_seed(0)
    conv = GauntConvolution(3, 2, 3, 2, 4, [8], 2.0)  # built in the default float32
    ref = GauntConvolution(3, 2, 3, 2, 4, [8], 2.0, method="dense")
    ref.load_state_dict(conv.state_dict())
    conv, ref = conv.float().double(), ref.double()
    inputs = _conv_inputs(channels=3)
    torch.testing.assert_close(conv(*inputs), ref(*inputs), rtol=0, atol=1e-12)


def _per_degree_var(x: torch.Tensor, lmax: int) -> list[float]:
    return [float(x[..., l * l : (l + 1) ** 2].pow(2).mean()) for l in range(lmax + 1)]


def test_gaunt_product_normalisation_gives_unit_variance():
    """Unit-variance inputs -> unit-variance Gaunt outputs, for every output degree."""
    from forcefield.nn.gaunt_blocks import product_normalisation

    tp = so3.GauntTensorProduct(2, 3, 2, method="dense")
    norm = product_normalisation(tp, 2, 3, 2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 9, generator=gen, dtype=torch.float64)
    y = torch.randn(20000, 16, generator=gen, dtype=torch.float64)
    out = tp(x, y) * norm
    for v in _per_degree_var(out, 2):
        assert v == pytest.approx(1.0, rel=0.05)


def test_many_body_product_normalisation_gives_unit_variance():
    torch.manual_seed(0)
    prod = GauntManyBodyProduct(1, 2000, 2, 2, 3).double()
    with torch.no_grad():
        prod.weight_in.fill_(1.0)
        prod.weight_out.zero_()
    a = torch.randn(10, 2000, 9, dtype=torch.float64)
    species = torch.zeros(10, dtype=torch.long)
    for nu in range(3):
        with torch.no_grad():
            prod.weight_out.zero_()
            prod.weight_out[:, nu] = 1.0
        for v in _per_degree_var(prod(a, species), 2):
            assert v == pytest.approx(1.0, rel=0.1)


def test_degree_linear_shapes_and_zero_padding():
    lin = DegreeLinear(4, 6, lmax_in=1, lmax_out=2).double()
    x = torch.randn(3, 4, 4, dtype=torch.float64)
    y = lin(x)
    assert y.shape == (3, 6, 9)
    assert torch.all(y[..., 4:] == 0)
    down = DegreeLinear(4, 2, lmax_in=2, lmax_out=0).double()
    z = down(torch.randn(3, 4, 9, dtype=torch.float64))
    assert z.shape == (3, 2, 1)
