"""The GauntEquiformerV2 presets beside fairchem's EquiformerV2 (31M, 83M, 153M), the
switches that match the reference (grid normalisation, projection bias, edge embedding
init, force-head dropout) or lower the rotation error (the grid MLPs' degree), and model
files written before those switches existed."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from test_equiformer import make_eqv2
from test_model import random_molecule

from forcefield import so3
from forcefield.export import load_model, read_model_file, save_model
from forcefield.models import build_model
from forcefield.models.size import parameter_count
from forcefield.nn import SphereGrid
from forcefield.nn.s2_activation import component_factors

CONF = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf" / "model"
#: preset -> (layers, lmax, mmax, fairchem's published parameter count)
PRESETS = {
    "gaunt_equiformer_v2_31m": (8, 4, 2, 31e6),
    "gaunt_equiformer_v2": (12, 6, 2, 83e6),
    "gaunt_equiformer_v2_153m": (20, 6, 3, 153e6),
}
#: OC20's 56 elements and statistics that only fill the config (no effect on the size)
OC20_FILL = dict(species=list(range(1, 57)), avg_num_neighbors=20.0, e0s={},
                 energy_shift=0.0, energy_scale=1.0)


def preset(name: str) -> dict:
    return {**OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml")), **OC20_FILL}


@pytest.mark.parametrize("name", PRESETS)
def test_presets_match_fairchem_architectures_and_sizes(name):
    layers, lmax, mmax, published = PRESETS[name]
    cfg = preset(name)
    assert (cfg["num_layers"], cfg["lmax"], cfg["mmax"]) == (layers, lmax, mmax)
    assert cfg["num_radial"] == 600 and cfg["grid_degree"] == 18
    assert cfg["grid_normalization"] == "component" and cfg["force_alpha_drop"] == 0.0
    assert cfg["forces"] == "direct" and cfg["name"] == name
    # EquiformerV2 itself: complex SO(2) weights, no selfmix; within fairchem's rounding
    plain = parameter_count({**cfg, "parity": False, "selfmix": False})
    assert abs(plain - published) / published < 0.01, plain
    with_selfmix = parameter_count({**cfg, "parity": False})
    assert with_selfmix > plain


def test_parameter_count_equals_a_full_build():
    cfg = dict(make_eqv2().config, num_layers=3)
    full = sum(p.numel() for p in build_model(cfg).parameters())
    assert parameter_count(cfg) == full


@pytest.mark.parametrize("lmax", [2, 6])
def test_component_grid_values_have_unit_variance_and_invert(lmax):
    torch.manual_seed(0)
    x = torch.randn(4000, 1, (lmax + 1) ** 2, dtype=torch.float64)
    integral = SphereGrid(lmax, 3 * lmax)
    component = SphereGrid(lmax, 3 * lmax, degree_scale=component_factors(lmax))
    var_integral = float(integral.to_grid(x).var())
    var_component = float(component.to_grid(x).var())
    assert var_integral == pytest.approx((lmax + 1) ** 2 / (4 * math.pi), rel=0.05)
    assert var_component == pytest.approx(1.0, rel=0.05)
    for grid in (integral, component):
        torch.testing.assert_close(grid.from_grid(grid.to_grid(x)), x, rtol=0, atol=1e-12)
    # the same function up to a per-degree factor
    scale = torch.tensor(component_factors(lmax), dtype=torch.float64)[so3.degree_index(lmax)]
    torch.testing.assert_close(component.to_grid(x), integral.to_grid(x * scale), rtol=0,
                               atol=1e-12)


def test_edge_embeddings_start_small_and_projection_bias_at_zero():
    torch.manual_seed(0)
    model = build_model(dict(make_eqv2().config, forces="direct"))
    names = [n for n, _ in model.named_parameters() if n.endswith("embedding.weight")
             and ("source" in n or "target" in n)]
    assert len(names) == 2 * len(model.blocks) + 4  # blocks, edge degree, force head
    params = dict(model.named_parameters())
    for name in names:
        assert params[name].abs().max() <= 1e-3 and params[name].abs().max() > 1e-4, name
    biases = [n for n in params if n.endswith("project_bias")]
    assert len(biases) == len(model.blocks) + 1
    assert all(torch.equal(params[n], torch.zeros_like(params[n])) for n in biases)
    assert model.force_head.alpha_drop is None  # force_alpha_drop 0 by default


def test_files_written_before_the_switches_load_unchanged(tmp_path):
    """A file without grid_normalization / force_alpha_drop in its config and without the
    projection biases in its weights is the model it was: integral grids, zero bias."""
    model = make_eqv2(forces="direct", grid_normalization="integral")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("project_bias"):
                param.zero_()
    path = tmp_path / "model.pt"
    save_model(path, model)
    payload = read_model_file(path)
    for key in ("grid_normalization", "force_alpha_drop", "ffn_grid_degree"):
        del payload["config"][key]
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items()
                             if not k.endswith("project_bias")}
    legacy = tmp_path / "legacy.pt"
    torch.save(payload, legacy)
    loaded = load_model(legacy)
    assert loaded.config["grid_normalization"] == "integral"
    assert loaded.config["ffn_grid_degree"] is None
    assert loaded.blocks[0].ffn.grid.grid_degree == loaded.config["grid_degree"]
    from test_model import batch_of

    data = batch_of(random_molecule())
    expected, got = model(data), loaded(data)
    torch.testing.assert_close(got["energy"], expected["energy"], rtol=0, atol=1e-12)
    torch.testing.assert_close(got["forces"], expected["forces"], rtol=0, atol=1e-12)
    # the new default on the same weights is a different model: the switch matters
    component = build_model(dict(loaded.config, grid_normalization="component")).double()
    component.load_state_dict(loaded.state_dict())
    assert float((component(data)["energy"] - expected["energy"]).abs()) > 1e-6


def test_bad_grid_settings_name_the_key():
    with pytest.raises(ValueError, match="model.grid_normalization"):
        make_eqv2(grid_normalization="norm")
    with pytest.raises(ValueError, match=r"model.ffn_grid_degree=3 is below 2 lmax = 4"):
        make_eqv2(ffn_grid_degree=3)
    with pytest.raises(ValueError, match=r"model.grid_degree=2 is below"):
        make_eqv2(grid_degree=2)


def test_ffn_grid_degree_sets_the_grid_mlps_only():
    model = make_eqv2(ffn_grid_degree=30)
    assert model.blocks[0].ffn.grid.grid_degree == 30
    assert model.energy_ffn.grid.grid_degree == 30
    assert model.blocks[0].attention.activation.grid.grid_degree == model.config["grid_degree"]
