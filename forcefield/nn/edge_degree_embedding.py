"""EquiformerV2's edge-degree embedding: initial l > 0 features from the neighbour geometry."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import scatter

from .edge_mlp import EdgeMLP
from .wigner import EdgeRotation

__all__ = ["EdgeDegreeEmbedding"]


class EdgeDegreeEmbedding(nn.Module):
    """x_i = 1/avg_degree sum_j u(r_ij) D(R_ij)^T [m = 0 coefficients from an edge MLP].

    In the edge frame a feature with only m = 0 coefficients is symmetric about the edge;
    rotated back it is a function of the edge direction: exactly equivariant.  The cutoff
    envelope u makes it vanish smoothly at r_max.

    Args:
        channels, lmax: output layout [N, C, (lmax+1)^2].
        edge_features: width of the invariant edge features; radial_hidden: MLP widths.
        avg_degree: normalisation (the average number of neighbours).
    """

    def __init__(self, channels: int, lmax: int, edge_features: int, radial_hidden: list[int],
                 avg_degree: float):
        super().__init__()
        self.channels, self.lmax, self.avg_degree = channels, lmax, float(avg_degree)
        self.radial = EdgeMLP([edge_features, *radial_hidden, (lmax + 1) * channels])

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lmax={self.lmax}, avg_degree={self.avg_degree}"

    def forward(self, edge_features: torch.Tensor, rotation: EdgeRotation, wigner: torch.Tensor,
                envelope: torch.Tensor, receiver: torch.Tensor, num_nodes: int) -> torch.Tensor:
        e = edge_features.shape[0]
        m0 = self.radial(edge_features).reshape(e, self.channels, self.lmax + 1)
        m0 = m0 * envelope[:, None, None].to(m0.dtype)
        # the m = 0 coefficients are the first lmax+1 rows of the edge-frame layout
        full = torch.nn.functional.pad(m0, (0, wigner.shape[1] - (self.lmax + 1)))
        x = rotation.rotate_back(full, wigner)
        return scatter(x, receiver, dim=0, dim_size=num_nodes, reduce="sum") / self.avg_degree
