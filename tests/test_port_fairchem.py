"""forcefield.models.port: fairchem's EquiformerV2 weights in GauntEquiformerV2.

The agreement test needs fairchem-core 1.10 in its own environment (``bash
scripts/setup_fairchem_env.sh`` makes .venv-fairchem; FAIRCHEM_VENV names another one) and
skips without it.  It runs tests/fairchem_eqv2_reference.py there as a subprocess: a
randomly initialised fairchem hydra EquiformerV2 (the S2EF-2M architecture, L 6, M 2, grid
18, 600 Gaussians, ``layer_norm_sh``, grid MLPs, with small widths and 2 layers for speed;
also with the degrees of the 31M (L 4, M 2) and 153M (L 6, M 3) models), every parameter
then moved by 0.1 N(0, 1), evaluates OC20 slabs in float64 on the graph and edge frames this
process made (the only patch: fairchem's random edge roll is replaced by our deterministic
frame).  The weights it saves are converted here and must give the same energies and
direct forces to 1e-6 relative.  The other tests need no fairchem: the converter's
refusals, the key map round trip, the older layout and ``forcefield export source=fairchem``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from forcefield.data.atomic_data import AtomicData
from forcefield.data.synthetic import oc20_like
from forcefield.models.port import (
    FairchemPortError,
    fairchem_model_config,
    from_fairchem_equiformer_v2,
    to_fairchem_state_dict,
)
from forcefield.nn import edge_frame

ROOT = Path(__file__).resolve().parents[1]
OC20 = ROOT.parent / "shared" / "data" / "oc20"  # real OC20 frames, when beside the checkout
REFERENCE = Path(__file__).with_name("fairchem_eqv2_reference.py")
R_MAX = 6.0

#: the S2EF-2M architecture (configs/s2ef/2M/equiformer_v2/equiformer_v2_N@12_L@6_M@2.yml)
#: with small widths and 2 layers
BACKBONE = {
    "use_pbc": True, "regress_forces": True, "otf_graph": False, "max_neighbors": 500,
    "max_radius": R_MAX, "max_num_elements": 90, "num_layers": 2, "sphere_channels": 8,
    "attn_hidden_channels": 8, "num_heads": 2, "attn_alpha_channels": 4,
    "attn_value_channels": 4, "ffn_hidden_channels": 8, "norm_type": "layer_norm_sh",
    "lmax_list": [6], "mmax_list": [2], "grid_resolution": 18, "num_sphere_samples": 128,
    "edge_channels": 8, "use_atom_edge_embedding": True, "share_atom_edge_embedding": False,
    "use_m_share_rad": False, "distance_function": "gaussian", "num_distance_basis": 512,
    "attn_activation": "silu", "use_s2_act_attn": False, "use_attn_renorm": True,
    "ffn_activation": "silu", "use_gate_act": False, "use_grid_mlp": True,
    "use_sep_s2_act": True, "alpha_drop": 0.1, "drop_path_rate": 0.05, "proj_drop": 0.0,
    "weight_init": "uniform",
}
HEADS = {"energy": {"module": "equiformerV2_scalar_head"},
         "forces": {"module": "equiformerV2_vector_head"}}


def fairchem_python() -> Path | None:
    venv = Path(os.environ.get("FAIRCHEM_VENV", ROOT / ".venv-fairchem"))
    python = venv / "bin" / "python"
    return python if python.is_file() else None


def float32_exact_cell(atoms):
    """Cell entries on a 2^-10 grid: fairchem forms image offsets in float32
    (get_pbc_distances), exact for such cells, so both sides see the same edge vectors."""
    atoms = atoms.copy()
    atoms.set_cell(np.round(np.asarray(atoms.cell) * 1024) / 1024, scale_atoms=False)
    return atoms


def slabs() -> list:
    frames = []
    if (OC20 / "oc20_real_frames.extxyz").is_file():
        frames += ase.io.read(OC20 / "oc20_real_frames.extxyz", index=":")
    frames += list(oc20_like(1, seed=3, kind="slab", size=(3, 3, 3)))
    return [float32_exact_cell(a) for a in frames]


def graphs(frames) -> tuple[Batch, list[dict]]:
    data, specs = [], []
    for atoms in frames:
        d = AtomicData.from_ase(atoms, R_MAX, check_labels=False)
        receiver, sender = d.edge_index
        cell = d.cell.reshape(3, 3).to(torch.float64)
        pos = d.pos.to(torch.float64)
        vec = pos[sender] - pos[receiver] + d.cell_shifts.to(torch.float64) @ cell
        specs.append({"pos": pos, "cell": cell, "numbers": d.atomic_numbers.long(),
                      "edge_index": torch.stack([sender, receiver]),
                      "cell_offsets": d.cell_shifts.to(torch.float64),
                      "rotation": edge_frame(vec)})
        data.append(d)
    return Batch.from_data_list(data), specs


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


#: (lmax, mmax) of fairchem's three OC20 models: S2EF-2M / 83M, 31M, 153M
ARCHITECTURES = {"S2EF-2M": (6, 2), "31M": (4, 2), "153M": (6, 3)}


@pytest.mark.skipif(fairchem_python() is None,
                    reason="no fairchem environment (bash scripts/setup_fairchem_env.sh, or "
                           "FAIRCHEM_VENV=DIR): fairchem-core pins an old torch, so it lives "
                           "in its own venv")
def test_random_fairchem_model_ports_to_the_same_energy_and_forces(tmp_path):
    batch, specs = graphs(slabs())
    cases = [{"backbone": {**BACKBONE, "lmax_list": [lmax], "mmax_list": [mmax]},
              "heads": HEADS, "seed": 7 + k, "perturb": 0.1}
             for k, (lmax, mmax) in enumerate(ARCHITECTURES.values())]
    path_in, path_out = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"cases": cases, "structures": specs}, path_in)
    run = subprocess.run([str(fairchem_python()), str(REFERENCE), str(path_in),
                          str(path_out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = torch.load(path_out, weights_only=True)

    for name, case in zip(ARCHITECTURES, ref["cases"], strict=True):
        model = from_fairchem_equiformer_v2(case["checkpoint"], dtype=torch.float64)
        assert model.config["parity"] is False and model.config["selfmix"] is False
        out = model(batch)
        e_err = relative(out["energy"], case["energy"])
        f_err = relative(out["forces"], case["forces"])
        print(f"fairchem {ref['fairchem_version']}, {name} (L {model.config['lmax']}, "
              f"M {model.config['mmax']}): {len(specs)} slabs, {batch.edge_index.shape[1]} "
              f"edges; energy {e_err:.2e}, forces {f_err:.2e} (max abs difference / max abs "
              "value)")
        assert e_err < 1e-6 and f_err < 1e-6, name

    # a model of fewer species predicts the same (the 31M case: the cheapest)
    small = from_fairchem_equiformer_v2(ref["cases"][1]["checkpoint"], dtype=torch.float64,
                                        species=sorted({int(z) for s in specs
                                                        for z in s["numbers"]}))
    assert relative(small(batch)["energy"], ref["cases"][1]["energy"]) < 1e-6


# ----------------------------------------------------------------------------- no fairchem


def small_checkpoint(**backbone) -> dict:
    """A fairchem-layout checkpoint made from a random model of ours (the inverse map)."""
    config = {"model": {"name": "hydra", "backbone": {"model": "equiformer_v2_backbone",
                                                      **BACKBONE, **backbone},
                        "heads": HEADS}}
    cfg, _ = fairchem_model_config(config)
    from forcefield.models import GauntEquiformerV2

    torch.manual_seed(0)
    model = GauntEquiformerV2(**cfg).double().eval()
    with torch.no_grad():  # no parameter left at a symmetric initial value
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.head.element_shift.zero_()  # ours only: fairchem's layout has no such shift
    return {"state_dict": to_fairchem_state_dict(model), "config": config, "model": model}


def test_key_map_round_trips_every_parameter():
    ckpt = small_checkpoint()
    model = ckpt.pop("model")
    back = from_fairchem_equiformer_v2(ckpt, dtype=torch.float64)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, rtol=1e-15, atol=1e-15,
                                   msg=key)
    # and again to fairchem's layout: the same tensors
    again = to_fairchem_state_dict(back)
    for key, value in ckpt["state_dict"].items():
        torch.testing.assert_close(again[key], value, rtol=1e-15, atol=1e-15, msg=key)


def test_older_single_model_layout_ports_the_same():
    ckpt = small_checkpoint()
    model = ckpt.pop("model")
    old = {}
    for key, value in ckpt["state_dict"].items():
        k = key.removeprefix("module.")
        k = k.replace("output_heads.energy.", "").replace("output_heads.forces.", "")
        old["module." + k.removeprefix("backbone.")] = value
    attributes = {k: v for k, v in ckpt["config"]["model"]["backbone"].items() if k != "model"}
    legacy = {"state_dict": old,
              "config": {"model": "equiformer_v2", "model_attributes": attributes}}
    back = from_fairchem_equiformer_v2(legacy, dtype=torch.float64)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, rtol=1e-15, atol=1e-15,
                                   msg=key)


def test_a_bare_state_dict_takes_its_config_separately():
    ckpt = small_checkpoint()
    model = ckpt.pop("model")
    backbone = ckpt["config"]["model"]["backbone"]  # {"model": "equiformer_v2_backbone", ...}
    for config in (ckpt["config"], ckpt["config"]["model"], backbone):
        back = from_fairchem_equiformer_v2(ckpt["state_dict"], config, dtype=torch.float64)
        torch.testing.assert_close(back.state_dict()["blocks.1.ffn.bias_out"],
                                   model.state_dict()["blocks.1.ffn.bias_out"])


def test_energy_references_follow_fairchem_layouts():
    """The older model adds energy_lin_ref[z] per atom (E0s here); the hydra backbone
    holds the parameter but never adds it."""
    ckpt = small_checkpoint(use_energy_lin_ref=True, load_energy_lin_ref=True)
    ckpt.pop("model")
    ref = torch.linspace(-1.0, 1.0, 90, dtype=torch.float64)
    hydra = {**ckpt, "state_dict": {**ckpt["state_dict"],
                                    "module.backbone.energy_lin_ref": ref}}
    assert from_fairchem_equiformer_v2(hydra).config["e0s"] == {}
    old = {"module." + k.removeprefix("module.backbone.").removeprefix(
        "module.output_heads.energy.").removeprefix("module.output_heads.forces."): v
        for k, v in hydra["state_dict"].items()}
    attributes = {k: v for k, v in ckpt["config"]["model"]["backbone"].items() if k != "model"}
    legacy = from_fairchem_equiformer_v2(
        {"state_dict": old, "config": {"model": "equiformer_v2", "model_attributes": attributes}})
    assert legacy.config["e0s"][26] == pytest.approx(float(ref[26]))


@pytest.mark.parametrize("change, words", [
    ({"norm_type": "rms_norm_sh"}, "norm_type='rms_norm_sh'"),
    ({"use_grid_mlp": False}, "use_grid_mlp=False"),
    ({"use_gate_act": True}, "use_gate_act=True"),
    ({"share_atom_edge_embedding": True}, "share_atom_edge_embedding=True"),
    ({"lmax_list": [4, 6], "mmax_list": [2, 2]}, "several resolutions"),
    ({"grid_resolution": None}, "grid_resolution=None"),
])
def test_unsupported_options_are_refused_by_name(change, words):
    config = {"model": {"name": "hydra", "backbone": {"model": "equiformer_v2_backbone",
                                                      **BACKBONE, **change},
                        "heads": HEADS}}
    with pytest.raises(FairchemPortError, match=words.replace("[", r"\[")) as info:
        from_fairchem_equiformer_v2({"state_dict": {}, "config": config})
    assert str(info.value).count(".") <= 3  # one sentence (decimals aside)


def test_bad_state_dicts_and_configs_are_refused_in_one_sentence(tmp_path):
    ckpt = small_checkpoint()
    ckpt.pop("model")
    extra = dict(ckpt["state_dict"])
    extra["module.backbone.blocks.0.ga.mystery.weight"] = torch.zeros(3)
    with pytest.raises(FairchemPortError, match="mystery.weight' is not mapped"):
        from_fairchem_equiformer_v2({**ckpt, "state_dict": extra})
    missing = {k: v for k, v in ckpt["state_dict"].items() if "alpha_dot" not in k}
    with pytest.raises(FairchemPortError, match="has no 'backbone.blocks.0.ga.alpha_dot'"):
        from_fairchem_equiformer_v2({**ckpt, "state_dict": missing})
    wrong = dict(ckpt["state_dict"])
    key = "module.backbone.blocks.1.ffn.grid_mlp.0.weight"
    wrong[key] = torch.zeros(5, 5)
    with pytest.raises(FairchemPortError, match="does not fit"):
        from_fairchem_equiformer_v2({**ckpt, "state_dict": wrong})
    with pytest.raises(FairchemPortError, match="pass config="):
        from_fairchem_equiformer_v2(ckpt["state_dict"])
    with pytest.raises(FairchemPortError, match="not fairchem's EquiformerV2"):
        from_fairchem_equiformer_v2({"state_dict": {}, "config": {"model": "gemnet_oc"}})
    heads = {**HEADS, "stress": {"module": "rank2_symmetric_head"}}
    config = {"model": {**ckpt["config"]["model"], "heads": heads}}
    with pytest.raises(FairchemPortError, match="head 'stress'"):
        from_fairchem_equiformer_v2({**ckpt, "config": config})
    with pytest.raises(FairchemPortError, match="does not exist"):
        from_fairchem_equiformer_v2(tmp_path / "nope.pt")


def test_fairchem_switches_are_off_by_default():
    """The port's switches are options: a model config without them keeps our choices."""
    from forcefield.models import GauntEquiformerV2

    model = GauntEquiformerV2(species=[1, 8], num_layers=1, channels=4, lmax=2, mmax=1,
                              heads=1, attn_hidden=4, alpha_channels=2, value_channels=2,
                              ffn_hidden=4, edge_channels=4, num_radial=8)
    cfg = model.config
    assert (cfg["sphere_grid"], cfg["cutoff_envelope"], cfg["edge_degree_normalization"]) == (
        "gauss_legendre", True, None)
    with pytest.raises(ValueError, match="grid_normalization='component'"):
        GauntEquiformerV2(species=[1], lmax=2, mmax=1, sphere_grid="fairchem")
    with pytest.raises(ValueError, match="not an e3nn grid resolution"):
        GauntEquiformerV2(species=[1], lmax=6, mmax=2, sphere_grid="fairchem",
                          grid_normalization="component", grid_degree=13)


def test_e3nn_grid_quadrature_integrates_harmonics():
    from forcefield import so3

    points, weights = so3.e3nn_grid_quadrature(18, 18)
    y = so3.spherical_harmonics(6, torch.as_tensor(points))
    gram = y.T @ (y * torch.as_tensor(weights)[:, None])
    torch.testing.assert_close(gram, torch.eye(49, dtype=gram.dtype), atol=1e-13, rtol=0)


def test_export_command_writes_a_model_file_from_a_fairchem_checkpoint(tmp_path, capsys):
    from forcefield.cli.export import main
    from forcefield.export import load_model

    ckpt = small_checkpoint()
    model = ckpt.pop("model")
    path = tmp_path / "fairchem.pt"
    torch.save(ckpt, path)
    out = tmp_path / "eqv2.pt"
    assert main([f"checkpoint={path}", f"output={out}", "source=fairchem",
                 "dtype=float64"]) == 0
    loaded = load_model(out)
    batch, _ = graphs([float32_exact_cell(next(iter(oc20_like(1, seed=1, kind="slab",
                                                              size=(2, 2, 3)))))])
    torch.testing.assert_close(loaded(batch)["energy"], model(batch)["energy"], rtol=1e-12,
                               atol=0)
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}, "config": {"model": "gemnet_oc"}}, bad)
    assert main([f"checkpoint={bad}", f"output={tmp_path / 'x.pt'}", "source=fairchem"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not fairchem's EquiformerV2" in err[0]
