"""One reader for every file that should hold a model: a ``model.pt`` or a training checkpoint.

Every command and API that reads a model (``forcefield evaluate``, ``export``, ``md``,
``relax``, ``train init_from=`` / ``ckpt_path=``, :class:`~forcefield.ForceFieldCalculator`,
:func:`forcefield.load_model`) goes through here, so a file that is not a model (garbage,
a truncated download, another program's checkpoint, a pickle carrying code) always ends in
one :class:`ModelFileError` sentence that names the file and what was expected.

Nothing is ever unpickled beyond tensors and plain values (``torch.load(weights_only=True)``),
and torch's own error text (which suggests disabling that protection) is never shown.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forcefield.errors import ForceFieldError

if TYPE_CHECKING:  # torch is imported when a file is read: the CLI's error handling
    import torch  # imports this module before it needs torch

EXPECTED = ("a forcefield model file (model.pt, written by 'forcefield train' or "
            "'forcefield export') or a training checkpoint (<run>/checkpoints/*.ckpt)")
EXPECTED_CHECKPOINT = ("a training checkpoint written by 'forcefield train' "
                       "(<run>/checkpoints/*.ckpt)")


class ModelFileError(ForceFieldError):
    """A file that is not a usable forcefield model file or checkpoint."""


class MissingModelFileError(ModelFileError, FileNotFoundError):
    """No file at the model path given (still a ``FileNotFoundError`` for callers)."""


class ModelPathIsADirectoryError(ModelFileError, IsADirectoryError):
    """A directory where a model file was expected (still an ``IsADirectoryError``)."""


def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise MissingModelFileError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise ModelPathIsADirectoryError(
            f"{what} path {path} is a directory; pass the file inside it")


def _check_zip(path: Path, expected: str) -> None:
    """A torch file is a zip archive: refuse anything else, and damaged members, early."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # CRC check of every member
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelFileError(
            f"{path} is not a readable torch file (truncated or corrupted, or another format); "
            f"expected {expected}"
        ) from exc
    if damaged is not None:
        raise ModelFileError(
            f"{path} is corrupted (checksum mismatch in {damaged!r}); expected {expected}"
        )


def safe_load(path: str | os.PathLike, expected: str = EXPECTED) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure as one sentence."""
    import torch

    path = Path(path)
    _check_zip(path, expected)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"{path} holds pickled Python objects other than tensors and plain values "
            "(which could run code when loaded), so it is refused; "
            f"expected {expected}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any torch/zip parsing failure is a bad file
        raise ModelFileError(
            f"{path} is not a readable torch file (truncated or corrupted); expected {expected}"
        ) from exc


def _is_forcefield_checkpoint(raw: Any) -> bool:
    return (isinstance(raw, dict) and "state_dict" in raw
            and isinstance(raw.get("hyper_parameters"), dict)
            and "model_config" in raw["hyper_parameters"])


def _not_ours(path: Path, raw: Any, expected: str) -> ModelFileError:
    if isinstance(raw, dict) and "pytorch-lightning_version" in raw:
        what = "a Lightning checkpoint of another program (no forcefield model_config in it)"
    else:
        what = "a torch file of another program (neither a model file nor a checkpoint)"
    return ModelFileError(f"{path} is {what}; expected {expected}")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw dictionary of a ``forcefield train`` checkpoint; one sentence otherwise."""
    from forcefield.export import file_kind

    path = Path(path)
    _check_exists(path, "checkpoint")
    if file_kind(path) == "model":
        raise ModelFileError(
            f"{path} is a forcefield model file (model.pt), not a training checkpoint; "
            f"expected {EXPECTED_CHECKPOINT}"
        )
    raw = safe_load(path, EXPECTED_CHECKPOINT)
    if not _is_forcefield_checkpoint(raw):
        raise _not_ours(path, raw, EXPECTED_CHECKPOINT)
    return raw


def read_any(path: str | os.PathLike) -> tuple[str, dict]:
    """``("model", payload)`` for a model file, ``("checkpoint", raw)`` for a checkpoint."""
    from forcefield.export import file_kind, read_model_file

    path = Path(path)
    _check_exists(path, "model")
    if file_kind(path) == "model":
        return "model", read_model_file(path)
    raw = safe_load(path, EXPECTED)
    if _is_forcefield_checkpoint(raw):
        return "checkpoint", raw
    raise _not_ours(path, raw, EXPECTED)


def module_from_checkpoint(raw: dict, path: str | os.PathLike = "checkpoint"):
    """The :class:`ForceFieldModule` stored in a checkpoint dictionary, weights loaded."""
    from forcefield.training.module import ForceFieldModule

    hp = raw["hyper_parameters"]
    try:
        module = ForceFieldModule(model_config=hp["model_config"], training=hp.get("training"),
                                  dtype=hp.get("dtype", "float64"), oc20=hp.get("oc20", False),
                                  model_class=hp.get("model_class"))
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(
            f"{path}: the stored model_config does not fit this forcefield version ({exc}); "
            "the checkpoint is damaged or from another version"
        ) from exc
    try:
        module.load_state_dict(raw["state_dict"])
    except RuntimeError as exc:
        raise ModelFileError(
            f"{path}: the stored weights do not match the model "
            f"({str(exc).splitlines()[0]}); the checkpoint is damaged or from another version"
        ) from exc
    return module


def load_network(
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    ema: bool = True,
) -> tuple[torch.nn.Module, dict]:
    """(network in eval mode, info) from a ``model.pt`` or a training checkpoint.

    ``info`` holds ``kind`` ("model" | "checkpoint" | "package"), ``dtype`` and for
    checkpoints ``epoch`` and ``training`` (the stored training config). Checkpoints give
    the EMA weights unless ``ema=False``.  A ``.pt2`` package gives a
    ``forcefield.traced.TracedPotential`` (inference only, in the package's dtype).
    """
    import torch

    from forcefield.export import load_model, resolve_dtype
    from forcefield.pt2 import is_pt2

    path = Path(path)
    if is_pt2(path):
        net = load_model(path, device=device, dtype=dtype)
        return net, {"kind": "package", "dtype": net.metadata["dtype"], "metadata": net.metadata}
    kind, raw = read_any(path)
    target = resolve_dtype(dtype)
    if kind == "model":
        net = load_model(path, device=device, dtype=target)
        return net, {"kind": "model", "dtype": raw.get("dtype"), "metadata": raw.get("metadata")}
    module = module_from_checkpoint(raw, path)
    net = module.eval_model() if ema else module.model
    if target is not None:
        net = net.to(target)
    net = net.to(torch.device(device)).eval()
    for param in net.parameters():
        param.requires_grad_(False)
    hp = raw["hyper_parameters"]
    return net, {"kind": "checkpoint", "epoch": raw.get("epoch"), "dtype": hp.get("dtype"),
                 "training": hp.get("training")}


__all__ = ["ModelFileError", "load_network", "module_from_checkpoint", "read_any",
           "read_checkpoint", "safe_load"]
