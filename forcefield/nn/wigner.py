"""Edge-aligned frames and exact, differentiable Wigner-D matrices in our real-SH convention.

``edge_frame(vec)`` returns a rotation R with R @ (vec/|vec|) = +y (e3nn's polar axis).  It is
deterministic (no random roll) and a rational function of the unit vector with denominators
>= 1 on each hemisphere, so its derivatives are finite everywhere, including edges along
+-y where Euler angles lock.  The two hemisphere branches differ by a roll about the edge
axis only; SO(2) convolutions are exactly invariant to such rolls.

``WignerD(lmax)(R)`` builds D(R) with Y(R r) = D(R) Y(r) from spherical harmonics alone:
D_ij(R) = int Y_i(R p) Y_j(p) dp, evaluated by a sphere quadrature exact for degree 2 lmax.
No angles are involved, so D is a polynomial in the entries of R (exact, smooth, any order
of derivatives) and is correct for reflections too.
"""

from __future__ import annotations

import torch
from torch import nn

from forcefield import so3

from .constants import ConstantTables

__all__ = ["EdgeRotation", "WignerD", "edge_frame", "m_truncated_index"]


def _cross_matrix(v: torch.Tensor) -> torch.Tensor:
    """[..., 3] -> [..., 3, 3] with K @ u = v x u."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
         torch.stack([-y, x, zero], -1)], -2)


def _rotation_to(unit: torch.Tensor, target_sign: float, cos: torch.Tensor) -> torch.Tensor:
    """Minimal rotation taking ``unit`` to target_sign * y: I + K + K^2 / (1 + cos)."""
    target = torch.zeros_like(unit)
    target[..., 1] = target_sign
    k = _cross_matrix(torch.linalg.cross(unit, target, dim=-1))
    eye = torch.eye(3, dtype=unit.dtype, device=unit.device).expand_as(k)
    return eye + k + (k @ k) / (1.0 + cos)[..., None, None]


def edge_frame(vec: torch.Tensor) -> torch.Tensor:
    """Rotations R [..., 3, 3] with R @ unit(vec) = +y, smooth on each hemisphere y >= 0 / < 0.

    Upper hemisphere: the minimal rotation to +y.  Lower: the minimal rotation to -y, then
    a half turn about x.  Each branch uses a clamped cosine, so the branch not taken stays
    finite and torch.where passes no NaN into the gradient.
    """
    unit = vec / torch.linalg.vector_norm(vec, dim=-1, keepdim=True)
    ey = unit[..., 1]
    upper = _rotation_to(unit, 1.0, ey.clamp_min(0.0))
    lower = _rotation_to(unit, -1.0, (-ey).clamp_min(0.0))
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=vec.dtype, device=vec.device)
    lower = flip[:, None] * lower
    return torch.where((ey >= 0)[..., None, None], upper, lower)


def m_truncated_index(lmax: int, mmax: int) -> list[int]:
    """Coefficient indices with |m| <= mmax in m-major order.

    Order: m = 0 (l = 0..lmax), then for m = 1..mmax: +m (l = m..lmax), -m (l = m..lmax).
    This is the layout of edge-frame features in SO(2) convolutions.
    """
    order = [l * l + l for l in range(lmax + 1)]
    for m in range(1, mmax + 1):
        order += [l * l + l + m for l in range(m, lmax + 1)]
        order += [l * l + l - m for l in range(m, lmax + 1)]
    return order


class WignerD(nn.Module):
    """Block-diagonal Wigner-D matrices of degrees 0..lmax for a batch of 3x3 matrices.

    Args:
        lmax: highest degree.
        rows: optional list of coefficient indices; only these rows of D are returned
            (e.g. ``m_truncated_index(lmax, mmax)`` for the edge frame).

    ``forward(R [E, 3, 3]) -> D [E, len(rows), (lmax+1)^2]`` with Y(R r) = D Y(r).
    """

    def __init__(self, lmax: int, rows: list[int] | None = None):
        super().__init__()
        self.lmax = lmax
        k = (lmax + 1) ** 2
        self.rows = list(range(k)) if rows is None else [int(r) for r in rows]
        points, weights = so3.sphere_quadrature(2 * lmax)
        pts = torch.as_tensor(points, dtype=torch.float64)
        y = so3.spherical_harmonics(lmax, pts)  # [P, K]
        # block mask: D_ij is zero unless degree(i) == degree(j)
        deg = so3.degree_index(lmax)
        mask = (deg[self.rows][:, None] == deg[None, :]).to(torch.float64)
        self._tables = ConstantTables(
            points=pts, weighted=y * torch.as_tensor(weights, dtype=torch.float64)[:, None],
            mask=mask)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, rows={len(self.rows)}"

    def forward(self, rotation: torch.Tensor) -> torch.Tensor:
        t = self._tables.get(rotation)
        rotated = t["points"] @ rotation.transpose(-1, -2)  # [E, P, 3]: R p
        yr = so3.spherical_harmonics(self.lmax, rotated, normalize=False)[..., self.rows]
        d = yr.transpose(-1, -2) @ t["weighted"]  # [E, rows, K]
        return d * t["mask"]


class EdgeRotation(nn.Module):
    """Rotate node-layout features into each edge's frame (keeping |m| <= mmax) and back.

    ``forward(vec [E, 3]) -> D [E, K', K]`` (the m-truncated rows of D(R_edge));
    ``rotate(x [E, C, K], D) -> [E, C, K']`` and ``rotate_back(y [E, C, K'], D) -> [E, C, K]``.
    Rotating back rescales degrees l > mmax by sqrt((2l+1)/(2 mmax+1)), EquiformerV2's
    compensation for the dropped orders (a constant per degree: equivariance is unchanged).
    """

    def __init__(self, lmax: int, mmax: int):
        super().__init__()
        if not 0 <= mmax <= lmax:
            raise ValueError(f"mmax must be in [0, lmax={lmax}], got {mmax}")
        self.lmax, self.mmax = lmax, mmax
        self.index = m_truncated_index(lmax, mmax)
        self.wigner = WignerD(lmax, self.index)
        deg = so3.degree_index(lmax)[self.index].to(torch.float64)
        scale = torch.where(deg > mmax, ((2 * deg + 1) / (2 * mmax + 1)).sqrt(),
                            torch.ones_like(deg))
        self._tables = ConstantTables(scale=scale)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, mmax={self.mmax}"

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        return self.wigner(edge_frame(vec))

    @staticmethod
    def rotate(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, d.transpose(1, 2).to(x.dtype))

    def rotate_back(self, y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.bmm(y * self._tables.get(d)["scale"].to(y.dtype), d.to(y.dtype))
