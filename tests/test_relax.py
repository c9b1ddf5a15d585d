"""`forcefield relax`: optimisers, fixed atoms, cell relaxation, many structures, IS2RE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.io import read, write
from helpers import TINY

from forcefield.cli import relax as relax_cli
from forcefield.export import save_model
from forcefield.relax import relax_structures, summarize

FMAX = 0.02


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny float64 model for H, C, O, Cu with random (perturbed) weights saved as model.pt:
    relaxation is about the optimiser, the constraints and the bookkeeping, not accuracy."""
    from forcefield.models import build_model

    torch.manual_seed(0)
    cfg = dict(TINY, species=[1, 6, 8, 29],
               e0s={1: -13.6, 6: -1029.4, 8: -2041.8, 29: -1000.0})
    model = build_model(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("relax_model") / "model.pt"
    save_model(path, model.eval())
    return path


def _slab():
    from forcefield.data.synthetic import emt_slab

    return emt_slab(np.random.default_rng(3), size=(2, 2, 3), metal="Cu", adsorbate="O",
                    rattle=0.1)


def _molecule():
    mol = molecule("CH3OH")
    mol.rattle(0.1, seed=1)
    return mol


def _run(tmp_path: Path, model_file: Path, frames, *extra: str, capsys=None) -> tuple[int, dict]:
    src = tmp_path / "in.extxyz"
    write(src, frames, format="extxyz")
    out = tmp_path / "out"
    code = relax_cli.main([f"model={model_file}", f"structure={src}", f"output_dir={out}",
                           "progress=false", *extra])
    summary = json.loads((out / "relax_summary.json").read_text()) if code == 0 else {}
    return code, summary


def _free_fmax(atoms, calc) -> float:
    """Largest force on a free atom, from a fresh calculator (not the relaxation's)."""
    atoms = atoms.copy()
    atoms.calc = calc
    forces = atoms.get_forces(apply_constraint=False)
    free = np.ones(len(atoms), bool)
    for c in atoms.constraints:
        free[c.get_indices()] = False
    return float(np.linalg.norm(forces[free], axis=1).max())


def test_molecule_and_slab_converge_and_fixed_atoms_stay(model_file, tmp_path):
    from forcefield import ForceFieldCalculator

    calc = ForceFieldCalculator(model_file)
    code, summary = _run(tmp_path, model_file, [_molecule(), _slab()], f"fmax={FMAX}",
                         "steps=400")
    assert code == 0
    frames = read(tmp_path / "in.extxyz", ":")  # the input as the command read it
    fixed = frames[1].constraints[0].get_indices()
    assert len(fixed) > 0
    assert _free_fmax(frames[0], calc) > 3 * FMAX and _free_fmax(frames[1], calc) > 3 * FMAX
    assert summary["totals"]["n_structures"] == 2 and summary["totals"]["n_converged"] == 2
    finals = read(tmp_path / "out" / "relaxed.extxyz", ":")
    for record, initial, final in zip(summary["structures"], frames, finals, strict=True):
        assert record["converged"] and 0 < record["steps"] <= 400
        assert record["fmax_eV_A"] < FMAX
        assert _free_fmax(final, calc) < FMAX  # recomputed on the written structure
        assert record["energy_eV"] < record["initial_energy_eV"]
        final.calc = calc
        assert final.get_potential_energy() == pytest.approx(record["energy_eV"], abs=1e-8)
        traj = read(tmp_path / "out" / record["trajectory"], ":")
        assert len(traj) == record["steps"] + 1
        np.testing.assert_allclose(traj[0].positions, initial.positions, atol=1e-12)
        np.testing.assert_allclose(traj[-1].positions, final.positions, atol=1e-6)
    # the slab's fixed atoms did not move at all; its free atoms did
    slab, relaxed = frames[1], finals[1]
    assert np.array_equal(relaxed.positions[fixed], slab.positions[fixed])
    free = np.setdiff1d(np.arange(len(slab)), fixed)
    assert np.abs(relaxed.positions[free] - slab.positions[free]).max() > 1e-3
    assert [c.get_indices().tolist() for c in relaxed.constraints] == [fixed.tolist()]
    assert not list((tmp_path / "out").rglob(".*"))  # no temporary files left


@pytest.mark.parametrize("optimizer", ["BFGS", "LBFGS"])
def test_other_optimizers(model_file, tmp_path, optimizer):
    code, summary = _run(tmp_path, model_file, [_molecule()], f"optimizer={optimizer}",
                         f"fmax={FMAX}", "steps=300", "trajectories=false")
    assert code == 0 and summary["totals"]["n_converged"] == 1
    assert summary["settings"]["optimizer"] == optimizer
    assert summary["structures"][0]["fmax_eV_A"] < FMAX
    assert not (tmp_path / "out" / "trajectories").exists()


def test_cell_relaxation_reduces_the_stress(model_file, tmp_path):
    from forcefield import ForceFieldCalculator

    crystal = bulk("Cu", "fcc", a=3.7, cubic=True)
    crystal.rattle(0.05, seed=2)
    calc = ForceFieldCalculator(model_file)
    crystal.calc = calc
    s0 = np.abs(crystal.get_stress()).max()
    crystal.calc = None
    code, summary = _run(tmp_path, model_file, [crystal], "relax_cell=true", "fmax=0.002",
                         "steps=300")
    assert code == 0 and summary["totals"]["n_converged"] == 1
    final = read(tmp_path / "out" / "relaxed.extxyz")
    final.calc = calc
    stress = np.abs(final.get_stress()).max()
    assert s0 > 5e-3 and stress < 1e-3  # eV/A^3
    assert summary["structures"][0]["stress_max_eV_A3"] == pytest.approx(stress, abs=1e-9)
    assert final.get_volume() != pytest.approx(crystal.get_volume(), rel=1e-3)


def test_unconverged_structure_is_reported_and_the_others_finish(model_file, tmp_path,
                                                                 capsys):
    from forcefield import ForceFieldCalculator

    calc = ForceFieldCalculator(model_file)
    easy = _molecule()
    relax_structures(calc, [easy], tmp_path / "pre", fmax=FMAX / 2, steps=400, progress=False)
    easy = read(tmp_path / "pre" / "relaxed.extxyz")  # already relaxed: converges at once
    frames = [_slab(), easy, _molecule()]
    code, summary = _run(tmp_path, model_file, frames, f"fmax={FMAX}", "steps=8")
    assert code == 0
    records = summary["structures"]
    assert [r["converged"] for r in records] == [False, True, False]
    assert records[0]["steps"] == 8 and records[0]["fmax_eV_A"] > FMAX
    assert records[1]["steps"] == 0 and records[1]["fmax_eV_A"] < FMAX
    assert summary["totals"]["n_converged"] == 1
    assert summary["totals"]["not_converged"] == [records[0]["name"], records[2]["name"]]
    assert len(read(tmp_path / "out" / "relaxed.extxyz", ":")) == 3
    assert "not converged in 8 steps" in capsys.readouterr().out


def test_is2re_energy_mae_and_ewt(model_file, tmp_path):
    from forcefield import ForceFieldCalculator
    from forcefield.data.synthetic import emt_is2re

    records = emt_is2re(2, seed=1, fmax=0.1, max_steps=30, size=(2, 2, 3), metal="Cu",
                        adsorbate="O")
    code, summary = _run(tmp_path, model_file, records, "fmax=0.05", "steps=30",
                         "trajectories=false")
    assert code == 0
    calc = ForceFieldCalculator(model_file)
    finals = read(tmp_path / "out" / "relaxed.extxyz", ":")
    errors = []
    for rec, final, labelled in zip(summary["structures"], finals, records, strict=True):
        final.calc = calc
        assert rec["reference_energy_eV"] == pytest.approx(labelled.info["y_relaxed"])
        errors.append(final.get_potential_energy() - labelled.info["y_relaxed"])
    totals = summary["totals"]
    assert totals["n_labelled"] == 2
    assert totals["energy_mae_meV"] == pytest.approx(1000 * np.mean(np.abs(errors)), rel=1e-9)
    assert totals["ewt"] == np.mean(np.abs(errors) < 0.02)


def test_summary_totals():
    records = [{"name": n, "converged": c, "steps": s, "energy_error_eV": e}
               for n, c, s, e in (("a", True, 3, 0.01), ("b", False, 5, -0.05),
                                  ("c", True, 0, 0.019))]
    totals = summarize(records)["totals"]
    assert totals["n_converged"] == 2 and totals["total_steps"] == 8
    assert totals["not_converged"] == ["b"]
    assert totals["energy_mae_meV"] == pytest.approx(1000 * (0.01 + 0.05 + 0.019) / 3)
    assert totals["ewt"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("extra, frames, message", [
    (["optimizer=ADAM"], "molecule", "optimizer='ADAM' is not available; choose one of FIRE"),
    (["relax_cell=true"], "molecule", "is not periodic in all three directions"),
    (["fmax=0"], "molecule", "fmax=0.0 must be a positive force"),
    ([], "silicon", "structure 0 (Si2): the model was not trained on Si"),
    (["nsteps=3"], "molecule", "unknown config key 'nsteps'"),
])
def test_bad_settings_are_one_sentence(model_file, tmp_path, capsys, extra, frames, message):
    frame = bulk("Si") if frames == "silicon" else _molecule()
    code, _ = _run(tmp_path, model_file, [frame], *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("forcefield relax: error:") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "relax_summary.json").exists()


def test_missing_structure_file(model_file, tmp_path, capsys):
    code = relax_cli.main([f"model={model_file}", f"structure={tmp_path / 'nope.xyz'}",
                           f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and "nope.xyz" in err and "does not exist" in err


def test_structures_from_an_ase_database(model_file, tmp_path):
    """A dataset source (here an ASE SQLite db) instead of a file of frames."""
    import ase.db

    db = ase.db.connect(tmp_path / "structures.db")
    for seed in (1, 2):
        mol = molecule("H2O")
        mol.rattle(0.05, seed=seed)
        db.write(mol)
    out = tmp_path / "out"
    assert relax_cli.main([f"model={model_file}", f"structure={tmp_path / 'structures.db'}",
                           "steps=3", "progress=false", f"output_dir={out}"]) == 0
    summary = json.loads((out / "relax_summary.json").read_text())
    assert summary["totals"]["n_structures"] == 2
    assert all(0 < r["steps"] <= 3 for r in summary["structures"])
    assert len(list((out / "trajectories").glob("*.traj"))) == 2
