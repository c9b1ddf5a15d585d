"""``forcefield evaluate``'s work: a model file or checkpoint on every test source of a data
config; writes ``metrics.json``, ``predictions_<split>.extxyz`` and parity plots.

:func:`evaluate` takes a config composed from conf/evaluate.yaml (by
:mod:`forcefield.cli.evaluate`) and returns a process exit code; user errors raise a
:class:`~forcefield.errors.ForceFieldError` subclass naming the key or file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from forcefield.training.config import ConfigError, check_dtype, check_keys
from forcefield.training.io import atomic_write_json, jsonable
from forcefield.training.loaders import (
    check_species,
    instantiate_datamodule,
    is_oc20,
    setup_data,
    test_loaders,
)

EVALUATE_KEYS = ("data", "model", "output_dir", "dtype", "device", "batch_size", "predictions",
                 "plots")


def _echo(msg: str = "") -> None:
    print(msg, file=sys.stdout, flush=True)


def load_any_model(path: str | os.PathLike, dtype: str | None = None):
    """(network in eval mode, info dict) from a model.pt or a training checkpoint."""
    from forcefield.model_files import load_network

    try:
        return load_network(path, dtype=dtype)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"model={path}: {exc} (give a model.pt or a .ckpt checkpoint)") from exc



def _device(name: str) -> torch.device:
    """``auto``: cuda when available, else cpu; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg: DictConfig) -> int:
    """Metrics, predictions and parity plots of the model ``cfg.model`` on every test source
    of ``cfg.data``."""
    from tqdm.auto import tqdm

    from forcefield.training.metrics import MetricAccumulator, format_table

    check_keys(cfg, EVALUATE_KEYS)
    check_dtype(cfg.dtype)
    model_path = str(cfg.model)
    net, info = load_any_model(model_path, cfg.dtype)
    device = _device(str(cfg.device))
    net = net.to(device)
    oc20 = is_oc20(cfg.data)
    extra = {}
    if cfg.batch_size is not None:
        extra["batch_size"] = int(cfg.batch_size)
    if OmegaConf.is_missing(cfg.data, "train"):
        cfg.data.train = None  # evaluation reads only the test sources (data=ase needs none)
    dm = instantiate_datamodule(cfg.data, r_max=float(net.config["r_max"]), **extra)
    setup_data(dm, "test")
    names, loaders = test_loaders(dm)
    if not loaders:
        raise ConfigError("data: no test data found; set data.test (oc20/ase) or data.root (3bpa)")
    check_species(names, loaders, net.config["species"], "test")
    out = Path(str(cfg.output_dir)).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    predictions: dict[str, dict] = {}
    for name, loader in zip(names, loaders, strict=True):
        acc = MetricAccumulator(device)
        frames = []
        buf: dict[str, list] = {"e_ref": [], "e_pred": [], "natoms": [], "f_ref": [], "f_pred": []}
        for batch in tqdm(loader, desc=f"evaluate {name}", leave=False):
            batch = batch.to(device)
            # forces only when there are labels to compare with (not for IS2RE energies)
            forces = getattr(batch, "forces", None) is not None
            with torch.enable_grad():
                pred = net(batch, compute_forces=forces, compute_stress=False, training=False)
            pred = {k: v.detach() for k, v in pred.items() if isinstance(v, torch.Tensor)}
            acc.update(batch, pred)
            _collect(buf, batch, pred)
            if cfg.predictions:
                frames.extend(_to_frames(batch, pred))
        results[name] = acc.compute(oc20)
        predictions[name] = {k: _cat(v, k) for k, v in buf.items()}
        if cfg.predictions and frames:
            _write_frames(out / f"predictions_{_safe(name)}.extxyz", frames)
    atomic_write_json(out / "metrics.json", jsonable({"test": results,
                                                      "model": str(Path(model_path).resolve()),
                                                      "model_kind": info.get("kind")}))
    if cfg.plots:
        from forcefield.training.plots import write_parity_plots

        write_parity_plots(out, predictions)
    _echo(format_table(results, oc20=oc20))
    _echo(f"\nresults written to {out}")
    return 0


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _cat(parts: Sequence, key: str):
    import numpy as np

    if not parts:
        return np.zeros((0, 3) if key.startswith("f_") else (0,))
    return np.concatenate(parts)


def _collect(buf: dict, batch, pred: Mapping[str, torch.Tensor]) -> None:
    from forcefield.training.metrics import free_atom_mask

    if getattr(batch, "energy", None) is not None:
        buf["e_ref"].append(batch.energy.double().cpu().numpy().reshape(-1))
        buf["e_pred"].append(pred["energy"].double().cpu().numpy().reshape(-1))
        buf["natoms"].append(batch.natoms.cpu().numpy().reshape(-1))
    if getattr(batch, "forces", None) is not None:
        free = free_atom_mask(batch)
        buf["f_ref"].append(batch.forces[free].double().cpu().numpy())
        buf["f_pred"].append(pred["forces"][free].double().cpu().numpy())


def _to_frames(batch, pred: Mapping[str, torch.Tensor]) -> list:
    from ase.calculators.singlepoint import SinglePointCalculator

    from forcefield.data.atomic_data import to_ase

    frames = []
    ptr = batch.ptr.cpu().tolist()
    for i, data in enumerate(batch.cpu().to_data_list()):
        atoms = to_ase(data)
        atoms.calc = None
        if getattr(data, "energy", None) is not None:
            atoms.info["ref_energy"] = float(data.energy.reshape(-1)[0])
        if getattr(data, "forces", None) is not None:
            atoms.arrays["ref_forces"] = data.forces.double().numpy()
        results = {"energy": float(pred["energy"][i])}
        if "forces" in pred:
            results["forces"] = pred["forces"][ptr[i]:ptr[i + 1]].double().cpu().numpy()
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def _write_frames(path: Path, frames: list) -> None:
    from ase.io import write

    from forcefield.training.io import atomic_path

    with atomic_path(path, suffix=".extxyz") as tmp:
        write(tmp, frames, format="extxyz")
