"""GauntEquiformerV2: EquiformerV2 (OC20) with a Gaunt Selfmix sub-layer in every block.

Node features [N, C, (lmax+1)^2] (real SH, e3nn order).  Each block:

    x = x + DropPath(GraphAttention(norm_1(x)))        SO(2) attention over edge frames
    x = x + DropPath(GauntSelfmix(norm_3(x)))          only with selfmix=True
    x = x + DropPath(GridFeedForward(norm_2(x)))

then a final norm, an energy head (grid FFN -> one scalar per atom -> per-element E0,
shift and scale in float64, summed per structure) and, with ``forces="direct"``, a force
head (an attention block with one output channel whose degree-1 coefficients are the
force).  ``forces="gradient"``: F = -dE/dx and stress from the strain derivative.

What the original lacks and this model adds for a smooth energy: the cutoff envelope on the
edge features' contributions (edge-degree embedding and attention values) and inside the
attention softmax, exact angle-free Wigner-D matrices with a deterministic frame, and no
neighbour cap unless ``max_neighbors`` is set.  See shared notes/equiformer_v2.md.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch_geometric.utils import scatter

from forcefield import ops
from forcefield.nn import (
    AtomicEnergyHead,
    DropPath,
    EdgeDegreeEmbedding,
    EdgeRotation,
    EquivariantLayerNorm,
    GauntSelfmix,
    GaussianBasis,
    GraphAttention,
    GridFeedForward,
    PolynomialEnvelope,
    SpeciesIndex,
    default_grid_degree,
)
from forcefield.nn.conservative import energy_derivatives, smootherstep, strained_geometry

__all__ = ["GauntEquiformerV2", "nearest_neighbours"]

FORCE_MODES = ("direct", "gradient")


def edge_embedding(num_elements: int, channels: int) -> nn.Embedding:
    """An element embedding for edge features, uniform in +-1e-3 as EquiformerV2's: next to
    Gaussians in [0, 1] it starts as a small correction, not the radial MLP's main input."""
    embedding = nn.Embedding(num_elements, channels)
    nn.init.uniform_(embedding.weight, -1e-3, 1e-3)
    return embedding


def nearest_neighbours(r: torch.Tensor, receiver: torch.Tensor, num_nodes: int,
                       k: int) -> torch.Tensor:
    """Mask of the edges among the ``k`` shortest of each receiver (ties: by edge order)."""
    order = torch.argsort(r, stable=True)
    order = order[torch.argsort(receiver[order], stable=True)]
    counts = torch.bincount(receiver, minlength=num_nodes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=r.device) - starts[receiver[order]]
    return rank < k


def _quadrature(sphere_grid: str) -> str:
    """The grid-MLP quadrature of a ``sphere_grid`` choice."""
    return "e3nn" if sphere_grid == "fairchem" else "gauss_legendre"


class EquiformerBlock(nn.Module):
    """Attention, optional Gaunt selfmix and grid FFN, each pre-normed with a residual."""

    def __init__(self, *, channels: int, lmax: int, mmax: int, heads: int, attn_hidden: int,
                 alpha_channels: int, value_channels: int, ffn_hidden: int,
                 edge_features: int, edge_channels: int, num_elements: int, grid_degree: int,
                 selfmix: bool, gaunt_method: str, alpha_drop: float, drop_path: float,
                 parity: bool, grid_normalization: str = "integral",
                 ffn_grid_degree: int | None = None, sphere_grid: str = "gauss_legendre"):
        super().__init__()
        self.source_embedding = edge_embedding(num_elements, edge_channels)
        self.target_embedding = edge_embedding(num_elements, edge_channels)
        self.norm_attention = EquivariantLayerNorm(channels, lmax)
        self.attention = GraphAttention(
            channels=channels, channels_out=channels, lmax=lmax, mmax=mmax, hidden=attn_hidden,
            heads=heads, alpha_channels=alpha_channels, value_channels=value_channels,
            edge_features=edge_features + 2 * edge_channels,
            radial_hidden=[edge_channels, edge_channels], grid_degree=grid_degree,
            alpha_drop=alpha_drop, parity=parity, sphere_grid=sphere_grid)
        self.norm_selfmix = EquivariantLayerNorm(channels, lmax) if selfmix else None
        self.selfmix = GauntSelfmix(channels, lmax, method=gaunt_method) if selfmix else None
        self.norm_ffn = EquivariantLayerNorm(channels, lmax)
        self.ffn = GridFeedForward(channels, ffn_hidden, channels, lmax,
                                   ffn_grid_degree or grid_degree, grid_normalization,
                                   quadrature=_quadrature(sphere_grid))
        self.drop_path = DropPath(drop_path)

    def forward(self, x, rbf, species_idx, rotation, wigner, envelope, sender, receiver, batch,
                num_graphs):
        edge = torch.cat([rbf, self.source_embedding(species_idx[sender]),
                          self.target_embedding(species_idx[receiver])], dim=-1)
        y = self.attention(self.norm_attention(x), edge, rotation, wigner, envelope, sender,
                           receiver)
        x = x + self.drop_path(y, batch, num_graphs)
        if self.selfmix is not None:
            x = x + self.drop_path(self.selfmix(self.norm_selfmix(x)), batch, num_graphs)
        return x + self.drop_path(self.ffn(self.norm_ffn(x)), batch, num_graphs)


class GauntEquiformerV2(nn.Module):
    """EquiformerV2 with Gaunt Selfmix (see the module docstring); ``model.config`` holds
    the complete, JSON-serialisable constructor arguments.

    Args (keyword only; this signature is the config schema, the presets are
    conf/model/gaunt_equiformer_v2*.yaml):
        species: atomic numbers the model handles (required; filled from the data).
        r_max: cutoff radius (A).  max_neighbors: keep only the nearest per atom (None: all;
            a cap makes the energy discontinuous, use None for MD).
        num_layers: blocks.  channels: sphere channels C.  lmax, mmax: degrees, edge orders.
        heads, attn_hidden, alpha_channels, value_channels: attention sizes.
        ffn_hidden: grid-MLP width.  edge_channels: radial MLP width and element
            embeddings of edges.  num_radial: Gaussians on [0, r_max].
        grid_degree: quadrature degree of the S2 activations (None: max(3 lmax + 2, 18)); larger is
            more nearly equivariant and slower.
        ffn_grid_degree: quadrature degree of the grid MLPs (the feed-forward networks and
            the energy head; None: grid_degree, what files without the key used).  Their
            aliasing is most of a trained model's rotation error (docs/equiformer_v2.md):
            18 -> 30 at lmax 4 lowered it 10-100x for ~10 % more time.
        grid_normalization: grid values of the grid MLPs, "integral" (orthonormal
            harmonics, the default: what files without the key used) or "component" (unit
            variance, EquiformerV2's; the presets use it).
        sphere_grid: "gauss_legendre" (ours, the default) or "fairchem": every sphere grid
            is fairchem's ``SO3_Grid`` (e3nn's grid of grid_degree x grid_degree points, i.e.
            grid_degree is fairchem's ``grid_resolution``; the edge activation with e3nn's
            "component" factors and the m-truncation rescale on both projections); needs
            grid_normalization="component".  For weights ported from fairchem.
        cutoff_envelope: multiply edge terms by the smooth cutoff envelope (True, ours) or
            not (False: EquiformerV2's, edges count fully up to r_max; the energy then
            jumps when a neighbour crosses the cutoff).
        edge_degree_normalization: divisor of the edge-degree embedding (None:
            avg_num_neighbors, at most max_neighbors; fairchem uses the constant 23.395).
        selfmix: the Gaunt Selfmix sub-layer (False: plain EquiformerV2).
        parity: real SO(2) weights, so the energy is invariant under reflections (a physical
            potential's must be); False: EquiformerV2's complex weights (chiral).
        gaunt_method: so3 product method for the selfmix.
        forces: "direct" (force head) or "gradient" (-dE/dx, conservative, stress).
        alpha_drop, drop_path: regularisation (training only).
        force_alpha_drop: attention dropout of the direct force head (EquiformerV2's: 0).
        envelope_p: exponent of the polynomial cutoff envelope.
        avg_num_neighbors: normalisation of the edge-degree embedding.
        e0s, energy_shift, energy_scale: per-element energies (eV), per-atom shift (eV) and
            scale (eV, also the force unit of the direct head), from the data statistics.
    """

    def __init__(
        self, *,
        species: list[int] | None = None,
        architecture: str = "gaunt_equiformer_v2",
        name: str = "gaunt_equiformer_v2",
        r_max: float = 12.0,
        max_neighbors: int | None = None,
        num_layers: int = 12,
        channels: int = 128,
        lmax: int = 6,
        mmax: int = 2,
        heads: int = 8,
        attn_hidden: int = 64,
        alpha_channels: int = 64,
        value_channels: int = 16,
        ffn_hidden: int = 128,
        edge_channels: int = 128,
        num_radial: int = 128,
        grid_degree: int | None = None,
        ffn_grid_degree: int | None = None,
        grid_normalization: str = "integral",
        sphere_grid: str = "gauss_legendre",
        cutoff_envelope: bool = True,
        edge_degree_normalization: float | None = None,
        selfmix: bool = True,
        parity: bool = True,
        gaunt_method: str = "auto",
        forces: str = "direct",
        alpha_drop: float = 0.1,
        force_alpha_drop: float = 0.0,
        drop_path: float = 0.05,
        envelope_p: int = 5,
        avg_num_neighbors: float = 1.0,
        e0s: dict[int, float] | None = None,
        energy_shift: float = 0.0,
        energy_scale: float = 1.0,
    ):
        super().__init__()
        if architecture != "gaunt_equiformer_v2":
            raise ValueError(f"model.architecture={architecture!r} does not match "
                             "GauntEquiformerV2 ('gaunt_equiformer_v2')")
        if not species:
            raise ValueError("model config key 'species' is missing: give the atomic numbers "
                             "the model handles (build_model fills it from the data statistics)")
        if forces not in FORCE_MODES:
            raise ValueError(f"model.forces={forces!r} is not supported; use 'direct' or "
                             "'gradient'")
        lmax, mmax = int(lmax), int(mmax)
        if lmax < 1 or not 0 <= mmax <= lmax:
            raise ValueError(f"model.lmax must be >= 1 and model.mmax in [0, lmax]; got "
                             f"lmax={lmax}, mmax={mmax}")
        for key, value in (("num_layers", num_layers), ("channels", channels),
                           ("heads", heads), ("num_radial", num_radial)):
            if int(value) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {value}")
        if float(r_max) <= 0 or float(avg_num_neighbors) <= 0:
            raise ValueError("model.r_max and model.avg_num_neighbors must be positive")
        if max_neighbors is not None and int(max_neighbors) < 1:
            raise ValueError(f"model.max_neighbors must be >= 1 or null, got {max_neighbors}")
        grid = default_grid_degree(lmax) if grid_degree is None else int(grid_degree)
        if sphere_grid not in ("gauss_legendre", "fairchem"):
            raise ValueError(f"model.sphere_grid={sphere_grid!r} is not supported; use "
                             "'gauss_legendre' or 'fairchem'")
        if sphere_grid == "fairchem":
            if grid_normalization != "component":
                raise ValueError("model.sphere_grid='fairchem' needs "
                                 "model.grid_normalization='component' (fairchem's grids)")
            for key, value in (("grid_degree", grid), ("ffn_grid_degree", ffn_grid_degree)):
                if value is not None and (int(value) % 2 or int(value) < 2 * (lmax + 1)):
                    raise ValueError(f"model.{key}={value} is not an e3nn grid resolution for "
                                     f"lmax {lmax}: use an even number >= {2 * (lmax + 1)}")
        if edge_degree_normalization is not None and float(edge_degree_normalization) <= 0:
            raise ValueError("model.edge_degree_normalization must be positive or null, got "
                             f"{edge_degree_normalization}")
        for key, value in (("grid_degree", grid), ("ffn_grid_degree", ffn_grid_degree)):
            # below 2 lmax the grid cannot even hold the features (to/from is not identity)
            if value is not None and int(value) < 2 * lmax:
                raise ValueError(f"model.{key}={value} is below 2 lmax = {2 * lmax}; use "
                                 f"at least {2 * lmax} (null: the default)")
        self.config: dict[str, Any] = {
            "architecture": "gaunt_equiformer_v2", "name": str(name),
            "species": sorted(int(z) for z in species), "r_max": float(r_max),
            "max_neighbors": None if max_neighbors is None else int(max_neighbors),
            "num_layers": int(num_layers), "channels": int(channels), "lmax": lmax,
            "mmax": mmax, "heads": int(heads), "attn_hidden": int(attn_hidden),
            "alpha_channels": int(alpha_channels), "value_channels": int(value_channels),
            "ffn_hidden": int(ffn_hidden), "edge_channels": int(edge_channels),
            "num_radial": int(num_radial), "grid_degree": grid,
            "ffn_grid_degree": None if ffn_grid_degree is None else int(ffn_grid_degree),
            "grid_normalization": str(grid_normalization), "sphere_grid": str(sphere_grid),
            "cutoff_envelope": bool(cutoff_envelope),
            "edge_degree_normalization": (None if edge_degree_normalization is None
                                          else float(edge_degree_normalization)),
            "selfmix": bool(selfmix),
            "parity": bool(parity),
            "gaunt_method": str(gaunt_method), "forces": str(forces),
            "alpha_drop": float(alpha_drop), "force_alpha_drop": float(force_alpha_drop),
            "drop_path": float(drop_path),
            "envelope_p": int(envelope_p), "avg_num_neighbors": float(avg_num_neighbors),
            "e0s": {int(z): float(e) for z, e in dict(e0s or {}).items()},
            "energy_shift": float(energy_shift), "energy_scale": float(energy_scale),
        }
        cfg = self.config
        self.r_max, self.forces, self.max_neighbors = cfg["r_max"], forces, cfg["max_neighbors"]
        n_el, c = len(cfg["species"]), cfg["channels"]
        self.species_index = SpeciesIndex(cfg["species"])
        self.embedding = nn.Embedding(n_el, c)
        self.envelope = PolynomialEnvelope(cfg["r_max"], cfg["envelope_p"])
        self.rbf = GaussianBasis(cfg["r_max"], cfg["num_radial"])
        self.rotation = EdgeRotation(lmax, mmax)
        ec = cfg["edge_channels"]
        self.degree_source_embedding = edge_embedding(n_el, ec)
        self.degree_target_embedding = edge_embedding(n_el, ec)
        # the data statistics count neighbours without the cap; the model sees at most the cap
        degree = cfg["avg_num_neighbors"]
        if self.max_neighbors is not None:
            degree = min(degree, float(self.max_neighbors))
        if cfg["edge_degree_normalization"] is not None:
            degree = cfg["edge_degree_normalization"]
        self.edge_degree = EdgeDegreeEmbedding(c, lmax, cfg["num_radial"] + 2 * ec, [ec, ec],
                                               degree)
        common = dict(channels=c, lmax=lmax, mmax=mmax, heads=cfg["heads"],
                      attn_hidden=cfg["attn_hidden"], alpha_channels=cfg["alpha_channels"],
                      value_channels=cfg["value_channels"], grid_degree=grid)
        self.blocks = nn.ModuleList(
            EquiformerBlock(**common, ffn_hidden=cfg["ffn_hidden"],
                            edge_features=cfg["num_radial"], edge_channels=ec,
                            num_elements=n_el, selfmix=cfg["selfmix"],
                            gaunt_method=cfg["gaunt_method"], alpha_drop=cfg["alpha_drop"],
                            drop_path=cfg["drop_path"], parity=cfg["parity"],
                            grid_normalization=cfg["grid_normalization"],
                            ffn_grid_degree=cfg["ffn_grid_degree"],
                            sphere_grid=cfg["sphere_grid"])
            for _ in range(cfg["num_layers"]))
        self.norm = EquivariantLayerNorm(c, lmax)
        self.energy_ffn = GridFeedForward(c, cfg["ffn_hidden"], 1, lmax,
                                          cfg["ffn_grid_degree"] or grid,
                                          cfg["grid_normalization"],
                                          quadrature=_quadrature(cfg["sphere_grid"]))
        # zero energy readout at initialisation: the untrained model predicts E0 + shift
        nn.init.zeros_(self.energy_ffn.linear_out.weight)
        self.head = AtomicEnergyHead([cfg["e0s"].get(z, 0.0) for z in cfg["species"]],
                                     cfg["energy_shift"], cfg["energy_scale"])
        self.force_head = None
        if forces == "direct":
            self.force_source_embedding = edge_embedding(n_el, ec)
            self.force_target_embedding = edge_embedding(n_el, ec)
            self.force_head = GraphAttention(
                channels=c, channels_out=1, lmax=lmax, mmax=mmax, hidden=cfg["attn_hidden"],
                heads=cfg["heads"], alpha_channels=cfg["alpha_channels"],
                value_channels=cfg["value_channels"],
                edge_features=cfg["num_radial"] + 2 * ec, radial_hidden=[ec, ec],
                grid_degree=grid, alpha_drop=cfg["force_alpha_drop"], parity=cfg["parity"],
                sphere_grid=cfg["sphere_grid"])

    @classmethod
    def config_keys(cls) -> set[str]:
        """The valid model config keys (the constructor's arguments)."""
        import inspect

        return set(inspect.signature(cls.__init__).parameters) - {"self"}

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def species(self) -> list[int]:
        return list(self.config["species"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # fine-tuning a direct-force model with gradient forces: its force head is dropped
        if self.force_head is None:
            for key in [k for k in state_dict if k.startswith(prefix + "force_")]:
                del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, data, compute_forces: bool = True, compute_stress: bool = False,
                training: bool = False) -> dict[str, torch.Tensor]:
        dtype = self.dtype
        pos = data.pos.to(dtype)
        n = pos.shape[0]
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=pos.device)
        cell = data.cell.to(dtype).reshape(-1, 3, 3)
        num_graphs = cell.shape[0]
        receiver, sender = data.edge_index[0], data.edge_index[1]
        shifts = data.cell_shifts.to(dtype)
        species_idx = self.species_index(data.atomic_numbers)
        gradient = self.forces == "gradient"
        grad_forces = gradient and compute_forces
        need_grad = grad_forces or compute_stress or training
        ctx = torch.enable_grad() if need_grad else contextlib.nullcontext()
        with ctx:
            pos, pos_s, cell, inputs = strained_geometry(pos, cell, batch, num_graphs,
                                                         pos_grad=grad_forces,
                                                         stress=compute_stress)
            shift_vec = torch.einsum("ei,eij->ej", shifts, cell[batch[receiver]])
            vec = pos_s[sender] - pos_s[receiver] + shift_vec
            r = torch.linalg.vector_norm(vec, dim=-1)
            keep = r < self.r_max
            # traced: the caller's neighbour list is the cutoff's and the cap's (a graph of
            # free edge count cannot select edges by value; forcefield.traced documents it)
            if self.max_neighbors is not None and not ops.is_tracing():
                keep = keep & nearest_neighbours(r.detach(), receiver, n, self.max_neighbors)
            if not ops.is_tracing() and not bool(keep.all()):
                vec, r, sender, receiver = vec[keep], r[keep], sender[keep], receiver[keep]
            if self.config["cutoff_envelope"]:
                envelope = self.envelope(r)
            else:  # EquiformerV2's: every kept edge counts fully
                envelope = torch.ones_like(r)
            rbf = self.rbf(r.unsqueeze(-1))
            wigner = self.rotation(vec)
            coordination = scatter(envelope, receiver, dim=0, dim_size=n, reduce="sum")
            shift_weight = smootherstep(coordination)

            k = (self.config["lmax"] + 1) ** 2
            x = nn.functional.pad(self.embedding(species_idx).unsqueeze(-1), (0, k - 1))
            edge = torch.cat([rbf, self.degree_source_embedding(species_idx[sender]),
                              self.degree_target_embedding(species_idx[receiver])], dim=-1)
            x = x + self.edge_degree(edge, self.rotation, wigner, envelope, receiver, n)
            for block in self.blocks:
                x = block(x, rbf, species_idx, self.rotation, wigner, envelope, sender,
                          receiver, batch, num_graphs)
            x = self.norm(x)
            node_scalar = self.energy_ffn(x)[:, 0, 0]
            node_energy = self.head(node_scalar, species_idx, shift_weight)
            energy = scatter(node_energy, batch, dim=0, dim_size=num_graphs, reduce="sum")
            out: dict[str, torch.Tensor] = {"energy": energy, "node_energy": node_energy}
            if compute_forces and not gradient:
                edge = torch.cat([rbf, self.force_source_embedding(species_idx[sender]),
                                  self.force_target_embedding(species_idx[receiver])], dim=-1)
                f = self.force_head(x, edge, self.rotation, wigner, envelope, sender, receiver)
                # degree 1 in e3nn order is (x, y, z): the force vector
                out["forces"] = f[:, 0, 1:4].to(torch.float64) * self.head.scale
            out.update(energy_derivatives(energy, inputs, data.cell, forces=grad_forces,
                                          stress=compute_stress, training=training))
        if not training:
            out = {k: v.detach() for k, v in out.items()}
        return out
