"""Equivariant linear layers on features laid out as [..., channels, (lmax+1)**2]."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["DegreeLinear"]


class DegreeLinear(nn.Module):
    """Channel mixing with one [C_in, C_out] matrix per degree l (equivariant, no bias).

    Input [N, C_in, (lmax_in+1)**2] -> output [N, C_out, (lmax_out+1)**2]; degrees above
    ``lmax_in`` in the output are zero, degrees above ``lmax_out`` in the input are dropped.
    Weights ~ N(0, 1/C_in) so unit-variance inputs give unit-variance outputs.
    """

    def __init__(self, channels_in: int, channels_out: int, lmax_in: int, lmax_out: int):
        super().__init__()
        self.channels_in = channels_in
        self.channels_out = channels_out
        self.lmax_in = lmax_in
        self.lmax_out = lmax_out
        self.lmax_common = min(lmax_in, lmax_out)
        self.weight = nn.Parameter(
            torch.randn(self.lmax_common + 1, channels_in, channels_out) / math.sqrt(channels_in)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        k_out = (self.lmax_out + 1) ** 2
        if self.lmax_common == 0:
            out = (x[:, :, 0] @ self.weight[0]).unsqueeze(-1)
        else:
            # [N, C, K] -> [K, N, C] so each degree block is one batched matmul
            xt = x[:, :, : (self.lmax_common + 1) ** 2].permute(2, 0, 1)
            blocks = []
            for l in range(self.lmax_common + 1):
                blocks.append(torch.matmul(xt[l * l : (l + 1) ** 2], self.weight[l]))
            out = torch.cat(blocks, 0).permute(1, 2, 0)
        if out.shape[-1] < k_out:
            out = torch.nn.functional.pad(out, (0, k_out - out.shape[-1]))
        return out.reshape(n, self.channels_out, k_out)
