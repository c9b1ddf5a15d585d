"""Replay against forgetting: ``finetune.replay`` mixes original training data into every
epoch of a fine-tune (as MACE's multihead fine-tuning replays its foundation data).

Each epoch sees every structure of the new data and a fresh seeded draw of replay
structures, so that they make up ``finetune.replay_fraction`` of the epoch; the draw is a
pure function of (seed, epoch), so a resumed run sees the same batches. A few replay
structures (``finetune.replay_holdout``) never train: the fine-tuned model's error on them
is the "original distribution" error reported at the end of the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from forcefield.errors import ConfigError

BASE = "base"
"""``finetune.replay=base``: the training data recorded in the model file's metadata."""


def replay_sources(value: Any, init_from: str) -> list[str]:
    """The replay sources of ``finetune.replay`` (``base``: the model file's own training
    data, recorded by ``forcefield train`` in its metadata as ``training_data``)."""
    if value is None:
        return []
    if isinstance(value, str) and value == BASE:
        from forcefield.model_files import read_any

        kind, raw = read_any(init_from)
        meta = raw.get("metadata") or {} if kind == "model" else {}
        sources = meta.get("training_data")
        if not sources:
            raise ConfigError(
                f"finetune.replay=base: {init_from} records no training data (only model "
                "files written by forcefield train do, and only of in-memory data); give the "
                "original training data as finetune.replay=PATH")
        return [str(s) for s in sources]
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [str(v) for v in value]
    raise ConfigError(f"finetune.replay must be a path, a list of paths or 'base', got "
                      f"{value!r}")


def check_fraction(fraction: Any) -> float:
    """``finetune.replay_fraction`` as a float in (0, 1), else one sentence."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise ConfigError(f"finetune.replay_fraction={fraction!r} must be between 0 and 1 "
                          "(the share of each epoch drawn from the replay data), e.g. 0.25")
    return value


def load_replay(sources: Sequence[str], r_max: float, species: Sequence[int],
                label: str) -> list:
    """Graphs of the replay data; elements the model does not know are one sentence."""
    from forcefield.data.elements import element_names, symbol_list, unknown_elements
    from forcefield.data.errors import DataError
    from forcefield.data.graphs import build_graphs
    from forcefield.data.readers import iter_records

    try:
        graphs = build_graphs(iter_records(list(sources)), r_max, name=f"{label} replay data")
    except (DataError, FileNotFoundError) as exc:
        raise ConfigError(f"finetune.replay={label}: {exc}") from exc
    unknown = unknown_elements(graphs, species)
    if unknown:
        raise ConfigError(
            f"finetune.replay={label}: the replay data contains {element_names(unknown)}, "
            f"which the model does not know (it knows {symbol_list(species)}); replay the "
            "model's own training data (finetune.replay=base or its files) or leave "
            "finetune.replay out")
    return graphs


def split_holdout(graphs: list, n_holdout: int, seed: int) -> tuple[list, list]:
    """(replayed, held out): a seeded ``n_holdout`` structures never train (at most half)."""
    n = min(max(0, int(n_holdout)), len(graphs) // 2)
    perm = np.random.default_rng(seed + 7).permutation(len(graphs))
    held = sorted(perm[:n].tolist())
    kept = sorted(perm[n:].tolist())
    return [graphs[i] for i in kept], [graphs[i] for i in held]


def replay_count(n_new: int, n_replay: int, fraction: float) -> int:
    """Replay structures per epoch, so that they are ``fraction`` of it (at most all)."""
    return min(n_replay, max(1, round(fraction / (1.0 - fraction) * n_new)))


class ReplayBatchSampler(Sampler[list[int]]):
    """Batches of indices into ``new + replay`` (the replay indices follow the new ones):
    every new structure once per epoch, plus a seeded draw of :func:`replay_count` replay
    structures, shuffled together. DDP-aware itself (``set_distributed``), as the loaders
    of the run keep a batch sampler unchanged."""

    def __init__(self, n_new: int, n_replay: int, fraction: float, batch_size: int,
                 seed: int = 0) -> None:
        self.n_new, self.n_replay = int(n_new), int(n_replay)
        self.per_epoch = replay_count(self.n_new, self.n_replay, fraction)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.world, self.rank = 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_distributed(self, world_size: int, rank: int) -> None:
        self.world, self.rank = int(world_size), int(rank)

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        drawn = self.n_new + rng.choice(self.n_replay, self.per_epoch, replace=False)
        order = rng.permutation(np.concatenate([np.arange(self.n_new), drawn]))
        return [order[i:i + self.batch_size].tolist()
                for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        per_rank = math.ceil(len(batches) / self.world)
        batches += batches[: per_rank * self.world - len(batches)]  # same count on each rank
        yield from batches[self.rank::self.world]

    def __len__(self) -> int:
        n = self.n_new + self.per_epoch
        return math.ceil(math.ceil(n / self.batch_size) / self.world)


def with_replay(loader: DataLoader, replay: list, fraction: float, seed: int) -> DataLoader:
    """The training loader of in-memory ``loader.dataset`` with ``replay`` mixed in."""
    from forcefield.data.streaming import collate_graphs

    data = getattr(loader, "dataset", None)
    if not isinstance(data, list) or getattr(loader, "batch_size", None) is None:
        raise ConfigError("finetune.replay needs in-memory training data with a fixed "
                          "data.batch_size (not streamed, not data.max_atoms)")
    sampler = ReplayBatchSampler(len(data), len(replay), fraction, int(loader.batch_size),
                                 seed)
    return DataLoader(data + list(replay), batch_sampler=sampler, collate_fn=collate_graphs,
                      num_workers=0)


def errors(model: torch.nn.Module, graphs: list, batch_size: int = 20) -> dict[str, float]:
    """Energy and force errors of ``model`` on ``graphs`` (the metrics.json names)."""
    from forcefield.data.streaming import collate_graphs
    from forcefield.training.metrics import MetricAccumulator, _num_atoms

    acc = MetricAccumulator()
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    shift, count = 0.0, 0  # the signed mean per-atom energy error: an offset, not noise
    for start in range(0, len(graphs), batch_size):
        batch = collate_graphs(graphs[start:start + batch_size]).to(param.device)
        with torch.enable_grad():
            out = model(batch, compute_forces=True, compute_stress=False, training=False)
        pred = {k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor)}
        acc.update(batch, pred)
        if getattr(batch, "energy", None) is not None:
            diff = (pred["energy"].double().reshape(-1) - batch.energy.double().reshape(-1))
            shift += float((diff / _num_atoms(batch)).sum())
            count += int(diff.numel())
    model.train(was_training)
    result = acc.compute()
    if count:
        result["energy_per_atom_mean_error_meV"] = 1000.0 * shift / count
    return result


def report(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]
           ) -> str:
    """Lines ``<split>: forces RMSE a -> b meV/A, energy RMSE c -> d meV`` for each split."""
    lines = []
    for name, new in after.items():
        old = before.get(name, {})
        parts = []
        for key, text, unit in (("forces_rmse_meV_A", "forces RMSE", "meV/A"),
                                ("energy_rmse_meV", "energy RMSE", "meV")):
            if key in new:
                start = f"{old[key]:.1f} -> " if key in old else ""
                parts.append(f"{text} {start}{new[key]:.1f} {unit}")
        lines.append(f"  {name}: " + ", ".join(parts))
    return "\n".join(lines)


__all__ = ["BASE", "ReplayBatchSampler", "check_fraction", "errors", "load_replay",
           "replay_count", "replay_sources", "report", "split_holdout", "with_replay"]
