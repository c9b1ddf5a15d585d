"""Float64 constant tables kept outside the state dict and cast once per (dtype, device).

Buffers would follow ``model.float()`` / ``model.double()`` and lose precision on a
float32 -> float64 round trip; exact quadrature tables must stay exact in float64.
"""

from __future__ import annotations

import torch

from forcefield import ops

__all__ = ["ConstantTables"]


class ConstantTables:
    def __init__(self, **tables: torch.Tensor) -> None:
        self._master = {k: torch.as_tensor(v).detach().to("cpu") for k, v in tables.items()}
        self._cache: dict[tuple[torch.dtype, torch.device], dict[str, torch.Tensor]] = {}

    def get(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (like.dtype, like.device)
        tables = self._cache.get(key)
        if tables is None:
            tables = {
                k: v.to(device=like.device, dtype=like.dtype if v.is_floating_point() else v.dtype)
                for k, v in self._master.items()
            }
            if not ops.is_tracing():  # a traced copy is not a tensor to keep
                self._cache[key] = tables
        return tables

    def __getstate__(self):
        return {"_master": self._master, "_cache": {}}

    def __deepcopy__(self, memo):
        return ConstantTables(**self._master)
