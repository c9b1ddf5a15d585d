"""Weights from fairchem's EquiformerV2 (fairchem-core 1.x) into GauntEquiformerV2.

``from_fairchem_equiformer_v2(checkpoint)`` maps every parameter of a fairchem EquiformerV2
(the hydra layout, backbone + energy and force heads, or the older single-model layout)
onto a GauntEquiformerV2 with ``parity=False, selfmix=False`` and the fairchem switches:
``sphere_grid="fairchem"`` (e3nn's grids, as fairchem's ``SO3_Grid``),
``cutoff_envelope=False``, ``edge_degree_normalization=avg_degree``, 600 Gaussians, and the
energy head's division by ``avg_num_nodes`` folded into its last layer.  The result
predicts what fairchem's model module returns (the trainer's normalisers are not
applied).  What differs and stays so: fairchem rolls each edge frame by a random vector
on every call (outputs move at the level of the grid aliasing, ~1e-5 relative), ours is
deterministic; tests/test_port_fairchem.py fixes fairchem's roll to ours and finds the
same energy and forces to 1e-6 relative in float64.

A checkpoint whose options this model cannot reproduce exactly is refused with one
sentence that names the option.  No fairchem import: only tensors and the config dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from forcefield.errors import ForceFieldError

from .gaunt_equiformer_v2 import GauntEquiformerV2

__all__ = ["FairchemPortError", "from_fairchem_equiformer_v2", "fairchem_model_config",
           "to_fairchem_state_dict"]

#: fairchem-core 1.10's EquiformerV2Backbone defaults for the options the port reads
BACKBONE_DEFAULTS: dict[str, Any] = {
    "max_neighbors": 500, "max_radius": 5.0, "max_num_elements": 90, "num_layers": 12,
    "sphere_channels": 128, "attn_hidden_channels": 128, "num_heads": 8,
    "attn_alpha_channels": 32, "attn_value_channels": 16, "ffn_hidden_channels": 512,
    "norm_type": "rms_norm_sh", "lmax_list": [6], "mmax_list": [2], "grid_resolution": None,
    "edge_channels": 128, "use_atom_edge_embedding": True,
    "share_atom_edge_embedding": False, "use_m_share_rad": False,
    "distance_function": "gaussian", "use_s2_act_attn": False, "use_attn_renorm": True,
    "use_gate_act": False, "use_grid_mlp": False, "use_sep_s2_act": True,
    "alpha_drop": 0.1, "drop_path_rate": 0.05, "avg_num_nodes": None, "avg_degree": None,
    "use_energy_lin_ref": False, "load_energy_lin_ref": False,
}
#: the options the port needs at these values (fairchem name -> value)
REQUIRED = {
    "use_atom_edge_embedding": True, "share_atom_edge_embedding": False,
    "use_m_share_rad": False, "distance_function": "gaussian", "use_s2_act_attn": False,
    "use_attn_renorm": True, "use_gate_act": False, "use_grid_mlp": True,
    "use_sep_s2_act": True, "norm_type": "layer_norm_sh",
}
AVG_NUM_NODES = 77.81317  # fairchem's _AVG_NUM_NODES (IS2RE 100k)
AVG_DEGREE = 23.395238876342773  # fairchem's _AVG_DEGREE
NUM_GAUSSIANS = 600  # fixed in fairchem's EquiformerV2Backbone
ENERGY_HEADS = ("equiformer_v2_energy_head", "equiformerV2_scalar_head")
FORCE_HEADS = ("equiformer_v2_force_head", "equiformerV2_vector_head",
               "equiformerV2_rank1_head")
#: fairchem buffers derived from the config (grids, index maps): recomputed, not mapped
DERIVED = ("mappingReduced.", "SO3_rotation.", "SO3_grid.", ".expand_index",
           ".balance_degree_weight", "distance_expansion.offset")


class FairchemPortError(ForceFieldError):
    """A fairchem checkpoint this converter cannot map exactly (the message says why)."""


def _fail(message: str) -> FairchemPortError:
    return FairchemPortError(message)


# ----------------------------------------------------------------------------- config


def _model_section(config: Mapping[str, Any]) -> tuple[dict, dict, bool]:
    """(backbone arguments, heads, hydra layout?) from a checkpoint ``config`` or a bare
    model config."""
    model = config.get("model", config)
    if model in ("equiformer_v2_backbone",):  # a hydra backbone section on its own
        model = {"name": "equiformer_v2", **{k: v for k, v in config.items() if k != "model"}}
    if isinstance(model, str):  # older trainer configs: model name + model_attributes
        model = {"name": model, **dict(config.get("model_attributes") or {})}
    model = dict(model)
    name = model.get("name", model.get("model"))
    if name == "hydra":
        backbone = dict(model.get("backbone") or {})
        kind = backbone.pop("model", None)
        if kind not in ("equiformer_v2_backbone", "equiformer_v2"):
            raise _fail(f"config model.backbone.model={kind!r} is not fairchem's EquiformerV2 "
                        "backbone ('equiformer_v2_backbone'); only EquiformerV2 is ported")
        heads = dict(model.get("heads") or {})
        for key in ("finetune_config", "freeze_backbone"):
            if model.get(key):
                raise _fail(f"config model.{key} is set; port the checkpoint it starts "
                            "from, or a checkpoint saved with the full model")
        return backbone, heads, True
    if name not in ("equiformer_v2", None):
        raise _fail(f"config model name {name!r} is not fairchem's EquiformerV2 "
                    "('equiformer_v2' or a hydra model with 'equiformer_v2_backbone')")
    backbone = {k: v for k, v in model.items() if k not in ("name", "model")}
    heads = {"energy": {"module": "equiformer_v2_energy_head"}}
    if backbone.get("regress_forces", True) and backbone.get("direct_forces", True):
        heads["forces"] = {"module": "equiformer_v2_force_head"}
    return backbone, heads, False


def fairchem_model_config(config: Mapping[str, Any], *,
                          species: Sequence[int] | None = None) -> tuple[dict, dict]:
    """Our model config for a fairchem config, and the port's facts (heads, scales).

    Raises :class:`FairchemPortError` for an option that cannot be reproduced exactly.
    """
    backbone, heads, hydra = _model_section(config)
    fc = {**BACKBONE_DEFAULTS, **backbone}
    for key, value in REQUIRED.items():
        if fc[key] != value:
            raise _fail(f"fairchem option {key}={fc[key]!r} is not ported (only {value!r}, "
                        "what the OC20 EquiformerV2 configs use)")
    lmax_list, mmax_list = list(fc["lmax_list"]), list(fc["mmax_list"])
    if len(lmax_list) != 1 or len(mmax_list) != 1:
        raise _fail(f"fairchem lmax_list={lmax_list} / mmax_list={mmax_list} has several "
                    "resolutions; only one (e.g. lmax_list=[6], mmax_list=[2]) is ported")
    lmax, mmax = int(lmax_list[0]), int(mmax_list[0])
    if fc["grid_resolution"] is None:
        raise _fail("fairchem grid_resolution=None (per-grid default resolutions) is not "
                    "ported; the OC20 configs set it (18)")
    energy_head = force_head = None
    for head_name, head in heads.items():
        module = head.get("module")
        if module in ENERGY_HEADS and energy_head is None:
            if head.get("reduce", "sum") != "sum":
                raise _fail(f"fairchem head {head_name}.reduce={head.get('reduce')!r} is not "
                            "ported (only 'sum': a per-structure mean has no per-atom form)")
            if head.get("output_name", "energy") != "energy":
                raise _fail(f"fairchem head {head_name}.output_name is not 'energy'")
            energy_head = head_name
        elif module in FORCE_HEADS and force_head is None:
            force_head = head_name
        else:
            raise _fail(f"fairchem head {head_name!r} (module {module!r}) is not ported; "
                        f"only one energy head ({', '.join(ENERGY_HEADS)}) and one force head "
                        f"({', '.join(FORCE_HEADS)})")
    if energy_head is None:
        raise _fail("the fairchem config has no energy head (module "
                    f"{' or '.join(ENERGY_HEADS)}); nothing to port the energy from")
    max_z = int(fc["max_num_elements"])
    species = list(range(1, max_z)) if species is None else sorted(int(z) for z in species)
    bad = [z for z in species if not 1 <= z < max_z]
    if bad:
        raise _fail(f"species {bad} are outside fairchem's embedding (atomic numbers 1 to "
                    f"max_num_elements - 1 = {max_z - 1})")
    avg_degree = float(fc["avg_degree"] or AVG_DEGREE)
    ours = {
        "architecture": "gaunt_equiformer_v2", "name": "fairchem_equiformer_v2",
        "species": species, "r_max": float(fc["max_radius"]),
        "max_neighbors": None if fc["max_neighbors"] is None else int(fc["max_neighbors"]),
        "num_layers": int(fc["num_layers"]), "channels": int(fc["sphere_channels"]),
        "lmax": lmax, "mmax": mmax, "heads": int(fc["num_heads"]),
        "attn_hidden": int(fc["attn_hidden_channels"]),
        "alpha_channels": int(fc["attn_alpha_channels"]),
        "value_channels": int(fc["attn_value_channels"]),
        "ffn_hidden": int(fc["ffn_hidden_channels"]), "edge_channels": int(fc["edge_channels"]),
        "num_radial": NUM_GAUSSIANS, "grid_degree": int(fc["grid_resolution"]),
        "ffn_grid_degree": None, "grid_normalization": "component", "sphere_grid": "fairchem",
        "cutoff_envelope": False, "edge_degree_normalization": avg_degree,
        "selfmix": False, "parity": False,
        "forces": "direct" if force_head is not None else "gradient",
        "alpha_drop": float(fc["alpha_drop"]), "force_alpha_drop": 0.0,
        "drop_path": float(fc["drop_path_rate"]), "avg_num_neighbors": avg_degree,
        "e0s": {}, "energy_shift": 0.0, "energy_scale": 1.0,
    }
    facts = {"energy_head": energy_head, "force_head": force_head, "max_num_elements": max_z,
             "avg_num_nodes": float(fc["avg_num_nodes"] or AVG_NUM_NODES),
             # only the older single model adds energy_lin_ref; the hydra backbone keeps
             # the parameter but never uses it
             "use_energy_lin_ref": (not hydra and bool(fc["use_energy_lin_ref"])
                                    and bool(fc["load_energy_lin_ref"])),
             "lmax": lmax, "mmax": mmax}
    return ours, facts


# ----------------------------------------------------------------------------- key map

Map = Callable[[torch.Tensor], torch.Tensor]


def _lm_to_cl(n_l: int, channels: int) -> torch.Tensor:
    """Index p with ours[c * n_l + l] = fairchem[l * channels + c]."""
    c, l = torch.meshgrid(torch.arange(channels), torch.arange(n_l), indexing="ij")
    return (l * channels + c).reshape(-1)


class _Entry:
    """One tensor: fairchem key, our key, and the layout map both ways."""

    def __init__(self, fc: str, ff: str, forward: Map | None = None,
                 inverse: Map | None = None):
        self.fc, self.ff = fc, ff
        self.forward = forward or (lambda t: t)
        self.inverse = inverse or (lambda t: t)


def _perm(rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
          scale: float = 1.0) -> tuple[Map, Map]:
    """Row/column permutations (ours = fairchem[rows][:, cols] * scale) and their inverse."""
    def forward(t: torch.Tensor) -> torch.Tensor:
        if rows is not None:
            t = t[rows]
        if cols is not None:
            t = t[:, cols]
        return t * scale if scale != 1.0 else t

    def inverse(t: torch.Tensor) -> torch.Tensor:
        out = t / scale if scale != 1.0 else t
        if cols is not None:
            out = out[:, torch.argsort(cols)]
        if rows is not None:
            out = out[torch.argsort(rows)]
        return out
    return forward, inverse


def _transpose(scale: float = 1.0) -> tuple[Map, Map]:
    return ((lambda t: t.transpose(1, 2) * scale),
            (lambda t: t.transpose(1, 2) / scale))


def _species_rows(species: list[int], max_z: int) -> tuple[Map, Map]:
    index = torch.tensor(species)

    def inverse(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros((max_z, *t.shape[1:]))
        out[index] = t
        return out
    return (lambda t: t[index]), inverse


def _edge_mlp(fc: str, ff: str, rows: torch.Tensor) -> Iterator[_Entry]:
    """RadialFunction -> EdgeMLP (same modules); the output rows permuted by ``rows``."""
    for i in (0, 1, 3, 4, 6):
        for p in ("weight", "bias"):
            maps = _perm(rows) if i == 6 else (None, None)
            yield _Entry(f"{fc}.net.{i}.{p}", f"{ff}.net.{i}.{p}", *maps)


def _radial_rows(c_in: int, lmax: int, mmax: int) -> torch.Tensor:
    """Radial weights of an SO(2) convolution: fairchem has one block per m of (l, c),
    ours (c, j) with j running over the m = 0, 1, ... blocks of l."""
    sizes = [lmax + 1 - m for m in range(mmax + 1)]
    total = sum(sizes)
    index = torch.empty(c_in * total, dtype=torch.long)
    start = 0
    for n in sizes:
        for c in range(c_in):
            for l in range(n):
                index[c * total + start + l] = start * c_in + l * c_in + c
        start += n
    return index


def _norm(fc: str, ff: str) -> Iterator[_Entry]:
    # ours: weight [lmax+1, C] (row 0: the l=0 LayerNorm's weight, see _norm_names), bias [C]
    yield _Entry(f"{fc}.norm_l0.bias", f"{ff}.bias")


def _so2(fc: str, ff: str, c_in: int, c_out: int, lmax: int, mmax: int,
         extra: int) -> Iterator[_Entry]:
    n0 = lmax + 1
    # m = 0: rows fairchem [extra, (l, o)] -> ours [(o, l), extra]; columns (l, c) -> (c, l)
    main = extra + _lm_to_cl(n0, c_out)
    rows = torch.cat([main, torch.arange(extra)])
    cols = _lm_to_cl(n0, c_in)
    yield _Entry(f"{fc}.fc_m0.weight", f"{ff}.m0.weight", *_perm(rows, cols))
    yield _Entry(f"{fc}.fc_m0.bias", f"{ff}.m0.bias", *_perm(rows))
    for m in range(1, mmax + 1):
        n = lmax + 1 - m
        # rows fairchem (part, l, o) -> ours (part, o, l); columns (l, c) -> (c, l)
        half = _lm_to_cl(n, c_out)
        rows_m = torch.cat([half, half + n * c_out])
        yield _Entry(f"{fc}.so2_m_conv.{m - 1}.fc.weight", f"{ff}.mpos.{m - 1}.weight",
                     *_perm(rows_m, _lm_to_cl(n, c_in)))


def _attention(fc: str, ff: str, cfg: dict) -> Iterator[_Entry]:
    c, lmax, mmax = cfg["channels"], cfg["lmax"], cfg["mmax"]
    h, hidden = cfg["heads"], cfg["attn_hidden"]
    extra = h * cfg["alpha_channels"] + hidden
    yield from _so2(f"{fc}.so2_conv_1", f"{ff}.conv1", 2 * c, hidden, lmax, mmax, extra)
    yield from _edge_mlp(f"{fc}.so2_conv_1.rad_func", f"{ff}.radial",
                         _radial_rows(2 * c, lmax, mmax))
    yield from _so2(f"{fc}.so2_conv_2", f"{ff}.conv2", hidden, h * cfg["value_channels"],
                    lmax, mmax, 0)
    yield _Entry(f"{fc}.alpha_norm.weight", f"{ff}.alpha_norm.weight")
    yield _Entry(f"{fc}.alpha_norm.bias", f"{ff}.alpha_norm.bias")
    yield _Entry(f"{fc}.alpha_dot", f"{ff}.alpha_dot")
    yield _Entry(f"{fc}.proj.weight", f"{ff}.project.weight", *_transpose())
    yield _Entry(f"{fc}.proj.bias", f"{ff}.project_bias")


def _ffn(fc: str, ff: str, scale: float = 1.0) -> Iterator[_Entry]:
    yield _Entry(f"{fc}.so3_linear_1.weight", f"{ff}.linear_in.weight", *_transpose())
    yield _Entry(f"{fc}.so3_linear_1.bias", f"{ff}.bias_in")
    yield _Entry(f"{fc}.scalar_mlp.0.weight", f"{ff}.scalar_mlp.0.weight")
    yield _Entry(f"{fc}.scalar_mlp.0.bias", f"{ff}.scalar_mlp.0.bias")
    for i in (0, 2, 4):
        yield _Entry(f"{fc}.grid_mlp.{i}.weight", f"{ff}.grid_mlp.{i}.weight")
    yield _Entry(f"{fc}.so3_linear_2.weight", f"{ff}.linear_out.weight", *_transpose(scale))
    yield _Entry(f"{fc}.so3_linear_2.bias", f"{ff}.bias_out",
                 lambda t: t * scale, lambda t: t / scale)


def _entries(cfg: dict, facts: dict) -> list[_Entry]:
    """Every mapped tensor, in fairchem's hydra names without the ``module.`` prefix."""
    c, lmax = cfg["channels"], cfg["lmax"]
    species = _species_rows(cfg["species"], facts["max_num_elements"])
    out = [_Entry("backbone.sphere_embedding.weight", "embedding.weight", *species)]
    emb = "backbone.edge_degree_embedding"
    out += [_Entry(f"{emb}.source_embedding.weight", "degree_source_embedding.weight",
                   *species),
            _Entry(f"{emb}.target_embedding.weight", "degree_target_embedding.weight",
                   *species)]
    out += _edge_mlp(f"{emb}.rad_func", "edge_degree.radial", _lm_to_cl(lmax + 1, c))
    blocks = [(f"backbone.blocks.{i}", f"blocks.{i}") for i in range(cfg["num_layers"])]
    for fc, ff in blocks:
        out += [_Entry(f"{fc}.ga.source_embedding.weight", f"{ff}.source_embedding.weight",
                       *species),
                _Entry(f"{fc}.ga.target_embedding.weight", f"{ff}.target_embedding.weight",
                       *species)]
        out += _attention(f"{fc}.ga", f"{ff}.attention", cfg)
        out += _norm(f"{fc}.norm_1", f"{ff}.norm_attention")
        out += _norm(f"{fc}.norm_2", f"{ff}.norm_ffn")
        out += _ffn(f"{fc}.ffn", f"{ff}.ffn")
    out += _norm("backbone.norm", "norm")
    head = f"output_heads.{facts['energy_head']}.energy_block"
    out += _ffn(head, "energy_ffn", 1.0 / facts["avg_num_nodes"])
    if facts["force_head"] is not None:
        fh = f"output_heads.{facts['force_head']}.force_block"
        out += [_Entry(f"{fh}.source_embedding.weight", "force_source_embedding.weight",
                       *species),
                _Entry(f"{fh}.target_embedding.weight", "force_target_embedding.weight",
                       *species)]
        out += _attention(fh, "force_head", cfg)
    return out


def _norm_names(cfg: dict) -> list[tuple[str, str]]:
    """(fairchem prefix, our prefix) of every layer_norm_sh: weight = [norm_l0.weight;
    affine_weight] is one tensor of ours from two of fairchem's."""
    names = [(f"backbone.blocks.{i}.{a}", f"blocks.{i}.{b}") for i in range(cfg["num_layers"])
             for a, b in (("norm_1", "norm_attention"), ("norm_2", "norm_ffn"))]
    return [*names, ("backbone.norm", "norm")]


# ----------------------------------------------------------------------------- state dicts


def _strip(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _hydra_keys(state_dict: Mapping[str, torch.Tensor], facts: dict) -> dict:
    """fairchem state dict -> hydra names without ``module.`` (older layout converted as
    fairchem's eqv2_to_eqv2_hydra does)."""
    out = {}
    for key, value in state_dict.items():
        k = _strip(key)
        if not (k.startswith("backbone.") or k.startswith("output_heads.")):
            if k.startswith("energy_block."):
                k = f"output_heads.{facts['energy_head']}.{k}"
            elif k.startswith("force_block."):
                k = f"output_heads.{facts['force_head']}.{k}"
            else:
                k = "backbone." + k
        out[k] = value
    return out


def _load(source: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise _fail(f"fairchem checkpoint {path} does not exist")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is the same answer
            raise _fail(f"{path} is not a checkpoint readable with weights_only=True ({err}); "
                        "save its 'state_dict' and 'config' with torch.save and pass that") from err
    return source


def from_fairchem_equiformer_v2(
    checkpoint_or_state_dict: str | Path | Mapping[str, Any],
    config: Mapping[str, Any] | None = None, *,
    species: Sequence[int] | None = None,
    max_neighbors: int | None | str = "config",
    dtype: torch.dtype = torch.float32,
) -> GauntEquiformerV2:
    """A GauntEquiformerV2 with the weights of a fairchem 1.x EquiformerV2.

    Args:
        checkpoint_or_state_dict: a fairchem checkpoint file or dict (``state_dict`` with
            ``module.backbone.`` / ``module.output_heads.`` or older ``module.`` keys, and a
            ``config`` whose ``model`` holds the model arguments), or a bare state dict
            (then ``config`` is required).
        config: the fairchem model config (hydra: ``{"name": "hydra", "backbone": {...},
            "heads": {...}}``; older: the EquiformerV2 arguments), if not in the checkpoint.
        species: atomic numbers to keep (default: all of fairchem's embedding, 1 to
            max_num_elements - 1); fewer make a smaller model with the same predictions.
        max_neighbors: the neighbour cap ("config": fairchem's ``max_neighbors``; None: no
            cap).  Ties at the cap may be broken differently from fairchem's graph.
        dtype: the returned model's dtype.

    Raises :class:`FairchemPortError` (one sentence naming the key or option) for a
    checkpoint that cannot be mapped exactly.
    """
    data = _load(checkpoint_or_state_dict)
    if "state_dict" in data:
        state_dict = data["state_dict"]
        config = config if config is not None else data.get("config")
    else:
        state_dict = data
    if config is None:
        raise _fail("no fairchem config: the checkpoint has no 'config' entry, so pass "
                    "config= (the model arguments of the run)")
    cfg, facts = fairchem_model_config(config, species=species)
    if max_neighbors != "config":
        cfg["max_neighbors"] = max_neighbors
    state = _hydra_keys(state_dict, facts)
    if facts["use_energy_lin_ref"]:
        ref = state.get("backbone.energy_lin_ref")
        if ref is None:
            raise _fail("fairchem use_energy_lin_ref=True but the state dict has no "
                        "'energy_lin_ref'")
        cfg["e0s"] = {z: float(ref[z]) for z in cfg["species"]}
    entries = _entries(cfg, facts)
    norms = _norm_names(cfg)
    expected = {e.fc for e in entries}
    expected |= {f"{fc}.{p}" for fc, _ in norms for p in ("norm_l0.weight", "affine_weight")}
    optional = {"backbone.energy_lin_ref"}
    unknown = sorted(k for k in state if k not in expected and k not in optional
                     and not any(d in k for d in DERIVED))
    if unknown:
        raise _fail(f"fairchem state dict key {unknown[0]!r} is not mapped by this converter"
                    + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                    + "; the checkpoint's options do not match its config")
    missing = sorted(expected - set(state))
    if missing:
        raise _fail(f"fairchem state dict has no {missing[0]!r}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                    + "; the checkpoint does not match its config")
    _check_gaussians(state, cfg)
    model = GauntEquiformerV2(**cfg).to(torch.float64)
    ours = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for e in entries:
        value = e.forward(state[e.fc].to(torch.float64))
        if e.ff not in ours or ours[e.ff].shape != value.shape:
            got = tuple(ours[e.ff].shape) if e.ff in ours else "no such key"
            raise _fail(f"fairchem {e.fc!r} of shape {tuple(state[e.fc].shape)} does not fit "
                        f"{e.ff!r} ({got}); the checkpoint does not match its config")
        new[e.ff] = value
    for fc, ff in norms:
        new[f"{ff}.weight"] = torch.cat([state[f"{fc}.norm_l0.weight"][None],
                                         state[f"{fc}.affine_weight"]]).to(torch.float64)
    # ours only: the learnable per-element shift (fairchem has none)
    new["head.element_shift"] = torch.zeros_like(ours["head.element_shift"])
    left = sorted(set(ours) - set(new))
    if left:  # every parameter must come from the checkpoint
        raise _fail(f"our parameter {left[0]!r} has no fairchem source; this converter does "
                    "not support the configuration")
    model.load_state_dict(new, strict=True)
    return model.to(dtype).eval()


def _check_gaussians(state: Mapping[str, torch.Tensor], cfg: dict) -> None:
    offset = state.get("backbone.distance_expansion.offset")
    if offset is None:
        return
    expect = torch.linspace(0.0, cfg["r_max"], NUM_GAUSSIANS, dtype=torch.float64)
    if offset.shape != expect.shape or not torch.allclose(offset.to(torch.float64), expect,
                                                          rtol=0, atol=1e-5):
        raise _fail("fairchem distance_expansion.offset is not 600 Gaussians evenly spaced "
                    f"on [0, max_radius={cfg['r_max']}]; only GaussianSmearing(0, cutoff, 600) "
                    "is ported")


def to_fairchem_state_dict(model: GauntEquiformerV2, *, max_num_elements: int = 90,
                           energy_head: str = "energy", force_head: str = "forces",
                           avg_num_nodes: float = AVG_NUM_NODES) -> dict[str, torch.Tensor]:
    """The inverse map (fairchem hydra names with ``module.``, parameters only): a model
    made by :func:`from_fairchem_equiformer_v2` back to fairchem's layout.  Rows of elements
    outside ``model.species`` are zero."""
    cfg = model.config
    if bool(model.head.element_shift.detach().ne(0).any()) or cfg["e0s"] or cfg[
            "energy_shift"] or cfg["energy_scale"] != 1.0:
        raise _fail("the model has energy references, a shift or a scale (E0s, "
                    "element_shift, energy_shift, energy_scale) that fairchem's layout cannot "
                    "hold")
    facts = {"energy_head": energy_head,
             "force_head": force_head if model.force_head is not None else None,
             "max_num_elements": max_num_elements, "avg_num_nodes": avg_num_nodes}
    ours = model.state_dict()
    out = {e.fc: e.inverse(ours[e.ff]) for e in _entries(cfg, facts)}
    for fc, ff in _norm_names(cfg):
        out[f"{fc}.norm_l0.weight"] = ours[f"{ff}.weight"][0]
        out[f"{fc}.affine_weight"] = ours[f"{ff}.weight"][1:]
    return {"module." + k: v for k, v in out.items()}

