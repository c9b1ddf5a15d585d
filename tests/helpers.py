"""Small shared builders for tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import functools

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


#: elements of the shared tiny model: 3BPA's and those of the OC20 slab in ../shared/data
SLAB_SPECIES = (1, 6, 7, 8, 13, 29, 34)


#: A one-block float64 GauntEquiformerV2 (Selfmix, gradient forces) for C/H/N/O.
TINY_EQV2 = {
    "architecture": "gaunt_equiformer_v2", "name": "gaunt_equiformer_v2_small",
    "species": [1, 6, 7, 8], "r_max": 4.0, "num_layers": 1, "channels": 8, "lmax": 2,
    "mmax": 1, "heads": 2, "attn_hidden": 8, "alpha_channels": 4, "value_channels": 4,
    "ffn_hidden": 8, "edge_channels": 8, "num_radial": 8, "avg_num_neighbors": 10.0,
    "e0s": {1: -13.6, 6: -1029.4, 7: -1484.9, 8: -2041.8}, "energy_shift": -1.0,
    "energy_scale": 1.0, "forces": "gradient",
}


def trained_tiny_model(species: tuple[int, ...] = (1, 6, 7, 8), steps: int = 30,
                       seed: int = 0, architecture: str = "gaunt_mace",
                       **changes) -> torch.nn.Module:
    """A tiny model (TINY, or TINY_EQV2 for ``architecture="gaunt_equiformer_v2"``, with
    ``species`` and ``changes``) after ``steps`` Adam steps on energies and forces of ten
    3BPA structures: weights that have learned something, in float64, eval mode.  Weights
    of elements 3BPA lacks get a small perturbation, so that no part stays at its initial
    value.  Trained once per session and arguments; each call returns its own copy."""
    import copy

    key = tuple(sorted(changes.items()))
    return copy.deepcopy(_trained_tiny_model(tuple(species), steps, seed, architecture, key))


@functools.cache
def _trained_tiny_model(species: tuple[int, ...], steps: int, seed: int, architecture: str,
                        changes: tuple) -> torch.nn.Module:
    from pathlib import Path

    import ase.io
    from torch_geometric.data import Batch

    from forcefield.data import AtomicData
    from forcefield.models import build_model

    torch.manual_seed(seed)
    base = TINY_EQV2 if architecture == "gaunt_equiformer_v2" else TINY
    config = dict(base, species=list(species), **dict(changes))
    config["e0s"] = {z: base["e0s"].get(z, -1.0) for z in species}
    model = build_model(config).double()
    if architecture == "gaunt_equiformer_v2":  # its readouts start near zero
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    data_file = Path(__file__).resolve().parents[1] / "data" / "3bpa" / "train_300K.xyz"
    frames = ase.io.read(data_file, ":10")
    graphs = [AtomicData.from_ase(a, r_max=config["r_max"], check_labels=False)
              for a in frames]
    batch = Batch.from_data_list(graphs)
    energy = torch.tensor([a.get_potential_energy() for a in frames], dtype=torch.float64)
    forces = torch.cat([torch.as_tensor(a.get_forces()) for a in frames])
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        out = model(batch, compute_forces=True, training=True)
        loss = ((out["energy"] - energy) ** 2).mean() / 27 + ((out["forces"] - forces) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def packed_box(grid=(3, 3, 4)):
    """The periodic box of randomly rotated 3BPA molecules of scripts/bench_md.py (972
    atoms for the default grid)."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_md.py"
    return runpy.run_path(str(script))["packed_box"](grid=grid)


def rewrite_pt2_metadata(source, output, **changes):
    """A copy of the ``.pt2`` package ``source`` at ``output`` with metadata entries changed
    (both copies: the C++ loader reads the kernel's, Python the wrapper's)."""
    import json
    import zipfile

    with zipfile.ZipFile(source) as old, zipfile.ZipFile(output, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename.endswith("_metadata.json"):
                data = json.dumps({**json.loads(data), **changes}).encode()
            new.writestr(item, data)
    return output
