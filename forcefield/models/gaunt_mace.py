"""GauntMACE: a MACE-style equivariant potential whose tensor products are all Gaunt products."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch_geometric.utils import scatter

from forcefield import so3
from forcefield.nn import (
    AtomicEnergyHead,
    DegreeLinear,
    GauntConvolution,
    GauntManyBodyProduct,
    LinearReadout,
    MLPReadout,
    RadialEmbedding,
    SpeciesEmbedding,
    SpeciesIndex,
)
from forcefield.nn.conservative import energy_derivatives, smootherstep, strained_geometry
from forcefield.nn.edge_pairs import edge_pairs

__all__ = ["GauntMACE", "DEFAULT_CONFIG"]

#: Every hyperparameter of the model with its default (``species`` has none: required).
DEFAULT_CONFIG: dict[str, Any] = {
    "architecture": "gaunt_mace",
    "name": "gaunt_mace",
    "species": None,
    "r_max": 5.0,
    "channels": 256,
    "lmax": 2,
    "lmax_sh": 3,
    "correlation": 3,
    "num_interactions": 2,
    "num_radial": 8,
    "radial_mlp": [64, 64, 64],
    "envelope_p": 5,
    "readout_mlp": 16,
    "gaunt_method": "auto",
    "avg_num_neighbors": 1.0,
    "e0s": {},
    "energy_shift": 0.0,
    "energy_scale": 1.0,
}


def _normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(
            f"unknown model config key(s) {unknown}; valid keys are {sorted(DEFAULT_CONFIG)}"
        )
    cfg = {**DEFAULT_CONFIG, **{k: v for k, v in config.items() if v is not None}}
    if not cfg["species"]:
        raise ValueError(
            "model config key 'species' is missing: give the atomic numbers the model handles "
            "(build_model fills it from the dataset statistics)"
        )
    cfg["species"] = sorted(int(z) for z in cfg["species"])
    for key in ("r_max", "avg_num_neighbors", "energy_shift", "energy_scale"):
        cfg[key] = float(cfg[key])
    for key in ("channels", "lmax", "lmax_sh", "correlation", "num_interactions", "num_radial",
                "envelope_p", "readout_mlp"):
        cfg[key] = int(cfg[key])
    cfg["radial_mlp"] = [int(w) for w in cfg["radial_mlp"]]
    cfg["e0s"] = {int(z): float(e) for z, e in dict(cfg["e0s"]).items()}
    cfg["gaunt_method"] = str(cfg["gaunt_method"])
    cfg["name"] = str(cfg["name"])
    if cfg["architecture"] != "gaunt_mace":
        raise ValueError(f"model.architecture={cfg['architecture']!r} does not match GauntMACE "
                         "('gaunt_mace')")
    if cfg["r_max"] <= 0:
        raise ValueError(f"model.r_max must be positive, got {cfg['r_max']}")
    if cfg["correlation"] < 1 or cfg["num_interactions"] < 1 or cfg["channels"] < 1:
        raise ValueError(
            "model.correlation, model.num_interactions and model.channels must be >= 1"
        )
    if cfg["avg_num_neighbors"] <= 0:
        raise ValueError(
            f"model.avg_num_neighbors must be positive, got {cfg['avg_num_neighbors']}"
        )
    return cfg


class GauntInteraction(nn.Module):
    """Convolution -> many-body product -> linear, plus a linear residual of the input."""

    def __init__(
        self, cfg: dict[str, Any], lmax_in: int, lmax_out: int, num_elements: int, residual: bool
    ):
        super().__init__()
        c, lmax = cfg["channels"], cfg["lmax"]
        self.conv = GauntConvolution(
            channels=c,
            lmax_in=lmax_in,
            lmax_sh=cfg["lmax_sh"],
            lmax_out=lmax,
            num_radial=cfg["num_radial"],
            radial_mlp=cfg["radial_mlp"],
            avg_num_neighbors=cfg["avg_num_neighbors"],
            method=cfg["gaunt_method"],
        )
        self.product = GauntManyBodyProduct(
            num_elements, c, lmax, lmax_out, cfg["correlation"], method=cfg["gaunt_method"]
        )
        self.linear = DegreeLinear(c, c, lmax_out, lmax_out)
        # No residual into the first layer's output: an atom without neighbours then has
        # all-zero features after the first interaction (isolated atom -> its E0 exactly).
        self.skip = DegreeLinear(c, c, lmax_in, lmax_out) if residual else None

    def forward(self, h, species_idx, radial, sh, sender, receiver, edge_slot=None):
        a = self.conv(h, radial, sh, sender, receiver, edge_slot)
        b = self.linear(self.product(a, species_idx))
        if self.skip is not None:
            b = b + self.skip(h)
        return b


class GauntMACE(nn.Module):
    """MACE architecture with Gaunt tensor products (see the README, "Model").

    ``GauntMACE(**config)``; ``model.config`` is the complete, JSON-serialisable config.
    The model's dtype is its parameters' dtype (``model.double()`` / ``model.float()``);
    inputs are cast inside ``forward``; energies are accumulated in float64.
    """

    def __init__(self, **config: Any):
        super().__init__()
        cfg = _normalise_config(config)
        self.config = cfg
        species = cfg["species"]
        n_el = len(species)
        c = cfg["channels"]
        self.r_max = cfg["r_max"]
        self.lmax_sh = cfg["lmax_sh"]
        self.species_index = SpeciesIndex(species)
        self.embedding = SpeciesEmbedding(n_el, c)
        self.radial_embedding = RadialEmbedding(cfg["r_max"], cfg["num_radial"], cfg["envelope_p"])
        t_max = cfg["num_interactions"]
        self.interactions = nn.ModuleList()
        self.readouts = nn.ModuleList()
        for t in range(t_max):
            lmax_in = 0 if t == 0 else cfg["lmax"]
            lmax_out = cfg["lmax"] if t < t_max - 1 else 0
            self.interactions.append(GauntInteraction(cfg, lmax_in, lmax_out, n_el, t > 0))
            if t < t_max - 1:
                self.readouts.append(LinearReadout(c))
            else:
                self.readouts.append(MLPReadout(c, cfg["readout_mlp"]))
        self.head = AtomicEnergyHead(
            [cfg["e0s"].get(z, 0.0) for z in species], cfg["energy_shift"], cfg["energy_scale"]
        )

    @classmethod
    def config_keys(cls) -> set[str]:
        """The valid model config keys."""
        return set(DEFAULT_CONFIG)

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def species(self) -> list[int]:
        return list(self.config["species"])

    def forward(
        self,
        data,
        compute_forces: bool = True,
        compute_stress: bool = False,
        training: bool = False,
    ) -> dict[str, torch.Tensor]:
        dtype = self.dtype
        pos = data.pos.to(dtype)
        n = pos.shape[0]
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=pos.device)
        cell = data.cell.to(dtype).reshape(-1, 3, 3)
        num_graphs = cell.shape[0]
        edge_index = data.edge_index
        receiver, sender = edge_index[0], edge_index[1]
        shifts = data.cell_shifts.to(dtype)
        species_idx = self.species_index(data.atomic_numbers)
        pairs = edge_pairs(sender, receiver, data.cell_shifts, n)

        need_grad = compute_forces or compute_stress or training
        ctx = torch.enable_grad() if need_grad else contextlib.nullcontext()
        with ctx:
            pos, pos_s, cell, inputs = strained_geometry(
                pos, cell, batch, num_graphs, pos_grad=compute_forces or compute_stress,
                stress=compute_stress)
            shift_vec = torch.einsum("ei,eij->ej", shifts, cell[batch[receiver]])
            vec = pos_s[sender] - pos_s[receiver] + shift_vec
            r = torch.linalg.vector_norm(vec, dim=-1, keepdim=True)
            sh = so3.spherical_harmonics(self.lmax_sh, vec) * math.sqrt(4 * math.pi)
            envelope = self.radial_embedding.envelope(r)
            if pairs is None:
                radial, edge_slot = self.radial_embedding.bessel(r) * envelope, None
            else:  # once per neighbour pair: both directions have the same length
                radial = self.radial_embedding.bessel(r[pairs.first]) * envelope[pairs.first]
                edge_slot = pairs.slot
            # "has neighbours" weight of the energy shift: smootherstep (C2) of the
            # envelope-weighted neighbour count, 0 for an isolated atom, exactly 1 from one
            # full neighbour on (every atom of a molecule or solid)
            coordination = scatter(envelope[:, 0], receiver, dim=0, dim_size=n, reduce="sum")
            shift_weight = smootherstep(coordination)

            h = self.embedding(species_idx).unsqueeze(-1)
            model_energy = torch.zeros(n, dtype=dtype, device=pos.device)
            for interaction, readout in zip(self.interactions, self.readouts, strict=False):
                h = interaction(h, species_idx, radial, sh, sender, receiver, edge_slot)
                model_energy = model_energy + readout(h[:, :, 0])
            node_energy = self.head(model_energy, species_idx, shift_weight)
            energy = scatter(node_energy, batch, dim=0, dim_size=num_graphs, reduce="sum")

            out: dict[str, torch.Tensor] = {"energy": energy, "node_energy": node_energy}
            out.update(energy_derivatives(energy, inputs, data.cell, forces=compute_forces,
                                          stress=compute_stress, training=training))
        if not training:
            out = {k: v.detach() for k, v in out.items()}
        return out
