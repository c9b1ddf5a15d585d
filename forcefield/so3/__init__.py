"""The math core: real spherical harmonics, Gaunt coefficients and the Gaunt tensor product.

Nothing here knows about atoms; see notes/gaunt.md for conventions and identities.
"""

from forcefield.so3.spherical_harmonics import (
    degree_index,
    num_coefficients,
    spherical_harmonics,
)
from forcefield.so3.tables import e3nn_grid_quadrature, gaunt_coefficients, sphere_quadrature
from forcefield.so3.tensor_product import (
    METHODS,
    GauntPowers,
    GauntTensorProduct,
    select_method,
)

__all__ = [
    "METHODS",
    "GauntPowers",
    "GauntTensorProduct",
    "degree_index",
    "e3nn_grid_quadrature",
    "gaunt_coefficients",
    "num_coefficients",
    "select_method",
    "sphere_quadrature",
    "spherical_harmonics",
]
