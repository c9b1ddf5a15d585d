"""Precomputed float64 tables for the three Gaunt product methods (cached per process).

* Sphere quadrature: Gauss-Legendre in cos(beta) x uniform alpha, exact for polynomials
  of a requested total degree on the sphere.
* Real Gaunt coefficients G[l1m1, l2m2, lm] = int Y_l1m1 Y_l2m2 Y_lm, by exact quadrature.
* 2D Fourier tables: spherical harmonics -> Fourier coefficients of the sign-extended
  function on the torus (theta in [0, 2 pi)), and the projection back to spherical
  harmonics with the sin(theta) measure, in closed form.

All tables are NumPy float64 arrays; modules cast them once per dtype and device.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from forcefield.so3.spherical_harmonics import spherical_harmonics

_ZERO_TOLERANCE = 1e-13


def _unit_vectors(polar: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    """Unit vectors for e3nn's angles: y = cos(polar), x = sin sin(az), z = sin cos(az)."""
    s = np.sin(polar)
    return np.stack([s * np.sin(azimuth), np.cos(polar), s * np.cos(azimuth)], axis=-1)


def _sh_numpy(lmax: int, unit_vectors: np.ndarray) -> np.ndarray:
    """Spherical harmonics of unit vectors in float64, as a NumPy array [..., (lmax+1)^2]."""
    vectors = torch.as_tensor(unit_vectors, dtype=torch.float64)
    return spherical_harmonics(lmax, vectors, normalize=False).numpy()


@cache
def sphere_quadrature(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Points [P, 3] and weights [P] integrating every polynomial of total degree <= degree.

    Gauss-Legendre with n_beta = degree // 2 + 1 nodes in cos(beta) is exact to degree
    2 n_beta - 1 >= degree; n_alpha = degree + 1 uniform azimuths integrate e^{i k alpha}
    exactly for |k| <= degree.  The weights sum to 4 pi.
    """
    n_beta = degree // 2 + 1
    n_alpha = degree + 1
    nodes, gl_weights = np.polynomial.legendre.leggauss(n_beta)
    polar = np.arccos(nodes)
    azimuth = 2.0 * np.pi * np.arange(n_alpha) / n_alpha
    polar_grid, azimuth_grid = np.meshgrid(polar, azimuth, indexing="ij")
    points = _unit_vectors(polar_grid, azimuth_grid).reshape(-1, 3)
    weights = np.repeat(gl_weights, n_alpha) * (2.0 * np.pi / n_alpha)
    return points, weights


def e3nn_grid_quadrature(res_beta: int, res_alpha: int) -> tuple[np.ndarray, np.ndarray]:
    """Points [res_beta * res_alpha, 3] and weights of e3nn's ``ToS2Grid`` / ``FromS2Grid``
    grid (the sphere grid of fairchem's EquiformerV2), beta-major.

    beta_i = pi (i + 1/2) / res_beta from the y axis, alpha_j = 2 pi j / res_alpha; the
    weights are Kostelec and Rockmore's for bandwidth res_beta / 2 (exact for degrees below
    it when res_alpha is large enough), scaled to sum to 4 pi.  ``res_beta`` must be even.
    """
    if res_beta % 2 or res_beta < 2 or res_alpha < 1:
        raise ValueError(f"e3nn sphere grids need an even res_beta >= 2 and res_alpha >= 1, "
                         f"got {res_beta} x {res_alpha}")
    b = res_beta // 2
    k = np.arange(b)
    j = np.arange(res_beta)[:, None]
    # e3nn's _quadrature_weights(b) * res_beta**2 / res_alpha, times 4 pi / res_beta**2 per
    # point in alpha (FromS2Grid's "integral" factor 4 pi spread over the alpha samples)
    w_beta = (2.0 / b) * np.sin(np.pi * (2.0 * j[:, 0] + 1.0) / (4.0 * b)) * (
        (1.0 / (2 * k + 1)) * np.sin((2 * j + 1) * (2 * k + 1) * np.pi / (4.0 * b))).sum(1)
    w_beta = w_beta / (2.0 * (2 * b) ** 2) * res_beta**2 / res_alpha * 4.0 * np.pi
    beta = (np.arange(res_beta) + 0.5) / res_beta * np.pi
    alpha = np.arange(res_alpha) / res_alpha * 2.0 * np.pi
    polar, azimuth = np.meshgrid(beta, alpha, indexing="ij")
    points = _unit_vectors(polar, azimuth).reshape(-1, 3)
    return points, np.repeat(w_beta, res_alpha)


@cache
def grid_tables(lmax_in: tuple[int, ...], lmax_out: int, degree: int) -> tuple[np.ndarray, ...]:
    """Tables of the grid method on a quadrature exact for total ``degree``.

    Returns one [D_in, P] table per input degree (values of Y on the grid points) and the
    projection [P, D_out] (Y_out times the quadrature weights), so that
    out = ((x1 @ Y1) * (x2 @ Y2)) @ projection.
    """
    points, weights = sphere_quadrature(degree)
    inputs = tuple(_sh_numpy(lmax, points).T.copy() for lmax in lmax_in)
    return (*inputs, _sh_numpy(lmax_out, points) * weights[:, None])


@cache
def gaunt_coefficients(lmax1: int, lmax2: int, lmax_out: int) -> np.ndarray:
    """Real Gaunt coefficients G[l1m1, l2m2, lm] = int_{S^2} Y_l1m1 Y_l2m2 Y_lm, float64.

    Computed by a quadrature exact for degree lmax1 + lmax2 + lmax_out; entries below
    1e-13 (round-off of exact zeros, e.g. odd l1 + l2 + l) are set to exactly zero.
    """
    points, weights = sphere_quadrature(lmax1 + lmax2 + lmax_out)
    y1 = _sh_numpy(lmax1, points)
    y2 = _sh_numpy(lmax2, points)
    y3 = _sh_numpy(lmax_out, points) * weights[:, None]
    pairs = (y1[:, :, None] * y2[:, None, :]).reshape(len(weights), -1)
    table = (pairs.T @ y3).reshape(y1.shape[1], y2.shape[1], y3.shape[1])
    table[np.abs(table) < _ZERO_TOLERANCE] = 0.0
    return table


def _fourier_of_sh(lmax: int) -> np.ndarray:
    """Exact 2D Fourier coefficients c[lm, u, v] of the sign-extended Y_lm, |u|, |v| <= lmax.

    With theta in [0, 2 pi) and the point (sin t sin p, cos t, sin t cos p), each Y_lm is a
    trigonometric polynomial of degree <= l in t and exactly |m| in p; a DFT on a uniform
    (2 lmax + 1)^2 torus grid recovers its coefficients without aliasing.  Index u + lmax.
    """
    size = 2 * lmax + 1
    angles = 2.0 * np.pi * np.arange(size) / size
    theta, phi = np.meshgrid(angles, angles, indexing="ij")
    values = _sh_numpy(lmax, _unit_vectors(theta, phi))  # [size, size, D]
    coefficients = np.fft.fft2(values, axes=(0, 1)) / size**2
    coefficients = np.fft.fftshift(coefficients, axes=(0, 1))
    return np.moveaxis(coefficients, -1, 0)  # [D, u, v] with u, v from -lmax to lmax


def _sin_moment(k: np.ndarray) -> np.ndarray:
    """S(k) = int_0^pi e^{i k t} sin t dt, in closed form."""

    def plain(n: np.ndarray) -> np.ndarray:  # int_0^pi e^{i n t} dt
        out = np.zeros(n.shape, dtype=complex)
        out[n == 0] = np.pi
        odd = n % 2 != 0
        out[odd] = 2j / n[odd]
        return out

    return (plain(k + 1) - plain(k - 1)) / 2j


def _m_groups(lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """For each |m| = k <= lmax, the coefficient indices with that |m| (padded with -1).

    Returns (index [lmax+1, 2(lmax+1)], valid mask).  Order inside a group: (l, +k), (l, -k).
    """
    width = 2 * (lmax + 1)
    index = -np.ones((lmax + 1, width), dtype=np.int64)
    for k in range(lmax + 1):
        slots = []
        for l in range(k, lmax + 1):
            slots.append(l * l + l + k)
            if k > 0:
                slots.append(l * l + l - k)
        index[k, : len(slots)] = slots
    return index, index >= 0


@cache
def fourier_analysis_table(lmax: int, n_theta: int) -> tuple[np.ndarray, np.ndarray]:
    """SH -> half-spectrum Fourier table, block-sparse over the azimuthal order.

    Returns (gather index [K, W] into the coefficient vector, -1 for padding, and
    table [K, W, 2 n_theta]) with K = lmax + 1: for azimuthal frequency v = k >= 0, the
    coefficients with |m| = k map to Re (first n_theta) and Im (last n_theta) of
    F[u, k] for u in FFT order.  O(lmax^3) work instead of O(lmax^4).
    """
    coefficients = _fourier_of_sh(lmax)
    index, valid = _m_groups(lmax)
    width = index.shape[1]
    table = np.zeros((lmax + 1, width, 2 * n_theta))
    for k in range(lmax + 1):
        for slot in range(width):
            if not valid[k, slot]:
                continue
            column = coefficients[index[k, slot], :, lmax + k]  # u = -lmax..lmax at v = +k
            row = np.zeros(n_theta, dtype=complex)
            for u in range(-lmax, lmax + 1):
                row[u % n_theta] += column[u + lmax]
            table[k, slot, :n_theta] = row.real
            table[k, slot, n_theta:] = row.imag
    return index, table


@cache
def fourier_synthesis_table(lmax_out: int, n_theta: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-spectrum Fourier -> SH projection, block-sparse over azimuthal order.

    For a real function with coefficients H[u, v] (u in FFT order of length n_theta,
    v >= 0 stored, H[u, -v] = conj H[-u, v]), out_lm = int f Y_lm sin t dt dp depends only
    on v = |m|.  Returns (index [K, W] of output coefficients per k, -1 for padding, and
    table [K, 2 n_theta, W]) acting on [Re H[:, k], Im H[:, k]].
    """
    coefficients = _fourier_of_sh(lmax_out)  # [D, u', v'] centred
    index, valid = _m_groups(lmax_out)
    width = index.shape[1]
    table = np.zeros((lmax_out + 1, 2 * n_theta, width))
    u_values = np.arange(n_theta)
    u_values = np.where(u_values <= n_theta // 2, u_values, u_values - n_theta)  # FFT order
    u_prime = np.arange(-lmax_out, lmax_out + 1)
    # P[lm, u, v] = 2 pi sum_u' c_lm[u', -v] S(u + u')
    moments = _sin_moment(u_values[:, None] + u_prime[None, :])  # [n_theta, 2L+1]
    for k in range(lmax_out + 1):
        for slot in range(width):
            if not valid[k, slot]:
                continue
            c = coefficients[index[k, slot]]
            p_plus = 2 * np.pi * moments @ c[:, lmax_out - k]  # P[u, +k]
            p_minus = 2 * np.pi * moments @ c[:, lmax_out + k]  # P[u, -k]
            if k == 0:
                real, imag = p_plus.real, -p_plus.imag
            else:
                # H[u, -k] = conj H[-u, k]: fold P[-u, -k] onto the stored half spectrum.
                flipped = p_minus[(-np.arange(n_theta)) % n_theta]
                real = p_plus.real + flipped.real
                imag = -p_plus.imag + flipped.imag
            table[k, :n_theta, slot] = real
            table[k, n_theta:, slot] = imag
    return index, table


def fourier_sizes(lmax_product: int, lmax_out: int) -> tuple[int, int]:
    """Torus grid (n_theta, n_phi) on which a product of degree lmax_product is alias-free.

    All polar frequencies |u| <= lmax_product are needed exactly (the projection is dense
    in u); azimuthal frequencies only up to lmax_out, so aliases may fold above it.
    """
    return 2 * lmax_product + 1, lmax_product + lmax_out + 1


def _azimuth_factors(lmax: int, azimuth: np.ndarray) -> np.ndarray:
    """[2 lmax + 1, len(azimuth)]: cos(m alpha) for m >= 0, sin(|m| alpha) for m < 0."""
    m = np.arange(-lmax, lmax + 1)[:, None]
    return np.where(m >= 0, np.cos(m * azimuth), np.sin(-m * azimuth))


def _polar_factors(lmax: int, polar: np.ndarray) -> np.ndarray:
    """P[j, m + lmax, l] with Y_lm(beta_j, alpha) = P * (cos(m alpha) or sin(|m| alpha)).

    Found by projecting Y onto its azimuthal factor on 2 lmax + 2 uniform azimuths (exact:
    Y_lm has the single azimuthal frequency |m|), then checked to reproduce Y.
    """
    n_alpha = 2 * lmax + 2
    azimuth = 2.0 * np.pi * np.arange(n_alpha) / n_alpha
    factors = _azimuth_factors(lmax, azimuth)  # [M, A]
    polar_grid, azimuth_grid = np.meshgrid(polar, azimuth, indexing="ij")
    values = _sh_numpy(lmax, _unit_vectors(polar_grid, azimuth_grid))  # [J, A, D]
    table = np.zeros((len(polar), 2 * lmax + 1, lmax + 1))
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            factor = factors[m + lmax]
            column = values[:, :, l * l + l + m]
            table[:, m + lmax, l] = column @ factor / (factor @ factor)
            rebuilt = table[:, m + lmax, l][:, None] * factor[None, :]
            if np.abs(rebuilt - column).max() > 1e-11:
                raise AssertionError(f"Y_{l},{m} does not separate into polar x azimuthal parts")
    return table


@cache
def separable_grid_tables(lmax1: int, lmax2: int, lmax_out: int) -> dict[str, np.ndarray]:
    """Tables of the fused grid kernel (``forcefield/ops/csrc/grid_kernel.c``) on the exact
    quadrature grid.

    The grid is that of ``grid_tables`` (Gauss-Legendre x n_alpha uniform azimuths, exact
    for degree lmax1 + lmax2 + lmax_out), factored into polar and azimuthal parts and folded
    over alpha -> -alpha, so only azimuths k <= n_alpha / 2 are stored.  See the kernel
    source for the layouts.
    """
    degree = lmax1 + lmax2 + lmax_out
    n_beta, n_alpha = degree // 2 + 1, degree + 1
    nodes, weights = np.polynomial.legendre.leggauss(n_beta)
    polar = np.arccos(nodes)
    n_half = n_alpha // 2 + 1
    azimuth = 2.0 * np.pi * np.arange(n_half) / n_alpha
    # a mirror pair (k, n_alpha - k) counts twice; alpha = 0 (and pi) are their own mirror
    multiplicity = np.where((np.arange(n_half) == 0) | (2 * np.arange(n_half) == n_alpha), 1, 2)
    widest = max(lmax1, lmax2)
    m_in = np.arange(widest + 1)[None, :]
    m_out = np.arange(lmax_out + 1)[None, :]
    out_weights = (multiplicity * 2.0 * np.pi / n_alpha)[:, None]
    return {
        "legendre1": _polar_factors(lmax1, polar),
        "legendre2": _polar_factors(lmax2, polar),
        "legendre_out": _polar_factors(lmax_out, polar) * weights[:, None, None],
        "azimuth_cos": np.cos(m_in * azimuth[:, None]),
        "azimuth_sin": np.sin(m_in * azimuth[:, None]),
        "output_cos": out_weights * np.cos(m_out * azimuth[:, None]),
        "output_sin": out_weights * np.sin(m_out * azimuth[:, None]),
        "dims": np.array([lmax1, lmax2, lmax_out, n_beta, n_half, widest + 1], dtype=np.int32),
    }


__all__ = [
    "fourier_analysis_table",
    "fourier_sizes",
    "fourier_synthesis_table",
    "gaunt_coefficients",
    "grid_tables",
    "separable_grid_tables",
    "sphere_quadrature",
]
