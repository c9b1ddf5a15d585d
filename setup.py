"""Build step for the operator library ``forcefield/ops/_C*.so``: the ``forcefield::`` torch
operators (fused CPU kernels of the grid Gaunt product, the Gaunt convolution and the
many-body powers, registered with ``TORCH_LIBRARY``).

Everything else about the package is in pyproject.toml.  The library is compiled against the
installed torch, so install with ``pip install --no-build-isolation`` after torch (an isolated
build would fetch a second torch just to compile against).  It is optional: where torch is not
importable at build time or no C++ compiler works, the install still succeeds without it, and
the models take the torch route (``forcefield.ops.available()`` is False, and one line says so
at run time).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["forcefield/ops/csrc/ops.cpp", "forcefield/ops/csrc/conv_kernel.c",
           "forcefield/ops/csrc/grid_kernel.c"]
DEPENDS = ["forcefield/ops/csrc/conv_kernel_body.h", "forcefield/ops/csrc/grid_kernel_impl.h",
           "forcefield/ops/csrc/grid_kernel_body.h"]


def operator_library() -> list[Extension]:
    """The extension, configured for the torch found at build time (none without torch)."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("forcefield: torch is not importable at build time, so the operator library is "
              "not built (install torch first, then pip install --no-build-isolation .)",
              file=sys.stderr)
        return []
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    # -std=c++20 (torch's headers need it) only warns for the two C files, which gcc compiles
    # as C (gnu17) whatever it is told about C++
    args = ["-O3", "-ffp-contract=fast", "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            "-fvisibility=hidden", "-Wno-psabi"]
    return [Extension(
        "forcefield.ops._C",
        sources=SOURCES,
        depends=DEPENDS,
        include_dirs=cpp_extension.include_paths(),
        library_dirs=cpp_extension.library_paths(),
        # no libtorch_python: the library must load in a C++ program without Python
        libraries=["c10", "torch", "torch_cpu"],
        runtime_library_dirs=cpp_extension.library_paths(),
        extra_compile_args=[] if sys.platform == "win32" else args,
        language="c++",
        optional=True,
    )]


class BuildOperators(build_ext):
    """build_ext that tells, in one line, when the optional operator library failed."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:  # the library is optional: say so and go on
            print(f"forcefield: the operator library was not built ({error}); the models "
                  "will take the torch route", file=sys.stderr)


setup(ext_modules=operator_library(), cmdclass={"build_ext": BuildOperators})
