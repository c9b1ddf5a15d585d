"""EquiformerV2's radial function: Linear -> LayerNorm -> SiLU blocks on edge features."""

from __future__ import annotations

from torch import nn

__all__ = ["EdgeMLP"]


class EdgeMLP(nn.Module):
    """MLP on invariant edge features (radial basis + element embeddings).

    Args:
        dims: [in, hidden..., out]; every hidden layer is Linear -> LayerNorm -> SiLU,
            the last one a plain Linear.
    """

    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = [int(d) for d in dims]
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:], strict=False)):
            layers.append(nn.Linear(a, b))
            if k < len(self.dims) - 2:
                layers += [nn.LayerNorm(b), nn.SiLU()]
        self.net = nn.Sequential(*layers)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"

    def forward(self, x):
        return self.net(x)
