"""Small shared builders for tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import torch

#: A tiny float64 GauntMACE for C/H/N/O (3BPA elements) with realistic statistics.
TINY = {
    "name": "gaunt_mace_small",
    "species": [1, 6, 7, 8],
    "r_max": 4.0,
    "channels": 8,
    "lmax": 1,
    "lmax_sh": 2,
    "correlation": 2,
    "num_radial": 6,
    "radial_mlp": [16],
    "readout_mlp": 8,
    "avg_num_neighbors": 15.0,
    "e0s": {1: -13.587, 6: -1029.41, 7: -1484.87, 8: -2041.84},
    "energy_shift": -4.87,
    "energy_scale": 0.95,
}


def tiny_model(seed: int = 0, perturb: float = 0.05) -> torch.nn.Module:
    """The TINY model in float64, eval mode; ``perturb`` adds noise to every weight so
    that no part (zero-initialised readouts, the head's shift/scale) stays trivial."""
    from forcefield.models import build_model

    torch.manual_seed(seed)
    model = build_model(dict(TINY)).double()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    return model.eval()


def followed_by_nan(x: torch.Tensor | None) -> torch.Tensor | None:
    """A contiguous copy of ``x`` whose storage continues with NaN: what a kernel that reads
    past the end of its argument would see (such reads find NaN only sometimes in real runs:
    freed memory)."""
    if x is None:
        return None
    buffer = torch.full((x.numel() + 64,), float("nan"), dtype=x.dtype)
    buffer[: x.numel()] = x.reshape(-1)
    return buffer[: x.numel()].view(x.shape)
