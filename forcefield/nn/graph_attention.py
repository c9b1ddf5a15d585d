"""EquiformerV2's SO(2)-equivariant graph attention, with a smooth cutoff on the weights.

Per edge j -> i (sender j, receiver i):
  1. [x_j, x_i] rotated into the edge frame (|m| <= mmax), times radial weights, first SO(2)
     convolution -> hidden features + invariant scalars (attention features, gates);
  2. logits: LayerNorm on each head's alpha features -> smooth leaky ReLU -> dot with a
     per-head vector;
  3. weights: a softmax over i's incoming edges where each edge counts with its cutoff
     envelope u(r), a_ij = u_ij e^{s_ij} / sum_k u_ik e^{s_ik}, then times u_ij again, so an
     edge enters and leaves the sum smoothly (the original's plain softmax jumps when a
     neighbour crosses the cutoff);
  4. values: separable S2 activation -> second SO(2) convolution -> heads x value channels,
     weighted, rotated back, summed at i, per-degree linear to the output channels plus a
     degree-0 bias (as EquiformerV2's projection; zero at initialisation).
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import scatter

from .edge_mlp import EdgeMLP
from .linear import DegreeLinear
from .s2_activation import (
    SeparableS2Activation,
    SphereGrid,
    component_factors,
    m_truncation_factors,
)
from .so2_convolution import SO2Convolution
from .wigner import EdgeRotation, m_truncated_index

__all__ = ["SmoothLeakyReLU", "GraphAttention", "envelope_softmax"]


class SmoothLeakyReLU(nn.Module):
    """x (1+a)/2 + x (2 sigmoid(x) - 1) (1-a)/2: slope a far left, 1 far right, smooth."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.negative_slope
        return x * (1 + a) / 2 + x * (2 * torch.sigmoid(x) - 1) * (1 - a) / 2


def envelope_softmax(logits: torch.Tensor, envelope: torch.Tensor, receiver: torch.Tensor,
                     num_nodes: int) -> torch.Tensor:
    """u_ij e^{s_ij} / sum_k u_ik e^{s_ik} over each receiver's edges ([E, H] -> [E, H])."""
    shift = scatter(logits.detach(), receiver, dim=0, dim_size=num_nodes, reduce="max")
    w = torch.exp(logits - shift[receiver]) * envelope[:, None]
    total = scatter(w, receiver, dim=0, dim_size=num_nodes, reduce="sum")
    return w / total.clamp_min(torch.finfo(w.dtype).tiny)[receiver]


class GraphAttention(nn.Module):
    """Multi-head SO(2) graph attention: [N, C, K] node features -> [N, C_out, K].

    Args:
        channels: node channels C.  channels_out: output channels.
        lmax, mmax: degrees and edge-frame orders.
        hidden: channels of the first SO(2) convolution (attn_hidden).
        heads, alpha_channels, value_channels: attention heads, logit features per head,
            value channels per head.
        edge_features: width of the invariant edge features; radial_hidden: MLP widths.
        grid_degree: quadrature degree of the edge S2 activation.
        alpha_drop: dropout on the attention weights (training only).
        parity: SO(2) convolutions with real weights (reflection-equivariant).
        sphere_grid: the edge activation's grid, ``"gauss_legendre"`` (ours: orthonormal
            harmonics on a quadrature exact to ``grid_degree``) or ``"fairchem"`` (fairchem's
            ``SO3_Grid[lmax][mmax]``: e3nn's ``grid_degree`` x ``grid_degree`` grid, e3nn's
            "component" factors and the m-truncation rescale on both projections).
    """

    def __init__(self, channels: int, channels_out: int, lmax: int, mmax: int, hidden: int,
                 heads: int, alpha_channels: int, value_channels: int, edge_features: int,
                 radial_hidden: list[int], grid_degree: int, alpha_drop: float = 0.0,
                 parity: bool = True, sphere_grid: str = "gauss_legendre"):
        super().__init__()
        self.channels, self.channels_out = channels, channels_out
        self.lmax, self.mmax, self.hidden = lmax, mmax, hidden
        self.heads, self.alpha_channels, self.value_channels = heads, alpha_channels, value_channels
        self.conv1 = SO2Convolution(2 * channels, hidden, lmax, mmax,
                                    extra_scalars=heads * alpha_channels + hidden, radial=True,
                                    parity=parity)
        self.radial = EdgeMLP([edge_features, *radial_hidden, self.conv1.num_radial_weights])
        self.alpha_norm = nn.LayerNorm(alpha_channels)
        self.alpha_act = SmoothLeakyReLU(0.2)
        self.alpha_dot = nn.Parameter(torch.randn(heads, alpha_channels) / alpha_channels**0.5)
        self.alpha_drop = nn.Dropout(alpha_drop) if alpha_drop > 0 else None
        index = m_truncated_index(lmax, mmax)
        if sphere_grid == "fairchem":
            n, m = component_factors(lmax), m_truncation_factors(lmax, mmax)
            grid = SphereGrid(lmax, grid_degree, index,
                              degree_scale=[a * b for a, b in zip(n, m, strict=True)],
                              from_scale=[b / a for a, b in zip(n, m, strict=True)],
                              quadrature="e3nn")
        elif sphere_grid == "gauss_legendre":
            grid = SphereGrid(lmax, grid_degree, index)
        else:
            raise ValueError(f"model.sphere_grid={sphere_grid!r} is not supported; use "
                             "'gauss_legendre' or 'fairchem'")
        self.activation = SeparableS2Activation(grid)
        self.conv2 = SO2Convolution(hidden, heads * value_channels, lmax, mmax, parity=parity)
        self.project = DegreeLinear(heads * value_channels, channels_out, lmax, lmax)
        self.project_bias = nn.Parameter(torch.zeros(channels_out))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, channels_out={self.channels_out}, lmax={self.lmax}, "
                f"mmax={self.mmax}, hidden={self.hidden}, heads={self.heads}, "
                f"alpha_channels={self.alpha_channels}, value_channels={self.value_channels}")

    def forward(self, x: torch.Tensor, edge_features: torch.Tensor, rotation: EdgeRotation,
                wigner: torch.Tensor, envelope: torch.Tensor, sender: torch.Tensor,
                receiver: torch.Tensor) -> torch.Tensor:
        num_nodes, num_edges = x.shape[0], sender.shape[0]
        xe = torch.cat([x[sender], x[receiver]], dim=1)  # [E, 2C, K]
        xe = rotation.rotate(xe, wigner)  # [E, 2C, K']
        h, extra = self.conv1(xe, self.radial(edge_features))
        ha = self.heads * self.alpha_channels
        alpha = self.alpha_act(self.alpha_norm(extra[:, :ha].reshape(-1, self.heads,
                                                                     self.alpha_channels)))
        logits = (alpha * self.alpha_dot).sum(-1)  # [E, H]
        h = self.activation(h, extra[:, ha:])
        v, _ = self.conv2(h)  # [E, H*V, K']
        weight = envelope_softmax(logits, envelope, receiver, num_nodes)
        if self.alpha_drop is not None:
            weight = self.alpha_drop(weight)
        weight = weight * envelope[:, None]
        k = v.shape[-1]
        v = v.reshape(num_edges, self.heads, self.value_channels, k) * weight[:, :, None, None]
        v = rotation.rotate_back(v.reshape(num_edges, self.heads * self.value_channels, k),
                                 wigner)
        out = self.project(scatter(v, receiver, dim=0, dim_size=num_nodes, reduce="sum"))
        return torch.cat([(out[:, :, 0] + self.project_bias).unsqueeze(-1), out[:, :, 1:]], -1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # files written before the projection had a bias computed this layer with bias 0
        key = prefix + "project_bias"
        if key not in state_dict:
            state_dict[key] = torch.zeros_like(self.project_bias)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
