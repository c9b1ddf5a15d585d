"""SO(2) convolution (eSCN/EquiformerV2) on edge-frame features truncated at |m| <= mmax.

In a frame whose polar axis is the edge, a rotation about the edge (a "roll" by phi) acts
on the pair (x_{l,+m}, x_{l,-m}) as the same 2D rotation by m phi for every l.  A map that
is complex-linear on x_+ + i x_- for each m therefore commutes with every roll:

    m = 0:  y_0 = W_0 x_0 + b                     (one dense linear over all l and channels)
    m > 0:  y_+ = W_r x_+ - W_i x_-,   y_- = W_r x_- + W_i x_+

With ``parity=True`` W_i = 0: the map then also commutes with the mirror x_- -> -x_- (a
reflection through a plane containing the edge), so a model built from it is
O(3)-equivariant and its energy reflection-invariant; EquiformerV2's complex weights
(``parity=False``) distinguish mirror images (chiral energies).

Edge dependence enters by multiplying the inputs by radial weights per (m, l, channel),
shared by +m and -m (rolls leave them alone).  Layout [E, C, K'] with K' ordered as
``wigner.m_truncated_index(lmax, mmax)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SO2Convolution"]


class SO2Convolution(nn.Module):
    """Roll-equivariant linear map of m-truncated edge-frame features.

    Args:
        channels_in, channels_out: C_in, C_out.
        lmax, mmax: degrees kept and the largest |m|.
        extra_scalars: extra invariant outputs taken from the m = 0 linear (attention
            logits, activation gates), returned separately.
        radial: whether ``forward`` takes radial weights (``num_radial_weights`` per edge).
        parity: real weights only (W_i = 0): equivariant under reflections too.

    ``forward(x [E, C_in, K'], radial [E, R] | None) -> ([E, C_out, K'], [E, extra])``.
    """

    def __init__(self, channels_in: int, channels_out: int, lmax: int, mmax: int,
                 extra_scalars: int = 0, radial: bool = False, parity: bool = True):
        super().__init__()
        self.channels_in, self.channels_out = channels_in, channels_out
        self.lmax, self.mmax, self.extra_scalars = lmax, mmax, extra_scalars
        self.parity = bool(parity)
        self.sizes = [lmax + 1 - m for m in range(mmax + 1)]  # degrees per m
        parts = 1 if self.parity else 2
        self.m0 = nn.Linear(self.sizes[0] * channels_in,
                            self.sizes[0] * channels_out + extra_scalars)
        self.mpos = nn.ModuleList()
        for m in range(1, mmax + 1):
            fan_in = self.sizes[m] * channels_in
            lin = nn.Linear(fan_in, parts * self.sizes[m] * channels_out, bias=False)
            # W_r and W_i both act on x_+ and x_-: halve the variance to keep the output's
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(parts * fan_in))
            self.mpos.append(lin)
        self.radial = radial
        self.num_radial_weights = sum(self.sizes) * channels_in if radial else 0

    def extra_repr(self) -> str:
        return (f"channels_in={self.channels_in}, channels_out={self.channels_out}, "
                f"lmax={self.lmax}, mmax={self.mmax}, extra_scalars={self.extra_scalars}, "
                f"radial={self.radial}, parity={self.parity}")

    def forward(self, x: torch.Tensor, radial: torch.Tensor | None = None):
        e = x.shape[0]
        c_in, c_out = self.channels_in, self.channels_out
        n0 = self.sizes[0]
        rw = None
        if self.radial:
            rw = radial.reshape(e, c_in, sum(self.sizes))  # per (channel, m >= 0 entry)
        x0 = x[:, :, :n0]
        if rw is not None:
            x0 = x0 * rw[:, :, :n0]
        y0 = self.m0(x0.reshape(e, c_in * n0))
        extra = y0[:, n0 * c_out:]
        outs = [y0[:, : n0 * c_out].reshape(e, c_out, n0)]
        start, rstart = n0, n0
        for m in range(1, self.mmax + 1):
            n = self.sizes[m]
            xp, xn = x[:, :, start:start + n], x[:, :, start + n:start + 2 * n]
            if rw is not None:
                r = rw[:, :, rstart:rstart + n]
                xp, xn = xp * r, xn * r
            lin = self.mpos[m - 1]
            if self.parity:
                outs.append(lin(xp.reshape(e, c_in * n)).reshape(e, c_out, n))
                outs.append(lin(xn.reshape(e, c_in * n)).reshape(e, c_out, n))
                start += 2 * n
                rstart += n
                continue
            yp = lin(xp.reshape(e, c_in * n)).reshape(e, 2, c_out, n)
            yn = lin(xn.reshape(e, c_in * n)).reshape(e, 2, c_out, n)
            outs.append(yp[:, 0] - yn[:, 1])  # W_r x_+ - W_i x_-
            outs.append(yn[:, 0] + yp[:, 1])  # W_r x_- + W_i x_+
            start += 2 * n
            rstart += n
        return torch.cat(outs, dim=-1), extra
