"""The so3 core: spherical harmonics, Gaunt coefficients, Gaunt products and powers.

Exact identities of notes/gaunt.md, checked in float64 against e3nn and sympy (oracles).
"""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from forcefield.so3 import (
    GauntPowers,
    GauntTensorProduct,
    degree_index,
    gaunt_coefficients,
    select_method,
    spherical_harmonics,
)

EXACT = ("dense", "grid", "fourier")
F64 = torch.float64


def random_features(lmax: int, *lead: int, dtype=F64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1000 + lmax)
    return torch.randn(*lead, (lmax + 1) ** 2, generator=generator, dtype=dtype)


def wigner_d(lmax: int, rotation: torch.Tensor) -> torch.Tensor:
    """Block-diagonal D with Y(R v) = D Y(v), by exact quadrature (e3nn's D_from_matrix is
    only accurate to ~1e-7 in float64)."""
    from forcefield.so3 import sphere_quadrature

    points, weights = (torch.as_tensor(a) for a in sphere_quadrature(2 * lmax))
    rotated = spherical_harmonics(lmax, points @ rotation.T)
    return (rotated * weights[:, None]).T @ spherical_harmonics(lmax, points)


# ---------------------------------------------------------------- spherical harmonics
@pytest.mark.parametrize("lmax", [0, 1, 2, 5, 10])
def test_spherical_harmonics_match_e3nn(lmax: int) -> None:
    vectors = torch.randn(200, 3, dtype=F64, generator=torch.Generator().manual_seed(lmax))
    axes = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1],
                         [0, 0.5, 0], [1e-9, 1, 0]], dtype=F64)
    vectors = torch.cat([vectors, axes])
    ours = spherical_harmonics(lmax, vectors)
    ref = o3.spherical_harmonics(list(range(lmax + 1)), vectors, normalize=True,
                                 normalization="integral")
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_spherical_harmonics_orthonormal_by_quadrature() -> None:
    from forcefield.so3 import sphere_quadrature

    points, weights = sphere_quadrature(2 * 8)
    y = spherical_harmonics(8, torch.as_tensor(points))
    gram = y.T @ (y * torch.as_tensor(weights)[:, None])
    torch.testing.assert_close(gram, torch.eye(81, dtype=F64), atol=1e-12, rtol=0)


def test_spherical_harmonics_float32_and_leading_shape() -> None:
    vectors = torch.randn(4, 5, 3, dtype=F64)
    y64 = spherical_harmonics(6, vectors)
    y32 = spherical_harmonics(6, vectors.float())
    assert y32.dtype == torch.float32 and y32.shape == (4, 5, 49)
    torch.testing.assert_close(y32.double(), y64, atol=1e-5, rtol=1e-5)


def test_spherical_harmonics_twice_differentiable() -> None:
    vectors = torch.randn(6, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: spherical_harmonics(3, v), (vectors,))
    assert torch.autograd.gradgradcheck(lambda v: spherical_harmonics(3, v), (vectors,))


def test_degree_index() -> None:
    assert degree_index(2).tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_spherical_harmonics_bad_lmax(bad) -> None:
    with pytest.raises(ValueError, match="lmax"):
        spherical_harmonics(bad, torch.randn(3, 3))


def test_spherical_harmonics_bad_vectors() -> None:
    with pytest.raises(ValueError, match="vectors"):
        spherical_harmonics(2, torch.randn(3, 2))


# ------------------------------------------------------------------ Gaunt coefficients
def gaunt_block(table, l1: int, l2: int, l3: int):
    return table[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2]


def test_gaunt_blocks_equal_scaled_wigner_3j() -> None:
    table = torch.as_tensor(gaunt_coefficients(3, 3, 6))
    for l1 in range(4):
        for l2 in range(4):
            for l3 in range(abs(l1 - l2), l1 + l2 + 1):
                block = gaunt_block(table, l1, l2, l3)
                if (l1 + l2 + l3) % 2:
                    assert torch.count_nonzero(block) == 0, (l1, l2, l3)
                    continue
                from sympy.physics.wigner import wigner_3j

                c = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * math.pi))
                c *= abs(float(wigner_3j(l1, l2, l3, 0, 0, 0)))
                expected = c * o3.wigner_3j(l1, l2, l3, dtype=F64)
                torch.testing.assert_close(block, expected, atol=1e-12, rtol=0)


def test_vector_times_vector_has_no_cross_product() -> None:
    block = gaunt_block(torch.as_tensor(gaunt_coefficients(1, 1, 2)), 1, 1, 1)
    assert torch.count_nonzero(block) == 0


def test_gaunt_coefficients_match_sympy_real_gaunt() -> None:
    from sympy.physics.wigner import real_gaunt

    table = gaunt_coefficients(3, 2, 4)
    rng = torch.Generator().manual_seed(1)
    for _ in range(60):
        l1 = int(torch.randint(0, 4, (1,), generator=rng))
        l2 = int(torch.randint(0, 3, (1,), generator=rng))
        l3 = int(torch.randint(abs(l1 - l2), min(l1 + l2, 4) + 1, (1,), generator=rng))
        m1, m2, m3 = (int(torch.randint(-l, l + 1, (1,), generator=rng)) for l in (l1, l2, l3))
        ref = float(real_gaunt(l1, l2, l3, m1, m2, m3))
        ours = table[l1 * l1 + l1 + m1, l2 * l2 + l2 + m2, l3 * l3 + l3 + m3]
        assert ours == pytest.approx(ref, abs=1e-13)


# ---------------------------------------------------------------------- the product
@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("lmax1,lmax2", [(1, 1), (2, 3), (4, 2), (0, 3)])
def test_product_is_pointwise_product(method: str, lmax1: int, lmax2: int) -> None:
    x1, x2 = random_features(lmax1, 5), random_features(lmax2, 5, seed=1)
    out = GauntTensorProduct(lmax1, lmax2, lmax1 + lmax2, method)(x1, x2)
    points = torch.randn(5, 3, dtype=F64)
    f1 = (spherical_harmonics(lmax1, points) * x1).sum(-1)
    f2 = (spherical_harmonics(lmax2, points) * x2).sum(-1)
    f = (spherical_harmonics(lmax1 + lmax2, points) * out).sum(-1)
    torch.testing.assert_close(f, f1 * f2, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", EXACT)
def test_truncation_is_a_projection(method: str) -> None:
    x1, x2 = random_features(3, 4), random_features(2, 4, seed=2)
    full = GauntTensorProduct(3, 2, 5, method)(x1, x2)
    for lmax_out in range(5):
        part = GauntTensorProduct(3, 2, lmax_out, method)(x1, x2)
        torch.testing.assert_close(part, full[..., : (lmax_out + 1) ** 2], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "lmax1,lmax2,lmax_out",
    [(1, 1, 2), (2, 2, 2), (3, 3, 6), (5, 2, 4), (6, 6, 12), (8, 8, 8), (12, 12, 12), (12, 0, 7)],
)
def test_all_methods_agree(lmax1: int, lmax2: int, lmax_out: int) -> None:
    x1, x2 = random_features(lmax1, 3), random_features(lmax2, 3, seed=3)
    outs = {m: GauntTensorProduct(lmax1, lmax2, lmax_out, m)(x1, x2) for m in EXACT}
    outs["auto"] = GauntTensorProduct(lmax1, lmax2, lmax_out)(x1, x2)
    for method, out in outs.items():
        torch.testing.assert_close(out, outs["dense"], atol=1e-10, rtol=0, msg=method)


@pytest.mark.parametrize("method", EXACT)
def test_equivariance(method: str) -> None:
    lmax1, lmax2, lmax_out = 2, 3, 4
    product = GauntTensorProduct(lmax1, lmax2, lmax_out, method)
    x1, x2 = random_features(lmax1, 6), random_features(lmax2, 6, seed=4)
    for seed in range(3):
        torch.manual_seed(seed)
        rotation = o3.rand_matrix(dtype=F64)
        d1, d2, d_out = (wigner_d(l, rotation) for l in (lmax1, lmax2, lmax_out))
        torch.testing.assert_close(d_out @ d_out.T, torch.eye(d_out.shape[0], dtype=F64),
                                   atol=1e-13, rtol=0)
        rotated = product(x1 @ d1.T, x2 @ d2.T)
        torch.testing.assert_close(rotated, product(x1, x2) @ d_out.T, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", EXACT)
def test_broadcasting_nodes_by_channels(method: str) -> None:
    x1 = random_features(2, 7, 4)  # nodes x channels
    x2 = random_features(2, 7, 1, seed=5)  # one filter per node
    product = GauntTensorProduct(2, 2, 3, method)
    out = product(x1, x2)
    assert out.shape == (7, 4, 16)
    torch.testing.assert_close(out, product(x1, x2.expand(7, 4, 9)), atol=1e-13, rtol=0)
    assert product(x2, x1).shape == (7, 4, 16)


@pytest.mark.parametrize("method", EXACT)
def test_gradcheck_and_double_backward(method: str) -> None:
    product = GauntTensorProduct(2, 2, 3, method)
    x1 = random_features(2, 3).requires_grad_()
    x2 = random_features(2, 3, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(product, (x1, x2))
    assert torch.autograd.gradgradcheck(product, (x1, x2))


@pytest.mark.parametrize("method", EXACT)
def test_float32_matches_float64(method: str) -> None:
    for lmax in (2, 4, 6):
        x1, x2 = random_features(lmax, 16), random_features(lmax, 16, seed=7)
        product = GauntTensorProduct(lmax, lmax, lmax, method)
        ref = product(x1, x2)
        out = product(x1.float(), x2.float())
        assert out.dtype == torch.float32
        error = (out.double() - ref).norm() / ref.norm()
        assert error < 1e-5, (lmax, float(error))


def test_module_has_no_parameters_and_survives_dtype_moves() -> None:
    product = GauntTensorProduct(3, 3, 3, "grid")
    assert list(product.parameters()) == []
    x1, x2 = random_features(3, 2), random_features(3, 2, seed=8)
    ref = product(x1, x2)
    product.float().double()
    torch.testing.assert_close(product(x1, x2), ref, atol=1e-14, rtol=0)


# ------------------------------------------------------------------------- powers
@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("lmax,correlation,lmax_out", [(1, 3, 2), (2, 3, 2), (2, 2, 4), (3, 4, 3)])
def test_powers_equal_repeated_products(method, lmax, correlation, lmax_out) -> None:
    x = random_features(lmax, 5, 2)
    powers = GauntPowers(lmax, correlation, lmax_out, method)(x)
    assert powers.shape == (5, 2, correlation, (lmax_out + 1) ** 2)
    running = x  # exact running power, never truncated
    for k in range(correlation):
        size = (lmax_out + 1) ** 2
        expected = running[..., :size]
        expected = torch.nn.functional.pad(expected, (0, size - expected.shape[-1]))
        torch.testing.assert_close(powers[..., k, :], expected, atol=1e-11, rtol=0)
        degree = (k + 1) * lmax
        running = GauntTensorProduct(degree, lmax, degree + lmax, "dense")(running, x)


@pytest.mark.parametrize("method", EXACT)
def test_powers_gradcheck(method: str) -> None:
    powers = GauntPowers(1, 3, 2, method)
    x = random_features(1, 2).requires_grad_()
    assert torch.autograd.gradcheck(powers, (x,))
    assert torch.autograd.gradgradcheck(powers, (x,))


# ------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "args,match",
    [
        ((-1, 2, 1), "lmax1"),
        ((2, -2, 1), "lmax2"),
        ((2, 2, -1), "lmax_out"),
        ((1, 2, 4), "lmax_out must be at most lmax1 \\+ lmax2 = 3"),
    ],
)
def test_bad_degrees(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        GauntTensorProduct(*args)


def test_bad_method() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        GauntTensorProduct(1, 1, 1, method="fft")
    with pytest.raises(ValueError, match="method must be one of"):
        GauntPowers(1, 2, 1, method="fft")


def test_bad_inputs() -> None:
    product = GauntTensorProduct(1, 2, 2)
    with pytest.raises(ValueError, match=r"x1 must have last dimension \(lmax\+1\)\*\*2 = 4"):
        product(torch.randn(3, 5), torch.randn(3, 9))
    with pytest.raises(ValueError, match="x2 must have last dimension"):
        product(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="same dtype"):
        product(torch.randn(3, 4), torch.randn(3, 9, dtype=F64))
    with pytest.raises(ValueError, match="do not broadcast"):
        product(torch.randn(3, 4), torch.randn(2, 9))
    with pytest.raises(ValueError, match="float32 or float64"):
        product(torch.ones(3, 4, dtype=torch.long), torch.randn(3, 9))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bad_devices_and_cuda_agreement() -> None:
    product = GauntTensorProduct(2, 2, 2, "grid")
    x1, x2 = random_features(2, 3), random_features(2, 3, seed=9)
    with pytest.raises(ValueError, match="same device"):
        product(x1.cuda(), x2)
    for method in EXACT:
        gpu = GauntTensorProduct(2, 2, 2, method)(x1.cuda(), x2.cuda()).cpu()
        torch.testing.assert_close(gpu, product(x1, x2), atol=1e-12, rtol=0)


def test_bad_power_arguments() -> None:
    with pytest.raises(ValueError, match="correlation must be a positive integer"):
        GauntPowers(2, 0, 2)
    with pytest.raises(ValueError, match="correlation \\* lmax_in = 2"):
        GauntPowers(1, 2, 3)


def test_auto_rule_returns_an_exact_method() -> None:
    for lmax in range(0, 9):
        assert select_method(lmax, lmax, lmax) in EXACT
        assert select_method(lmax, lmax, lmax, order=3) in EXACT


def test_chunked_grid_matches_dense_with_broadcasting() -> None:
    """Large CPU batches run the grid in cache-sized chunks; results must not change."""
    x1 = random_features(2, 3000, 4)
    x2 = random_features(2, 3000, 1, seed=10)
    grid = GauntTensorProduct(2, 2, 2, "grid")(x1, x2)
    dense = GauntTensorProduct(2, 2, 2, "dense")(x1, x2)
    torch.testing.assert_close(grid, dense, atol=1e-12, rtol=0)
    powers_grid = GauntPowers(2, 3, 2, "grid")(x1)
    powers_dense = GauntPowers(2, 3, 2, "dense")(x1)
    torch.testing.assert_close(powers_grid, powers_dense, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", EXACT)
def test_gradcheck_with_broadcasting(method: str) -> None:
    """Gradients of broadcast inputs are summed back to their own shapes."""
    product = GauntTensorProduct(2, 1, 2, method)
    x1 = random_features(2, 2, 3).requires_grad_()
    x2 = random_features(1, 2, 1, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(product, (x1, x2))
    assert torch.autograd.gradgradcheck(product, (x1, x2))
    high = GauntTensorProduct(4, 0, 1, method)  # degrees 2..4 of x1 cannot reach lmax_out
    x3 = random_features(4, 3).requires_grad_()
    x4 = random_features(0, 1, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(high, (x3, x4))
