"""Pointwise functions on the sphere: grids for coefficient <-> value, separable S2 activation.

A feature f = sum_lm x_lm Y_lm is evaluated on a sphere quadrature (Gauss-Legendre in
cos(beta) x uniform azimuth, exact for polynomials of total degree ``grid_degree``), a
pointwise function is applied, and the result is projected back with the quadrature
weights.  Linear maps are exactly equivariant; the pointwise nonlinearity creates
degrees the grid cannot resolve, so the result is equivariant only up to an aliasing
error that falls quickly with ``grid_degree`` (tests state the tolerance per grid).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from forcefield import so3

from .constants import ConstantTables

__all__ = ["GRID_NORMALIZATIONS", "QUADRATURES", "SphereGrid", "SeparableS2Activation",
           "component_factors", "default_grid_degree", "m_truncation_factors"]

GRID_NORMALIZATIONS = ("integral", "component")
"""How coefficients map to grid values: ``integral`` (orthonormal harmonics: unit-variance
coefficients give values of variance (lmax+1)^2 / 4 pi, ~3.9 at lmax 6) or ``component``
(e3nn's and fairchem's: each degree times sqrt(4 pi / ((2l+1)(lmax+1))), unit variance)."""


QUADRATURES = ("gauss_legendre", "e3nn")
"""Sphere grids: ``gauss_legendre`` (ours: exact for polynomials of total degree
``grid_degree``) or ``e3nn`` (e3nn's ``ToS2Grid`` grid of ``grid_degree`` x ``grid_degree``
points, the one fairchem's EquiformerV2 uses; ``grid_degree`` is then its resolution)."""


def m_truncation_factors(lmax: int, mmax: int) -> list[float]:
    """s_l = sqrt((2l+1) / (2 mmax+1)) for l > mmax, else 1: the rescale of degrees whose
    orders were truncated at mmax (fairchem's edge grids apply it on both projections)."""
    return [math.sqrt((2 * l + 1) / (2 * mmax + 1)) if l > mmax else 1.0
            for l in range(lmax + 1)]


def component_factors(lmax: int) -> list[float]:
    """Per-degree factors n_l = sqrt(4 pi / ((2l+1)(lmax+1))) of the ``component`` grid
    normalisation (e3nn's ``ToS2Grid(normalization="component")``)."""
    return [math.sqrt(4 * math.pi / ((2 * l + 1) * (lmax + 1))) for l in range(lmax + 1)]


def default_grid_degree(lmax: int) -> int:
    """max(3 lmax + 2, 18): beyond the exact projection of a product of two features, and
    at least 19 azimuths.

    The azimuthal resolution also sets how exactly the edge-frame activation commutes with
    rolls about the edge: the deterministic frame switches hemispheres (a roll) where an
    edge crosses the y = 0 plane, and the energy jumps there by the roll error.  Measured on
    tiny random float64 models (lmax 2-4, mmax 2): ~1e-4 eV (degree 8), ~1e-6 (14),
    <= 1e-9 (18).
    """
    return max(3 * lmax + 2, 18)


class SphereGrid(nn.Module):
    """Coefficients [..., C, K] <-> values [..., C, P] on a sphere quadrature.

    Args:
        lmax: highest degree of the coefficients.
        grid_degree: the quadrature integrates polynomials up to this degree exactly.
        index: optional coefficient indices (e.g. the m-truncated edge-frame layout); the
            coefficient axis then has len(index) entries in that order.
        degree_scale: optional factor per degree l applied on the way to the grid (and
            its inverse on the way back, so from_grid(to_grid(x)) stays x): the grid
            normalisation, see :data:`GRID_NORMALIZATIONS`.
        from_scale: optional factor per degree l on the way back instead of the inverse
            of ``degree_scale`` (fairchem's edge grids: see :func:`m_truncation_factors`).
        quadrature: ``"gauss_legendre"`` or ``"e3nn"`` (``grid_degree`` x ``grid_degree``
            points of e3nn's grid), see :data:`QUADRATURES`.
    """

    def __init__(self, lmax: int, grid_degree: int, index: list[int] | None = None,
                 degree_scale: list[float] | None = None, from_scale: list[float] | None = None,
                 quadrature: str = "gauss_legendre"):
        super().__init__()
        if quadrature not in QUADRATURES:
            raise ValueError(f"sphere grid quadrature {quadrature!r} is not supported; use one "
                             f"of {', '.join(QUADRATURES)}")
        self.lmax, self.grid_degree, self.quadrature = lmax, int(grid_degree), quadrature
        if quadrature == "e3nn":
            points, weights = so3.e3nn_grid_quadrature(self.grid_degree, self.grid_degree)
        else:
            points, weights = so3.sphere_quadrature(self.grid_degree)
        y = so3.spherical_harmonics(lmax, torch.as_tensor(points, dtype=torch.float64))
        w = torch.as_tensor(weights, dtype=torch.float64)
        to_grid, from_grid = y, y * w[:, None]
        self.scaled = degree_scale is not None or from_scale is not None
        deg = so3.degree_index(lmax)
        if degree_scale is not None:
            scale = torch.as_tensor(degree_scale, dtype=torch.float64)[deg]
            to_grid = to_grid * scale
            if from_scale is None:
                from_grid = from_grid / scale
        if from_scale is not None:
            from_grid = from_grid * torch.as_tensor(from_scale, dtype=torch.float64)[deg]
        if index is not None:
            to_grid, from_grid = to_grid[:, list(index)], from_grid[:, list(index)]
        self.num_points = y.shape[0]
        self._tables = ConstantTables(to_grid=to_grid.T.contiguous(),
                                      from_grid=from_grid.contiguous())

    def extra_repr(self) -> str:
        return (f"lmax={self.lmax}, grid_degree={self.grid_degree}, points={self.num_points}"
                + (", degree_scale" if self.scaled else "")
                + (f", quadrature={self.quadrature}" if self.quadrature != "gauss_legendre"
                   else ""))

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._tables.get(x)["to_grid"]

    def from_grid(self, g: torch.Tensor) -> torch.Tensor:
        return g @ self._tables.get(g)["from_grid"]


class SeparableS2Activation(nn.Module):
    """Degree 0 from a separate SiLU of given scalars; degrees > 0 from SiLU on the sphere.

    ``forward(x [E, C, K'], scalars [E, C]) -> [E, C, K']``; the first coefficient of the
    layout must be (l=0, m=0), as in both the full and the m-truncated layouts.
    """

    def __init__(self, grid: SphereGrid):
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        g = torch.nn.functional.silu(self.grid.to_grid(x))
        out = self.grid.from_grid(g)
        s = torch.nn.functional.silu(scalars).to(out.dtype)
        return torch.cat([s.unsqueeze(-1), out[..., 1:]], dim=-1)
