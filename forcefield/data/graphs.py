"""Turn reader records into lists of :class:`AtomicData` graphs (with the bad-input policy)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from forcefield.data.atomic_data import AtomicData, check_finite, extract_labels
from forcefield.data.errors import DataError, where

OPTIONAL_KEYS = ("energy", "forces", "stress", "sid", "fid")
NAN_POLICIES = ("error", "skip")


def build_graphs(
    records: Iterable[tuple],
    r_max: float,
    *,
    required: Sequence[str] = ("energy", "forces"),
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    nan_policy: str = "error",
    backend: str = "vesin",
    name: str = "dataset",
    max_neighbors: int | None = None,
) -> list[AtomicData]:
    """Graphs for ``(atoms, source, index)`` records.

    ``nan_policy="error"`` raises on NaN/inf positions or labels naming the structure;
    ``"skip"`` drops such structures with a warning. ``max_neighbors`` caps each atom at
    its k nearest neighbours. Optional labels (stress, sid, fid)
    present in only some structures are dropped from all of them (with a warning) so that
    batches collate. An empty result raises :class:`DataError`.
    """
    if nan_policy not in NAN_POLICIES:
        raise DataError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}.")
    graphs: list[AtomicData] = []
    skipped: list[str] = []
    for atoms, source, index in records:
        labels = extract_labels(atoms, energy_key, forces_key, stress_key, required=required,
                                source=source, index=index)
        bad = check_finite(atoms, labels)
        if bad is not None:
            msg = f"{where(source, index)} has non-finite (NaN/inf) {bad}"
            if nan_policy == "skip":
                skipped.append(msg)
                continue
            raise DataError(msg + "; fix or remove that structure, or pass nan_policy='skip' "
                            "to drop such structures with a warning.")
        graphs.append(AtomicData.from_ase(
            atoms, r_max, energy_key=energy_key, forces_key=forces_key, stress_key=stress_key,
            backend=backend, source=source, index=index, check_labels=False,
            max_neighbors=max_neighbors))
    if skipped:
        warnings.warn(f"{name}: skipped {len(skipped)} structure(s) with non-finite values: "
                      + "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
                      stacklevel=2)
    if not graphs:
        raise DataError(f"{name} is empty (no structures left after reading"
                        f"{' and skipping non-finite ones' if skipped else ''}); "
                        "check the data sources and split settings.")
    harmonise_keys(graphs, name)
    return graphs


def harmonise_keys(graphs: list[AtomicData], name: str = "dataset") -> None:
    """Drop optional keys that only some graphs carry, so every batch collates."""
    for key in OPTIONAL_KEYS:
        have = sum(1 for g in graphs if key in g)
        if 0 < have < len(graphs):
            if key in ("energy", "forces"):
                raise DataError(f"{name}: only {have} of {len(graphs)} structures have {key} "
                                "labels; label all of them or none.")
            warnings.warn(f"{name}: only {have} of {len(graphs)} structures have '{key}'; "
                          "dropping it from all of them.", stacklevel=3)
            for g in graphs:
                if key in g:
                    del g[key]
