"""Build step for the C extensions: fused CPU kernels of the grid Gaunt product and of the
Gaunt convolution.

Everything else about the package is in pyproject.toml.  The extension is optional: where no
C compiler is available the install still succeeds and ``forcefield.so3`` computes the grid
product and the convolution with torch operations instead
(``forcefield.so3.grid_kernel.available()``, ``forcefield.so3.conv_kernel.available()``).
"""

import sys

from setuptools import Extension, setup

COMPILE_ARGS = [] if sys.platform == "win32" else ["-O3", "-std=gnu11", "-ffp-contract=fast"]

setup(
    ext_modules=[
        Extension(
            "forcefield.so3._grid_kernel",
            sources=["forcefield/so3/_grid_kernel.c"],
            depends=["forcefield/so3/_grid_kernel_impl.h",
                     "forcefield/so3/_grid_kernel_body.h"],
            extra_compile_args=COMPILE_ARGS,
            optional=True,
        ),
        Extension(
            "forcefield.so3._conv_kernel",
            sources=["forcefield/so3/_conv_kernel.c"],
            depends=["forcefield/so3/_conv_kernel_body.h"],
            extra_compile_args=COMPILE_ARGS,
            optional=True,
        ),
    ]
)
