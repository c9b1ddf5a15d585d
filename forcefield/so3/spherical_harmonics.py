"""Real spherical harmonics in e3nn's convention, computed in torch.

Convention (see notes/gaunt.md): orthonormal over the sphere ("integral" normalisation),
coefficients ordered l = 0, 1, ..., and m = -l..l inside each degree, no Condon-Shortley
phase, polar axis +y and azimuth atan2(x, z).  The values equal
``e3nn.o3.spherical_harmonics(list(range(lmax + 1)), v, True, "integral")``.

Every Y_lm is evaluated as a polynomial in the unit vector (normalised associated
Legendre recursion in the polar coordinate times Re/Im of (X + iY)^m), so it is smooth
everywhere, including along the axes, and differentiable to any order.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import Tensor


def num_coefficients(lmax: int) -> int:
    """Number of coefficients of a feature with degrees 0..lmax: (lmax + 1)**2."""
    return (lmax + 1) ** 2


@cache
def _degree_index(lmax: int) -> tuple[int, ...]:
    return tuple(l for l in range(lmax + 1) for _ in range(2 * l + 1))


def degree_index(lmax: int, device: torch.device | str | None = None) -> Tensor:
    """The degree l of each of the (lmax + 1)**2 coefficients, as a LongTensor."""
    check_lmax("lmax", lmax)
    return torch.tensor(_degree_index(lmax), dtype=torch.long, device=device)


def check_lmax(name: str, value: int) -> None:
    """Raise a ValueError unless ``value`` is a non-negative integer degree."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


@cache
def _legendre_constants(
    lmax: int,
) -> tuple[tuple[float, ...], dict[tuple[int, int], tuple[float, float]]]:
    """Seeds Q_mm and three-term recursion coefficients of the normalised Legendre part."""
    seeds = []
    for m in range(lmax + 1):
        # sqrt((2m+1)/(4 pi) / (2m)!) * (2m-1)!!, times sqrt(2) for the real m != 0 pair,
        # computed as a running product to stay finite for large m.
        value = math.sqrt((2 * m + 1) / (4 * math.pi))
        for k in range(1, m + 1):
            value *= math.sqrt((2 * k - 1) / (2 * k))
        seeds.append(value * (math.sqrt(2.0) if m > 0 else 1.0))
    recursion = {}
    for m in range(lmax + 1):
        for l in range(m + 2, lmax + 1):
            a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            b = math.sqrt(((l - 1) ** 2 - m * m) * (2 * l + 1) / ((2 * l - 3) * (l * l - m * m)))
            recursion[(l, m)] = (a, b)
    return tuple(seeds), recursion


def spherical_harmonics(lmax: int, vectors: Tensor, normalize: bool = True) -> Tensor:
    """Real spherical harmonics Y_lm(vectors / |vectors|) for l = 0..lmax.

    Args:
        lmax: highest degree.
        vectors: ``[..., 3]`` Cartesian vectors (any leading shape, float32 or float64).
        normalize: divide by the norm first (set False only for unit vectors).

    Returns:
        ``[..., (lmax + 1)**2]`` in e3nn's order and signs, orthonormal over the sphere.
    """
    check_lmax("lmax", lmax)
    if not isinstance(vectors, Tensor) or vectors.shape[-1:] != (3,):
        shape = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ValueError(f"vectors must be a tensor of shape [..., 3], got {shape}")
    if not vectors.is_floating_point():
        raise ValueError(f"vectors must be float32 or float64, got {vectors.dtype}")
    if normalize:
        vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    x, y, z = vectors.unbind(-1)
    # e3nn's polar axis is y and its azimuth is atan2(x, z): rename to the textbook frame.
    px, py, pz = z, x, y
    seeds, recursion = _legendre_constants(lmax)

    # Re and Im of (px + i py)^m: r_xy^m cos(m phi), r_xy^m sin(m phi) as polynomials.
    cos_m = [torch.ones_like(px)]
    sin_m = [torch.zeros_like(px)]
    for _ in range(lmax):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(px * c - py * s)
        sin_m.append(px * s + py * c)

    # Normalised associated Legendre part divided by sin^m: a polynomial in pz.
    legendre: dict[tuple[int, int], Tensor] = {}
    for m in range(lmax + 1):
        legendre[(m, m)] = torch.full_like(pz, seeds[m])
        if m + 1 <= lmax:
            legendre[(m + 1, m)] = math.sqrt(2 * m + 3) * pz * legendre[(m, m)]
        for l in range(m + 2, lmax + 1):
            a, b = recursion[(l, m)]
            legendre[(l, m)] = a * pz * legendre[(l - 1, m)] - b * legendre[(l - 2, m)]

    out = []
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            azimuthal = cos_m[m] if m >= 0 else sin_m[-m]
            out.append(legendre[(l, abs(m))] * azimuthal)
    return torch.stack(out, dim=-1)
