"""A C++ host of ``.pt2`` packages (``forcefield_run.cpp``) and its build.

``build(output_dir)`` compiles ``forcefield_run`` against the installed torch (libtorch
headers and libraries ship in the torch wheel) with the system's C++ compiler and returns
its path.  The program is the smallest example of loading a package without Python (see
its header for the input format); tests use it to check C++ against Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["SOURCE", "build"]

SOURCE = Path(__file__).with_name("forcefield_run.cpp")


def build(output_dir: str | os.PathLike, compiler: str | None = None) -> Path:
    """Compile ``forcefield_run`` into ``output_dir``; one clear error when it fails."""
    import torch
    from torch.utils import cpp_extension

    compiler = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    output = Path(output_dir) / "forcefield_run"
    output.parent.mkdir(parents=True, exist_ok=True)
    libraries = cpp_extension.library_paths()
    command = [compiler, "-O1", "-std=c++20", str(SOURCE), "-o", str(output),
               f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
               *(f"-I{path}" for path in cpp_extension.include_paths()),
               *(f"-L{path}" for path in libraries),
               *(f"-Wl,-rpath,{path}" for path in libraries),
               "-ltorch", "-ltorch_cpu", "-lc10", "-ldl"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {output} failed:\n{result.stderr[-3000:]}")
    return output
