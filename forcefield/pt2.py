"""The exported model package (``model.pt2``): AOTInductor, loadable without forcefield.

``export_pt2`` traces a model with its forces and virial (``forcefield.traced``), exports
the graph with free atom and edge counts, and compiles it with AOTInductor into one zip
file: a shared library of the whole computation plus the weights.  It runs with torch
alone, plus the operator library ``forcefield/ops/_C*.so`` when the graph calls the
``forcefield::`` operators (metadata ``needs_ops``), from Python
(``torch._inductor.aoti_load_package``) or C++ (``torch::inductor::AOTIModelPackageLoader``).

Inputs and outputs are those of ``forcefield.traced`` for the package's ``target``:
``ase`` (the default; the calculator, md, relax): ``(positions [N, 3], atomic_numbers [N]
int64, cell [3, 3], edge_index [2, E] int64, cell_shifts [E, 3])`` in the package's dtype ->
``(energy [], node_energy [N], forces [N, 3], virial [3, 3])`` float64, eV and A; ``local``
(LAMMPS, batched hosts): ``(positions [N, 3], atomic_numbers [N], edge_index [2, E],
edge_shifts [E, 3] (Cartesian, A), energy_mask [N])`` -> ``(energy [], node_energy [N],
forces [N, 3], atom_virial [N, 3, 3])``.

The metadata (string values; JSON where structured) is stored in the package and read here
without loading it: ``forcefield_package``, ``forcefield_version``, ``ops_version``,
``needs_ops``, ``model_class``, ``architecture``, ``species``, ``r_max``, ``e0s``,
``num_interactions`` (message-passing layers: LAMMPS needs ghosts out to that many
cutoffs), ``forces`` (``gradient``, or ``direct``: a force head's, not -dE/dx),
``max_neighbors`` (JSON: the neighbour cap that the caller's edges must follow, or null),
``dtype``, ``target`` (``ase`` or ``local``; absent in the first packages, which are
``ase``), ``units``, ``weights_sha256``, ``torch_version``, ``created``.  Packages written
before ``forces`` and ``max_neighbors`` existed read as ``gradient`` and null.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forcefield import ops
from forcefield.model_files import ModelFileError

__all__ = ["PACKAGE_VERSION", "export_pt2", "is_pt2", "load_pt2", "read_pt2_metadata"]

PACKAGE_VERSION = 1
"""Version of the package layout (inputs, outputs, metadata) written by ``export_pt2``."""


def is_pt2(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a package (by its suffix; the content is checked on reading)."""
    return str(path).endswith(".pt2")


def _weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                      .tobytes())
    return digest.hexdigest()


def _metadata(model: nn.Module, dtype: torch.dtype, needs_ops: bool,
              target: str) -> dict[str, str]:
    from forcefield import __version__
    from forcefield.export import dtype_name
    from forcefield.models import architecture_of

    config = dict(getattr(model, "config", {}) or {})
    e0s = {str(int(k)): float(v) for k, v in (config.get("e0s") or {}).items()}
    layers = config.get("num_interactions", config.get("num_layers", 1))
    return {
        "forcefield_package": str(PACKAGE_VERSION),
        "forcefield_version": __version__,
        "ops_version": str(ops.OPS_VERSION),
        "needs_ops": json.dumps(needs_ops),
        "model_class": type(model).__name__,
        "architecture": architecture_of(config),
        "species": json.dumps([int(z) for z in config["species"]]),
        "r_max": repr(float(config["r_max"])),
        "e0s": json.dumps(e0s),
        "num_interactions": str(int(layers)),
        "forces": str(config.get("forces", "gradient")),
        "max_neighbors": json.dumps(config.get("max_neighbors")),
        "dtype": dtype_name(dtype),
        "target": target,
        "units": "energy eV, length A, forces eV/A, virial eV",
        "weights_sha256": _weights_hash(model),
        "torch_version": str(torch.__version__),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def export_pt2(model: nn.Module, output: str | os.PathLike,
               dtype: torch.dtype | None = None, target: str = "ase") -> Path:
    """Write ``model`` as an AOTInductor package.

    ``target`` is the signature (module docstring): ``ase`` for the calculator, md and
    relax; ``local`` for LAMMPS and hosts that evaluate pieces of systems with ghost atoms.
    The graph is traced in ``dtype`` (None: the model's); it calls the ``forcefield::``
    operators where the library is available, else the torch route (and says so in one
    line).  Written beside ``output`` and renamed onto it, so a failed export leaves
    nothing behind.
    """
    from forcefield.traced import TARGETS, example_inputs, inductor_options, trace_potential

    output = Path(output)
    if output.suffix != ".pt2":
        raise ValueError(f"output={output}: a package file ends in .pt2")
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not a package target; use one of "
                         f"{', '.join(TARGETS)}")
    dtype = dtype or next(model.parameters()).dtype
    model = copy.deepcopy(model).to(dtype).eval()  # the caller's model keeps its dtype
    needs_ops = ops.available()
    if not needs_ops:
        print("forcefield export: the operator library is not built; the package uses the "
              "torch route (slower, needs no forcefield library to run)")
    graph = trace_potential(model, dtype, target)
    if needs_ops:
        needs_ops = any("forcefield" in str(node.target) for node in graph.graph.nodes)
    atoms = torch.export.Dim("atoms", min=1)
    edges = torch.export.Dim("edges", min=0)
    if target == "local":
        dynamic = ({0: atoms}, {0: atoms}, {1: edges}, {0: edges}, {0: atoms})
    else:
        dynamic = ({0: atoms}, {0: atoms}, None, {1: edges}, {0: edges})
    example = example_inputs(dtype, species=int(model.config["species"][0]), target=target)
    program = torch.export.export(graph, example, dynamic_shapes=dynamic, strict=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        built = work / output.name
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(built),
            inductor_configs={"aot_inductor.metadata": _metadata(model, dtype, needs_ops, target),
                              **inductor_options(model)})
        os.replace(built, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output


def _not_a_package(path: Path, cause: str) -> ModelFileError:
    return ModelFileError(f"{path} is not a forcefield model package ({cause}); write one with "
                          "'forcefield export checkpoint=... output=model.pt2 format=pt2'")


def read_pt2_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The package's metadata, decoded (species list, r_max float, ...), without loading
    the compiled model."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model package {path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"model path {path} is a directory; pass the .pt2 file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("wrapper_metadata.json")]
            if not names:
                raise _not_a_package(path, "no AOTInductor model inside")
            raw = json.loads(archive.read(names[0]))
    except zipfile.BadZipFile:
        raise _not_a_package(path, "not a zip archive, or truncated") from None
    except (OSError, ValueError, zipfile.LargeZipFile) as error:
        raise _not_a_package(path, f"unreadable: {error}") from None
    if "forcefield_package" not in raw:
        raise _not_a_package(path, "an AOTInductor package without forcefield metadata")
    if raw["forcefield_package"] != str(PACKAGE_VERSION):
        raise ModelFileError(f"{path} has package version {raw['forcefield_package']}, this "
                             f"forcefield reads version {PACKAGE_VERSION}; export it again with "
                             "this forcefield")
    meta: dict[str, Any] = dict(raw)
    meta["species"] = json.loads(raw["species"])
    meta["r_max"] = float(raw["r_max"])
    meta["e0s"] = {int(k): v for k, v in json.loads(raw["e0s"]).items()}
    meta["needs_ops"] = json.loads(raw["needs_ops"])
    meta["num_interactions"] = int(raw["num_interactions"])
    meta["target"] = raw.get("target", "ase")
    meta["forces"] = raw.get("forces", "gradient")
    meta["max_neighbors"] = json.loads(raw.get("max_neighbors", "null"))
    return meta


def load_pt2(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """(the loaded package's runner, its metadata); one clear error for a package this
    machine cannot run (damaged, another operator set, no operator library, CPU lacking
    the instruction set it was built for)."""
    path = Path(path)
    meta = read_pt2_metadata(path)
    if meta["needs_ops"]:
        if meta.get("ops_version") != str(ops.OPS_VERSION):
            raise ModelFileError(f"{path} was built for forcefield operator set "
                                 f"{meta.get('ops_version')}, this forcefield has "
                                 f"{ops.OPS_VERSION}; export it again with this forcefield")
        if not ops.available():
            raise ModelFileError(f"{path} calls the forcefield:: operators, but the operator "
                                 "library is not built here; reinstall forcefield with a C++ "
                                 "compiler (pip install --no-build-isolation .), or export the "
                                 "package where the library is missing (torch route)")
    try:
        runner = torch._inductor.aoti_load_package(str(path))
    except Exception as error:  # noqa: BLE001 - any loader failure is one sentence
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{path} could not be loaded ({first}); it is damaged or was "
                             "built for another torch or CPU; export it again here") from None
    return runner, meta
