"""Run-directory output: CSV metrics, plus the atomic writers of ``forcefield.atomic_io``."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from forcefield.atomic_io import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["atomic_path", "atomic_write_csv", "atomic_write_json", "atomic_write_text", "jsonable",
           "read_csv"]


def atomic_write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def jsonable(obj: Any) -> Any:
    """``obj`` with tensors, numpy scalars and non-finite floats made JSON-writable (None)."""
    import torch

    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
