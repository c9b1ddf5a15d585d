"""EquiformerV2's equivariant layer norm ("layer_norm_sh"), computed in float32 or wider."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EquivariantLayerNorm", "wide"]


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least (bf16/fp16 -> float32; float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class EquivariantLayerNorm(nn.Module):
    """Degree 0: LayerNorm over channels.  Degrees > 0: one RMS factor per node.

    The RMS factor averages, over channels and over degrees 1..lmax with equal weight per
    degree, the mean square of each degree's 2l+1 coefficients (a rotation invariant), so
    every degree l > 0 is divided by the same invariant: exactly equivariant.  Affine weights
    per (degree, channel), a bias on degree 0 only.

    Args:
        channels: C.  lmax: highest degree.  eps: added to variances.

    ``forward(x [N, C, (lmax+1)^2]) -> same shape``; runs with autocast off in >= float32.
    """

    def __init__(self, channels: int, lmax: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.lmax, self.eps = channels, lmax, float(eps)
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        deg = torch.tensor([l for l in range(1, lmax + 1) for _ in range(2 * l + 1)])
        self.register_buffer("deg", deg, persistent=False)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lmax={self.lmax}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = wide(x)
            w = self.weight.to(x.dtype)
            s = x[:, :, 0]
            s = s - s.mean(1, keepdim=True)
            s = s * torch.rsqrt(s.pow(2).mean(1, keepdim=True) + self.eps)
            s = s * w[0] + self.bias.to(x.dtype)
            if self.lmax == 0:
                return s.unsqueeze(-1)
            v = x[:, :, 1:]
            # per-coefficient weight 1/((2l+1) lmax): the mean over degrees of per-degree means
            balance = 1.0 / ((2 * self.deg + 1) * self.lmax).to(x.dtype)
            ms = (v.pow(2).mean(1) * balance).sum(-1)  # [N]
            v = v * torch.rsqrt(ms + self.eps)[:, None, None]
            v = v * w[self.deg].T.unsqueeze(0)
            return torch.cat([s.unsqueeze(-1), v], dim=-1)
