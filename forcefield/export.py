"""The deployable model file (``model.pt``): save and load without pickled code.

A model file is written by :func:`torch.save` but holds only a plain dictionary of
tensors and built-in Python values, so that :func:`torch.load` with
``weights_only=True`` reads it without executing any pickled code::

    {
        "format_version": 1,
        "model_class": "GauntMACE",            # a class of forcefield.models.MODELS
        "config": {...},                        # cls(**config) rebuilds the network
        "state_dict": {name: tensor},           # the weights (EMA weights from training)
        "species": [1, 6, 7, 8],                # atomic numbers the model knows
        "r_max": 5.0,                           # cutoff radius (A)
        "e0s": {1: -13.6, ...},                 # isolated-atom energies (eV)
        "dtype": "float64",                     # dtype of the stored weights
        "metadata": {"forcefield_version": ..., "torch_version": ..., "created": ..., ...},
    }

The file is written atomically (temporary file in the same folder, then
:func:`os.replace`), so an interrupted export never leaves a half-written model.
"""

from __future__ import annotations

import datetime as _dt
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from forcefield.atomic_io import atomic_path
from forcefield.model_files import ModelFileError, safe_load

FORMAT_VERSION = 1
"""Version of the model file layout written by :func:`save_model`."""

_MARKER = "forcefield-model"
_LIGHTNING_KEYS = ("pytorch-lightning_version", "optimizer_states")

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Turn ``"float32"``/``"float64"``/a torch dtype/``None`` into a torch dtype (or None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype {dtype} is not supported; use float32 or float64")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'float32' or 'float64'")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float64`` -> ``"float64"``."""
    return str(dtype).removeprefix("torch.")


def _plain(value: Any, where: str) -> Any:
    """Convert ``value`` to built-in types that ``torch.load(weights_only=True)`` accepts."""
    # exact built-in types: subclasses (e.g. torch's TorchVersion str) are not loadable
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, torch.dtype):
        return dtype_name(value)
    if isinstance(value, Path):
        return str(value)
    # numpy scalars / arrays and 0-d tensors-like objects
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _plain(value.item(), where)
    if hasattr(value, "tolist"):
        return _plain(value.tolist(), where)
    if isinstance(value, Mapping) or (
        hasattr(value, "keys") and hasattr(value, "__getitem__")
    ):
        try:  # OmegaConf DictConfig
            from omegaconf import DictConfig, OmegaConf

            if isinstance(value, DictConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except ImportError:  # pragma: no cover - hydra is a dependency
            pass
        out = {}
        for key, item in value.items():
            if hasattr(key, "item") and not isinstance(key, (str, int)):
                key = key.item()
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                key = str(key)
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        try:
            from omegaconf import ListConfig, OmegaConf

            if isinstance(value, ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(items)]
    try:  # omegaconf ListConfig is not a list subclass
        from omegaconf import ListConfig, OmegaConf

        if isinstance(value, ListConfig):
            return _plain(OmegaConf.to_container(value, resolve=True), where)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(
        f"cannot store {where} of type {type(value).__name__} in a model file; "
        "use numbers, strings, lists, dicts or tensors"
    )


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    for tensor in model.buffers():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _int_keys(mapping: Mapping | None) -> dict[int, float]:
    if not mapping:
        return {}
    return {int(k): float(v) for k, v in mapping.items()}


def save_model(
    path: str | os.PathLike, model: torch.nn.Module, metadata: dict | None = None
) -> Path:
    """Write ``model`` to ``path`` as a deployable model file; return the path.

    ``model`` must carry its constructor arguments as ``model.config`` (a dict), so that
    ``type(model)(**config)`` rebuilds it. The weights saved are the ones in ``model``
    (pass the EMA weights when exporting a training run). ``metadata`` is any dict of
    plain values (training data, metrics, ...); the package and torch versions and the
    creation time are added.
    """
    from forcefield import __version__

    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"{type(model).__name__} has no dict attribute 'config' holding its constructor "
            "arguments; only forcefield models (e.g. forcefield.models.GauntMACE) can be saved"
        )
    config = _plain(dict(config), "config")
    dtype = _model_dtype(model)
    state_dict = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
    meta = {
        "forcefield_version": __version__,
        "torch_version": str(torch.__version__),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(_plain(dict(metadata or {}), "metadata"))
    species = config.get("species")
    r_max = config.get("r_max")
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": _MARKER,
        "model_class": type(model).__name__,
        "config": config,
        "state_dict": state_dict,
        "species": [int(z) for z in species] if species is not None else None,
        "r_max": float(r_max) if r_max is not None else None,
        "e0s": _int_keys(config.get("e0s")),
        "dtype": dtype_name(dtype),
        "metadata": meta,
    }
    with atomic_path(path, suffix=".tmp") as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def _pickle_bytes(path: Path) -> bytes | None:
    """The raw (not unpickled) ``data.pkl`` of a torch zip file, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("/data.pkl") or name == "data.pkl":
                    return archive.read(name)
    except (zipfile.BadZipFile, OSError, KeyError, EOFError):
        return None
    return None


def file_kind(path: str | os.PathLike) -> str:
    """Classify ``path`` without unpickling anything.

    Returns ``"model"`` (a forcefield model file), ``"checkpoint"`` (a Lightning
    checkpoint), ``"corrupted"`` (not a readable torch file: truncated, damaged or
    another format) or ``"unknown"`` (a torch file of some other kind).
    """
    raw = _pickle_bytes(Path(path))
    if raw is None:
        return "corrupted"
    if _MARKER.encode() in raw and b"format_version" in raw:
        return "model"
    if any(key.encode() in raw for key in _LIGHTNING_KEYS):
        return "checkpoint"
    return "unknown"


def is_model_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a forcefield model file (written by :func:`save_model`)."""
    return Path(path).is_file() and file_kind(path) == "model"


def is_lightning_checkpoint(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like a Lightning checkpoint (``*.ckpt``)."""
    return Path(path).is_file() and file_kind(path) == "checkpoint"


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """Raise a clear error unless ``path`` is an existing Lightning checkpoint.

    For code that expects a checkpoint (``forcefield export``, resuming training): a
    model file passed there is named as such.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    kind = file_kind(path)
    if kind == "model":
        raise ModelFileError(
            f"{path} is a forcefield model file (model.pt), not a Lightning checkpoint; "
            "load it with forcefield.load_model or pass it as model=PATH to "
            "'forcefield md'/'forcefield evaluate' (checkpoints are in <run>/checkpoints/*.ckpt)"
        )
    if kind == "corrupted":
        raise ModelFileError(
            f"{path} is not a readable torch file (truncated or corrupted); "
            "use another checkpoint, e.g. <run>/checkpoints/last.ckpt"
        )
    return path


def _error_for(path: Path, kind: str) -> ModelFileError:
    if kind == "checkpoint":
        return ModelFileError(
            f"{path} is a Lightning training checkpoint, not a model file; turn it into one "
            f"with: forcefield export checkpoint={path} output=model.pt"
        )
    if kind == "corrupted":
        return ModelFileError(
            f"{path} is not a readable model file (truncated or corrupted); "
            "export the model again with 'forcefield export' or use the run's model.pt"
        )
    return ModelFileError(
        f"{path} is a torch file but not a forcefield model file (no format_version); "
        "model files are written by forcefield.save_model / 'forcefield export'"
    )


def read_model_file(path: str | os.PathLike) -> dict:
    """Read and validate the raw dictionary of a model file (no model is built)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"model path {path} is a directory; pass the model.pt inside it")
    kind = file_kind(path)
    if kind != "model":
        raise _error_for(path, kind)
    payload = safe_load(path, "a forcefield model file (model.pt, written by 'forcefield "
                              "train' or 'forcefield export')")
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise _error_for(path, "unknown")
    version = payload["format_version"]
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = (
            "it was written by a newer forcefield; upgrade forcefield"
            if newer
            else "re-export it with this forcefield version ('forcefield export')"
        )
        raise ModelFileError(
            f"{path} has model file format version {version!r}, but this forcefield reads "
            f"version {FORMAT_VERSION}; {hint}"
        )
    missing = [k for k in ("model_class", "config", "state_dict") if k not in payload]
    if missing:
        raise ModelFileError(f"{path} is missing the key(s) {missing}; the file is damaged")
    return payload


def _model_class(name: str) -> type[torch.nn.Module]:
    from forcefield.models import MODELS, model_class

    try:
        return model_class(name)
    except KeyError:
        known = sorted(cls.__name__ for cls in MODELS.values())
        raise ModelFileError(
            f"model class {name!r} is not available in forcefield.models of this version "
            f"(known: {known})"
        ) from None


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> torch.nn.Module:
    """Load a model file written by :func:`save_model`, ready for inference.

    ``dtype`` is ``"float32"``, ``"float64"``, a torch dtype, or None for the dtype the
    weights were saved in. The model is returned in eval mode on ``device``; the
    file's metadata is available as ``model.metadata`` (and ``model.model_file``).
    Loading uses ``torch.load(weights_only=True)``: no pickled code is executed.  A
    ``.pt2`` package (``forcefield export format=pt2``) loads as a
    ``forcefield.traced.TracedPotential`` with the same call interface (inference only).
    """
    path = Path(path)
    from forcefield.pt2 import is_pt2

    if is_pt2(path):
        from forcefield.traced import packaged_potential

        return packaged_potential(path, device, resolve_dtype(dtype))
    payload = read_model_file(path)
    target = resolve_dtype(dtype)
    saved = resolve_dtype(payload.get("dtype") or "float32")
    cls = _model_class(payload["model_class"])
    try:
        model = cls(**payload["config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(
            f"{path}: the stored config does not fit {payload['model_class']} of this "
            f"forcefield version ({exc}); re-export the model with this version"
        ) from exc
    # build in the stored precision so that copying the weights loses nothing
    model.to(dtype=saved)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{path}: the stored weights do not match {payload['model_class']}"
            f"({str(exc).splitlines()[0]}); the file is damaged or from another version"
        ) from exc
    model.to(device=torch.device(device), dtype=target or saved)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    model.metadata = dict(payload.get("metadata") or {})
    model.model_file = str(path)
    return model


def model_info(path: str | os.PathLike) -> dict:
    """Summary of a model file (class, species, r_max, e0s, dtype, metadata), no weights."""
    payload = read_model_file(path)
    n_params = sum(t.numel() for t in payload["state_dict"].values() if t.is_floating_point())
    return {
        "format_version": payload["format_version"],
        "model_class": payload["model_class"],
        "species": payload.get("species"),
        "r_max": payload.get("r_max"),
        "e0s": payload.get("e0s"),
        "dtype": payload.get("dtype"),
        "num_tensors_elements": n_params,
        "metadata": payload.get("metadata", {}),
        "config": payload["config"],
    }


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike,
                      dtype: str | None = None, ema: bool = True, format: str = "pt",
                      source: str = "forcefield", target: str = "ase") -> Path:
    """``forcefield export``'s work: write ``output`` from a training checkpoint (its EMA
    weights unless ``ema=False``) or a model file; ``dtype`` None keeps the source's.
    ``format`` is ``pt`` (the model file) or ``pt2`` (an AOTInductor package,
    ``forcefield.pt2``, of ``target`` ``ase`` or ``local``).  ``source="fairchem"``:
    ``checkpoint`` is a fairchem 1.x EquiformerV2 checkpoint, ported by
    :func:`forcefield.models.port.from_fairchem_equiformer_v2` (float32 unless ``dtype`` says
    otherwise)."""
    from forcefield.errors import ConfigError
    from forcefield.model_files import module_from_checkpoint, read_checkpoint
    from forcefield.training.config import check_dtype

    src = Path(checkpoint)
    check_dtype(dtype)
    if format not in ("pt", "pt2"):
        raise ConfigError(f"format={format!r} is not an export format; use format=pt (model "
                          "file) or format=pt2 (AOTInductor package)")
    if target not in ("ase", "local"):
        raise ConfigError(f"target={target!r} is not a package target; use target=ase "
                          "(calculator, md, relax) or target=local (LAMMPS)")
    if target != "ase" and format != "pt2":
        raise ConfigError(f"target={target} applies to packages; add format=pt2")
    dest = Path(output)
    suffix = ".pt2" if format == "pt2" else ".pt"
    if dest.suffix != suffix:
        raise ConfigError(f"output={dest}: a format={format} file ends in {suffix}")
    if source not in ("forcefield", "fairchem"):
        raise ConfigError(f"source={source!r} is not a checkpoint source; use "
                          "source=forcefield (forcefield train) or source=fairchem (a fairchem "
                          "1.x EquiformerV2 checkpoint)")
    if source == "fairchem":
        from forcefield.models.port import from_fairchem_equiformer_v2

        net = from_fairchem_equiformer_v2(src, dtype=resolve_dtype(dtype) or torch.float32)
        metadata = {"source_fairchem_checkpoint": str(src.resolve())}
    elif is_model_file(src):
        net, metadata = load_model(src), {"source_model": str(src.resolve())}
    else:
        try:
            raw = read_checkpoint(src)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ConfigError(f"checkpoint={src}: {exc}") from exc
        module = module_from_checkpoint(raw, src)
        net = module.eval_model() if ema else module.model
        metadata = {"source_checkpoint": str(src.resolve()), "epoch": raw.get("epoch"),
                    "ema": bool(ema)}
    if dtype:
        net = net.to(resolve_dtype(dtype))
    if format == "pt2":
        from forcefield.direct_forces import FINETUNE_HINT, is_direct
        from forcefield.pt2 import export_pt2
        from forcefield.traced import neighbour_cap

        if target == "local" and is_direct(net):
            raise ConfigError(f"checkpoint={src} predicts forces directly (model.forces=direct), "
                              "and a target=local package (LAMMPS) computes forces as -dE/dx: "
                              f"export target=ase (the calculator, md and relax with "
                              f"allow_direct_forces=true), or {FINETUNE_HINT}")
        if target == "local" and neighbour_cap(net) is not None:
            raise ConfigError(f"checkpoint={src} has a neighbour cap (model.max_neighbors="
                              f"{neighbour_cap(net)}), which a target=local package (LAMMPS) "
                              "cannot keep: ghost atoms would be capped differently from the "
                              "atoms they copy; export target=ase, or fine-tune with "
                              "model.max_neighbors=null")
        return export_pt2(net, dest, target=target)
    save_model(dest, net, metadata=metadata)
    return dest


__all__ = [
    "FORMAT_VERSION",
    "ModelFileError",
    "check_checkpoint_file",
    "export_checkpoint",
    "file_kind",
    "is_lightning_checkpoint",
    "is_model_file",
    "load_model",
    "model_info",
    "read_model_file",
    "resolve_dtype",
    "save_model",
]
