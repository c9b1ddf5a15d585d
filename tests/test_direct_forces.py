"""Direct-force models used safely: the calculator, `forcefield md` and `forcefield relax`
refuse them unless allowed (then one warning; relax: FIRE only), and the eSEN recipe
(train direct, then `forcefield train init_from=direct/model.pt model.forces=gradient`)
gives a conservative model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_equiformer import make_eqv2
from test_equiformer_cli import TINY_EQ
from test_model import random_molecule

from forcefield.calculator import ForceFieldCalculator
from forcefield.cli import md as md_cli
from forcefield.cli import relax as relax_cli
from forcefield.cli import train as train_cli
from forcefield.direct_forces import DirectForcesError, DirectForcesWarning
from forcefield.export import load_model, save_model


@pytest.fixture(scope="module")
def direct_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("direct") / "model.pt"
    save_model(path, make_eqv2(forces="direct"))
    return path


@pytest.fixture(scope="module")
def molecule_file(tmp_path_factory) -> Path:
    from ase.io import write

    path = tmp_path_factory.mktemp("structure") / "molecule.xyz"
    write(path, random_molecule())
    return path


def test_calculator_refuses_a_direct_model_in_one_sentence(direct_file):
    with pytest.raises(DirectForcesError) as err:
        ForceFieldCalculator(direct_file)
    message = str(err.value)
    assert "\n" not in message
    for part in ("model.forces=gradient", "init_from=", "allow_direct_forces"):
        assert part in message
    with pytest.raises(DirectForcesError):  # a committee with one direct member too
        ForceFieldCalculator([make_eqv2(), load_model(direct_file)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ForceFieldCalculator(make_eqv2()).direct_forces is False


def test_calculator_allowed_warns_once(direct_file):
    with pytest.warns(DirectForcesWarning) as record:
        calc = ForceFieldCalculator(direct_file, allow_direct_forces=True)
        atoms = random_molecule()
        atoms.calc = calc
        for _ in range(3):
            atoms.positions[0, 0] += 0.01
            assert np.isfinite(atoms.get_forces()).all()
    assert len(record) == 1 and calc.direct_forces


def test_cli_md_and_relax_refuse_with_exit_code_2(direct_file, molecule_file, tmp_path,
                                                   capsys):
    common = [f"model={direct_file}", f"structure={molecule_file}", "progress=false"]
    assert md_cli.main([*common, "steps=2", f"output_dir={tmp_path / 'md'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.forces=gradient" in err and "Traceback" not in err
    assert relax_cli.main([*common, f"output_dir={tmp_path / 'relax'}"]) == 2
    assert "allow_direct_forces=true" in capsys.readouterr().err
    # allowed: FIRE only
    allowed = [*common, "allow_direct_forces=true"]
    assert relax_cli.main([*allowed, "optimizer=BFGS", f"output_dir={tmp_path / 'r1'}"]) == 2
    err = capsys.readouterr().err
    assert "optimizer=BFGS" in err and "optimizer=FIRE" in err
    with pytest.warns(DirectForcesWarning):
        assert relax_cli.main([*allowed, "steps=3", f"output_dir={tmp_path / 'r2'}"]) == 0
        assert md_cli.main([*allowed, "steps=2", f"output_dir={tmp_path / 'md2'}"]) == 0


def test_init_from_may_change_only_model_forces(direct_file, tmp_path, capsys):
    args = [f"init_from={direct_file}", f"output_dir={tmp_path / 'run'}"]
    assert train_cli.main([*args, "model.lmax=3"]) == 2
    err = capsys.readouterr().err
    assert "model.lmax cannot change with init_from=" in err and "model.forces" in err
    from helpers import tiny_model  # a GauntMACE: gradient forces only

    mace = tmp_path / "mace.pt"
    save_model(mace, tiny_model())
    assert train_cli.main([f"init_from={mace}", "model.forces=gradient",
                           f"output_dir={tmp_path / 'run2'}"]) == 2
    assert "has no 'forces' setting" in capsys.readouterr().err


def _gradient_forces_rmse(model: torch.nn.Module, frames) -> float:
    """RMSE (eV/A) of -dE/dx of ``model`` (a direct model's energy read as a potential)."""
    from forcefield.models import build_model

    net = build_model(dict(model.config, forces="gradient")).double().eval()
    net.load_state_dict(model.state_dict())  # a direct model's force head is dropped
    calc = ForceFieldCalculator(net, dtype="float64")
    errors = []
    for atoms in frames:
        reference = atoms.get_forces()
        atoms = atoms.copy()
        atoms.calc = calc
        errors.append(atoms.get_forces() - reference)
    return float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


@pytest.mark.slow
def test_esen_recipe_direct_then_gradient(repo_data, tmp_path):
    """Train direct, fine-tune with model.forces=gradient: the gradient-force error falls
    below the loaded model's, and the result conserves energy in NVE (500 steps)."""
    from ase.io import read

    from forcefield.md import run_md

    quick = ["test.enabled=false", "training.stage_two.enabled=false", "dtype=float64",
             "data.train_size=20", "trainer.max_epochs=2"]
    direct = tmp_path / "direct"
    assert train_cli.main([*TINY_EQ, *quick, "model.forces=direct",
                           f"output_dir={direct}"]) == 0
    tuned = tmp_path / "gradient"
    # the conversion is no small correction: the from-scratch schedule, not the fine-tuning
    # recipe (its low learning rate and slow EMA barely move a model in 8 short epochs)
    assert train_cli.main([*quick, f"init_from={direct / 'model.pt'}", "model.forces=gradient",
                           "finetune.recipe=null", "trainer.max_epochs=8",
                           f"output_dir={tuned}"]) == 0
    before, after = load_model(direct / "model.pt"), load_model(tuned / "model.pt")
    assert before.config["forces"] == "direct" and after.config["forces"] == "gradient"
    assert after.force_head is None
    frames = read(repo_data / "3bpa" / "train_300K.xyz", "-10:")
    error_before = _gradient_forces_rmse(before, frames)
    error_after = _gradient_forces_rmse(after, frames)
    assert error_after < 0.9 * error_before, (error_before, error_after)  # 0.834 measured

    summary = run_md(tuned / "model.pt", frames[0], ensemble="nve", temperature_K=300,
                     timestep_fs=0.5, steps=500, output_dir=tmp_path / "md", progress=False,
                     log_interval=50)
    assert summary["steps"] == 500
    assert summary["max_energy_drift_meV_per_atom"] < 1.0  # 0.066 measured
    saved = json.loads((tmp_path / "md" / "md_summary.json").read_text())
    assert saved["max_energy_drift_meV_per_atom"] == summary["max_energy_drift_meV_per_atom"]
