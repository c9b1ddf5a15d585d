"""forcefield.nn: building blocks of the Gaunt-MACE potential."""

from .embedding import SpeciesEmbedding, SpeciesIndex
from .gaunt_blocks import GauntConvolution, GauntManyBodyProduct
from .linear import DegreeLinear
from .radial import BesselBasis, PolynomialEnvelope, RadialEmbedding, RadialMLP, ScaledSiLU
from .readout import AtomicEnergyHead, LinearReadout, MLPReadout

__all__ = [
    "AtomicEnergyHead",
    "BesselBasis",
    "DegreeLinear",
    "GauntConvolution",
    "GauntManyBodyProduct",
    "LinearReadout",
    "MLPReadout",
    "PolynomialEnvelope",
    "RadialEmbedding",
    "RadialMLP",
    "ScaledSiLU",
    "SpeciesEmbedding",
    "SpeciesIndex",
]
