"""The model registry: architectures chosen by config, per-architecture keys, checkpoints
and model files of every architecture, and files written before the registry existed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from test_equiformer import make_eqv2

from forcefield.cli.compose import compose_config
from forcefield.errors import ConfigError
from forcefield.models import MODELS, GauntEquiformerV2, GauntMACE, build_model, model_class

LEGACY = Path(__file__).parent / "data"


def legacy_molecule() -> tuple[Atoms, dict]:
    ref = json.loads((LEGACY / "legacy_gaunt_mace.json").read_text())
    return Atoms(ref["symbols"], positions=ref["positions"]), ref


def assert_predicts_legacy(calc_source) -> None:
    from forcefield.calculator import ForceFieldCalculator

    atoms, ref = legacy_molecule()
    atoms.calc = ForceFieldCalculator(calc_source, dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(ref["energy"], abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"], rtol=0, atol=1e-9)


def test_registry_names_both_architectures():
    assert MODELS == {"gaunt_mace": GauntMACE, "gaunt_equiformer_v2": GauntEquiformerV2}
    assert model_class("GauntEquiformerV2") is GauntEquiformerV2  # model files: class name
    assert model_class("gaunt_mace") is GauntMACE
    with pytest.raises(ValueError, match="model.architecture='nequip'"):
        build_model({"architecture": "nequip", "species": [1]})


def test_legacy_gaunt_mace_model_file_loads_and_predicts_the_same():
    from forcefield.export import load_model, read_model_file

    raw = read_model_file(LEGACY / "legacy_gaunt_mace.pt")
    assert "architecture" not in raw["config"]  # written before the registry
    model = load_model(LEGACY / "legacy_gaunt_mace.pt")
    assert isinstance(model, GauntMACE) and model.config["architecture"] == "gaunt_mace"
    assert_predicts_legacy(LEGACY / "legacy_gaunt_mace.pt")


def test_legacy_gaunt_mace_checkpoint_loads_exports_and_predicts_the_same(tmp_path):
    from forcefield.evaluate import load_any_model
    from forcefield.export import export_checkpoint
    from forcefield.training.module import ForceFieldModule, load_checkpoint

    raw = load_checkpoint(LEGACY / "legacy_gaunt_mace.ckpt")
    assert "model_class" not in raw["hyper_parameters"]
    module = ForceFieldModule.from_checkpoint(raw)
    assert isinstance(module.model, GauntMACE)
    assert module.hparams["model_class"] == "GauntMACE"  # recorded from now on
    net, info = load_any_model(LEGACY / "legacy_gaunt_mace.ckpt")
    assert info["kind"] == "checkpoint"
    dest = export_checkpoint(str(LEGACY / "legacy_gaunt_mace.ckpt"), str(tmp_path / "model.pt"))
    assert_predicts_legacy(dest)
    assert_predicts_legacy(net)


@pytest.mark.parametrize("forces", ["direct", "gradient"])
def test_equiformer_checkpoint_and_model_file_round_trip(tmp_path, forces):
    from forcefield.evaluate import load_any_model
    from forcefield.export import load_model, save_model
    from forcefield.training.module import ForceFieldModule

    model = make_eqv2(forces=forces)
    module = ForceFieldModule(model=model, training={"ema": {"enabled": False}},
                              dtype="float64")
    assert module.hparams["model_class"] == "GauntEquiformerV2"
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "epoch": 0, "pytorch-lightning_version": "2.5", "optimizer_states": []}
    torch.save(ckpt, tmp_path / "run.ckpt")
    from_ckpt, _ = load_any_model(tmp_path / "run.ckpt")
    save_model(tmp_path / "model.pt", model)
    from_file = load_model(tmp_path / "model.pt")
    assert type(from_file) is GauntEquiformerV2 and from_file.config == model.config
    atoms = Atoms("COH", positions=[[0, 0, 0], [1.2, 0.1, 0], [-0.3, 0.9, 0.2]])
    from test_model import batch_of

    ref = model(batch_of(atoms))
    for other in (from_ckpt, from_file):
        out = other(batch_of(atoms))
        torch.testing.assert_close(out["energy"], ref["energy"], rtol=0, atol=1e-12)
        torch.testing.assert_close(out["forces"], ref["forces"], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=gaunt_equiformer_v2_small", "+model.correlation=3"], "model.correlation"),
        (["model=gaunt_mace_small", "+model.mmax=2"], "model.mmax"),
        (["model=gaunt_equiformer_v2_small", "model.architecture=gaunt_macee"],
         "model.architecture='gaunt_macee'"),
    ],
)
def test_unknown_keys_are_rejected_per_architecture(overrides, message):
    from forcefield.training.train import validate_train_config

    cfg = compose_config("train", overrides)
    with pytest.raises(ConfigError, match=message):
        validate_train_config(cfg)


def test_loss_kinds_mae_and_l2mae():
    from torch_geometric.data import Batch, Data

    from forcefield.training.losses import LossConfig, compute_loss

    graphs = [Data(energy=torch.tensor([1.0]), forces=torch.tensor([[3.0, 4.0, 0.0]]),
                   natoms=torch.tensor([1]), pos=torch.zeros(1, 3)),
              Data(energy=torch.tensor([-2.0]),
                   forces=torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
                   natoms=torch.tensor([2]), pos=torch.zeros(2, 3))]
    batch = Batch.from_data_list(graphs)
    pred = {"energy": torch.tensor([0.0, 0.0]), "forces": torch.zeros(3, 3)}
    cfg = LossConfig(energy_weight=2.0, forces_weight=100.0, energy_kind="mae",
                     forces_kind="l2mae", energy_per_atom=False, normalizer=2.0)
    loss, terms = compute_loss(batch, pred, cfg)
    # energies |1|, |-2| -> 1.5 / 2; per-atom force norms 5, 1, 0 -> 2 / 2
    assert float(terms["energy"]) == pytest.approx(0.75)
    assert float(terms["forces"]) == pytest.approx(1.0)
    assert float(loss) == pytest.approx(2 * 0.75 + 100 * 1.0)
    _, terms = compute_loss(batch, pred, LossConfig(kind="mae"))  # per atom, componentwise
    assert float(terms["energy"]) == pytest.approx((1.0 + 1.0) / 2)
    assert float(terms["forces"]) == pytest.approx(8.0 / 9.0)
    with pytest.raises(ValueError, match="training.loss.forces_kind"):
        LossConfig(forces_kind="l3")


def test_build_model_resolves_every_preset_by_name():
    """``build_model({"name": preset})`` builds that preset whatever its architecture (the
    GauntEquiformerV2 presets once became a default GauntMACE here); a null given keeps the
    constructor's default; a name that is no preset, without an architecture, is refused."""
    from forcefield.models import preset_config

    stats = {"species": [1, 6, 7, 8], "e0s": {1: -1.0, 6: -2.0, 7: -3.0, 8: -4.0},
             "avg_num_neighbors": 10.0, "mean_interaction_energy_per_atom": 0.0,
             "force_rms": 1.0}
    small = build_model({"name": "gaunt_equiformer_v2_small"}, stats)
    preset = preset_config("gaunt_equiformer_v2_small")
    assert isinstance(small, GauntEquiformerV2)
    for key in ("lmax", "channels", "num_layers", "ffn_grid_degree", "selfmix"):
        assert small.config[key] == preset[key]
    uncapped = build_model({"name": "gaunt_equiformer_v2_31m", "max_neighbors": None,
                            "num_layers": 1, "channels": 8, "ffn_hidden": 8,
                            "edge_channels": 8, "num_radial": 8}, stats)
    assert preset_config("gaunt_equiformer_v2_31m")["max_neighbors"] == 20
    assert uncapped.config["max_neighbors"] is None and uncapped.config["lmax"] == 4
    assert isinstance(build_model({"name": "gaunt_mace_small"}, stats), GauntMACE)
    with pytest.raises(ValueError, match="'gaunt_equiformer_v2_smal' is neither a preset"):
        build_model({"name": "gaunt_equiformer_v2_smal"}, stats)
