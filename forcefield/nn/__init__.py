"""forcefield.nn: building blocks of the Gaunt-MACE and Gaunt-EquiformerV2 potentials."""

from .conservative import energy_derivatives, smootherstep, strained_geometry
from .drop_path import DropPath
from .edge_degree_embedding import EdgeDegreeEmbedding
from .edge_mlp import EdgeMLP
from .embedding import SpeciesEmbedding, SpeciesIndex
from .feed_forward import GridFeedForward
from .gaunt_blocks import GauntConvolution, GauntManyBodyProduct
from .gaussian_basis import GaussianBasis
from .graph_attention import GraphAttention, SmoothLeakyReLU, envelope_softmax
from .linear import DegreeLinear
from .norm import EquivariantLayerNorm
from .radial import BesselBasis, PolynomialEnvelope, RadialEmbedding, RadialMLP, ScaledSiLU
from .readout import AtomicEnergyHead, LinearReadout, MLPReadout
from .s2_activation import SeparableS2Activation, SphereGrid, default_grid_degree
from .selfmix import GauntSelfmix
from .so2_convolution import SO2Convolution
from .wigner import EdgeRotation, WignerD, edge_frame, m_truncated_index

__all__ = [
    "energy_derivatives",
    "smootherstep",
    "strained_geometry",
    "AtomicEnergyHead",
    "BesselBasis",
    "DegreeLinear",
    "DropPath",
    "EdgeDegreeEmbedding",
    "EdgeMLP",
    "EdgeRotation",
    "EquivariantLayerNorm",
    "GauntConvolution",
    "GauntManyBodyProduct",
    "GauntSelfmix",
    "GaussianBasis",
    "GraphAttention",
    "GridFeedForward",
    "LinearReadout",
    "MLPReadout",
    "PolynomialEnvelope",
    "RadialEmbedding",
    "RadialMLP",
    "SO2Convolution",
    "ScaledSiLU",
    "SeparableS2Activation",
    "SmoothLeakyReLU",
    "SpeciesEmbedding",
    "SpeciesIndex",
    "SphereGrid",
    "WignerD",
    "default_grid_degree",
    "edge_frame",
    "envelope_softmax",
    "m_truncated_index",
]
