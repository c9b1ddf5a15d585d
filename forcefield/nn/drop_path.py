"""Stochastic depth: drop a residual branch for whole structures during training."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath"]


class DropPath(nn.Module):
    """Multiply a branch by 0 (probability ``prob``) or 1/(1-prob), one draw per structure.

    ``forward(x [N, ...], batch [N])``; the identity in eval mode or when prob = 0.
    """

    def __init__(self, prob: float = 0.0):
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {prob}")
        self.prob = float(prob)

    def extra_repr(self) -> str:
        return f"prob={self.prob}"

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        keep = torch.rand(num_graphs, dtype=x.dtype, device=x.device) >= self.prob
        scale = keep.to(x.dtype) / (1.0 - self.prob)
        return x * scale[batch].reshape(-1, *([1] * (x.dim() - 1)))
