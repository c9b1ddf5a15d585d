"""Molecular dynamics: run_md outputs, `forcefield md`, and NVE energy conservation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from ase import units
from ase.io import read
from helpers import TINY
from helpers import tiny_model as _tiny_model

from forcefield.export import save_model
from forcefield.md import MDError, run_md


def tiny_model(seed: int = 0) -> torch.nn.Module:
    return _tiny_model(seed, perturb=0.0)


@pytest.fixture(scope="module")
def structure(repo_data):
    return repo_data / "3bpa" / "train_300K.xyz"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("md") / "model.pt"
    save_model(path, tiny_model())
    return path


def read_log(path):
    rows = [line.split() for line in path.read_text().splitlines() if not line.startswith("#")]
    return np.array(rows, dtype=float)


def test_nve_outputs(model_path, structure, tmp_path):
    atoms = read(structure, 0)
    summary = run_md(model_path, atoms, ensemble="nve", temperature_K=300, timestep_fs=0.5,
                     steps=25, log_interval=10, output_dir=tmp_path, seed=1, progress=False)
    assert summary["status"] == "ok"
    assert summary["steps"] == 25 and summary["natoms"] == 27
    assert summary["steps_per_second"] > 0
    assert 0 <= summary["max_energy_drift_meV_per_atom"] < 1.0
    assert summary["final_temperature_K"] > 0
    assert json.loads((tmp_path / "md_summary.json").read_text()) == summary
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file
    header = (tmp_path / "md.log").read_text().splitlines()[1]
    for column in ("time[ps]", "Epot[eV]", "Ekin[eV]", "Etot[eV]", "T[K]"):
        assert column in header
    log = read_log(tmp_path / "md.log")
    np.testing.assert_allclose(log[:, 0], [0, 0.005, 0.010, 0.0125])  # steps 0, 10, 20, 25
    np.testing.assert_allclose(log[:, 1] + log[:, 2], log[:, 3], atol=2e-6)
    traj = read(tmp_path / "md.traj", ":")
    assert len(traj) == 4
    # initial velocities: zero total momentum, temperature from Maxwell-Boltzmann
    first = traj[0]
    assert np.abs(first.get_momenta().sum(axis=0)).max() < 1e-10
    assert 100 < first.get_temperature() < 600
    assert traj[-1].get_potential_energy() == pytest.approx(log[-1, 1], abs=1e-5)
    assert atoms.calc is not None and atoms.get_velocities().max() == 0  # input untouched


def test_seed_makes_runs_reproducible(model_path, structure, tmp_path):
    atoms = read(structure, 0)
    a = run_md(model_path, atoms, steps=5, output_dir=tmp_path / "a", seed=3, progress=False)
    b = run_md(model_path, atoms, steps=5, output_dir=tmp_path / "b", seed=3, progress=False)
    assert a["final_total_energy_eV"] == b["final_total_energy_eV"]


def test_langevin_thermostat(model_path, structure, tmp_path):
    atoms = read(structure, 0)
    summary = run_md(model_path, atoms, ensemble="langevin", temperature_K=500, timestep_fs=0.5,
                     steps=20, friction=0.05, log_interval=5, output_dir=tmp_path, progress=False)
    assert summary["ensemble"] == "langevin" and summary["friction_per_fs"] == 0.05
    traj = read(tmp_path / "md.traj", ":")
    assert len(traj) == 5
    com = [a.get_center_of_mass() for a in traj]
    np.testing.assert_allclose(com, np.repeat(com[:1], len(com), axis=0), atol=1e-8)


def test_bad_settings(model_path, structure, tmp_path):
    atoms = read(structure, 0)
    with pytest.raises(MDError, match="unknown ensemble 'npt'"):
        run_md(model_path, atoms, ensemble="npt", output_dir=tmp_path, progress=False)
    with pytest.raises(MDError, match="timestep_fs"):
        run_md(model_path, atoms, timestep_fs=0, output_dir=tmp_path, progress=False)
    with pytest.raises(MDError, match="friction"):
        run_md(model_path, atoms, ensemble="langevin", friction=0, output_dir=tmp_path,
               progress=False)


def test_blow_up_is_reported(model_path, structure, tmp_path):
    atoms = read(structure, 0)
    with pytest.raises(MDError, match="diverged"):
        run_md(model_path, atoms, temperature_K=3000, timestep_fs=20.0, steps=50,
               max_drift_meV_per_atom=5.0, output_dir=tmp_path, progress=False)
    summary = json.loads((tmp_path / "md_summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] < 50


# ------------------------------------------------------------------------- the CLI
def test_cli_md(model_path, structure, tmp_path, capsys):
    from forcefield.cli.main import main

    out = tmp_path / "run"
    code = main(["md", f"model={model_path}", f"structure={structure}", "ensemble=nve",
                 "temperature_K=300", "timestep_fs=0.5", "steps=12", f"output_dir={out}",
                 "log_interval=4", "seed=2", "progress=false"])
    assert code == 0
    assert "MD done: 12 steps" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"md.traj", "md.log", "md_summary.json"}
    summary = json.loads((out / "md_summary.json").read_text())
    assert summary["steps"] == 12 and summary["seed"] == 2
    assert len(read(out / "md.traj", ":")) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing model="),
        (["model={model}"], "missing structure="),
        (["model={tmp}/missing.pt", "structure={structure}"], "model file .*missing.pt does not"),
        (["model={model}", "structure={tmp}/none.xyz"], "structure file .*none.xyz does not"),
        (["model={model}", "structure={tmp}/junk.xyz"], "cannot read a structure from"),
        (["model={structure}", "structure={structure}"], "not a readable torch file"),
        (["model={tmp}/last.ckpt", "structure={structure}"],
         "Lightning checkpoint of another program"),
        (["model={model}", "structure={oc20}"], r"not trained on .*Cu \(Z=29\)"),
        (["model={model}", "structure={structure}", "ensemble=npt"], "unknown ensemble"),
        (["model={model}", "structure={structure}", "steps=ten"], "steps must be an integer"),
        (["model={model}", "structure={structure}", "tempreature_K=3"],
         "unknown config key 'tempreature_K'"),
        (["model={model}", "structure={structure}", "steps"], "key=value"),
    ],
)
def test_cli_md_errors(args, message, model_path, structure, repo_data, tmp_path, capsys):
    from forcefield.cli.md import main

    (tmp_path / "junk.xyz").write_text("not\na structure\n")
    torch.save({"pytorch-lightning_version": "2.6", "state_dict": {}, "optimizer_states": []},
               tmp_path / "last.ckpt")
    fill = {"model": model_path, "structure": structure, "tmp": tmp_path,
            "oc20": repo_data / "oc20" / "oc20_real_frames.extxyz"}
    argv = [a.format(**fill) for a in args] + [f"output_dir={tmp_path}/out", "steps=2"][
        : 2 if not any(a.startswith("steps") for a in args) else 1]
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("forcefield md: error: ")
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "md_summary.json").exists()


def test_cli_md_help(capsys):
    from forcefield.cli.md import main

    assert main(["--help"]) == 0
    assert "forcefield md model=PATH structure=FILE" in capsys.readouterr().out


# --------------------------------------------------------------- energy conservation
def short_trained_model(frames, steps: int = 50):
    """Fit a tiny GauntMACE to a few 3BPA frames (energies + forces), a fixed number of steps."""
    from torch_geometric.loader import DataLoader

    from forcefield.data import AtomicData

    model = tiny_model(0).train()
    graphs = [AtomicData.from_ase(a, TINY["r_max"]) for a in frames]
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        out = model(batch, compute_forces=True, training=True)
        e_loss = (((out["energy"] - batch.energy) / 27.0) ** 2).mean()
        f_loss = ((out["forces"] - batch.forces) ** 2).mean()
        loss = e_loss + 10.0 * f_loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(f_loss.detach()))
    return model.eval(), losses


@pytest.mark.slow
def test_nve_energy_conservation_short_trained_model(structure, tmp_path):
    """500 NVE steps of 0.5 fs on 3BPA at 300 K: max |E_tot - E_0| < 1 meV/atom (float64).

    The model is fitted for 50 Adam steps to 7 DFT frames; the start geometry is the
    model's own minimum near a DFT frame (a short FIRE relaxation: the usual
    equilibration), then velocities are drawn at 300 K.
    """
    from ase.optimize import FIRE

    from forcefield.calculator import ForceFieldCalculator

    frames = read(structure, ":8")
    torch.manual_seed(0)
    model, losses = short_trained_model(frames[1:])
    assert losses[-1] < 0.3 * losses[0]  # it learned the forces (MSE, eV^2/A^2)
    save_model(tmp_path / "model.pt", model, metadata={"data": "7 frames of 3BPA train_300K"})
    start = frames[0].copy()
    start.calc = ForceFieldCalculator(tmp_path / "model.pt", dtype="float64")
    FIRE(start, logfile=None).run(fmax=0.05, steps=200)
    summary = run_md(tmp_path / "model.pt", start, ensemble="nve", temperature_K=300,
                     timestep_fs=0.5, steps=500, log_interval=50, dtype="float64",
                     output_dir=tmp_path / "nve", seed=0, progress=False)
    assert summary["steps"] == 500
    drift = summary["max_energy_drift_meV_per_atom"]
    print(f"NVE 500 x 0.5 fs, 3BPA: max |E_tot - E_0| = {drift:.5f} meV/atom, "
          f"{summary['steps_per_second']:.1f} steps/s, "
          f"T_final {summary['final_temperature_K']:.0f} K")
    assert drift < 1.0
    log = read_log(tmp_path / "nve" / "md.log")
    assert 50 < log[:, 4].mean() < 400  # it moved (equipartition: about 150 K), no blow-up
    assert np.ptp(log[:, 1]) > 100 * units.kB  # the potential energy really fluctuates


def test_md_on_a_periodic_cell(model_path, tmp_path):
    from ase import Atoms

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    atoms = Atoms(numbers=rng.choice([1, 6, 8], size=27), positions=grid * 2.2 + 1.1,
                  cell=np.eye(3) * 6.6, pbc=True)
    summary = run_md(model_path, atoms, ensemble="nve", temperature_K=200, timestep_fs=0.25,
                     steps=10, log_interval=5, output_dir=tmp_path, progress=False)
    assert summary["status"] == "ok" and summary["natoms"] == 27
    traj = read(tmp_path / "md.traj", ":")
    assert len(traj) == 3 and traj[-1].pbc.all()
    assert traj[-1].get_stress().shape == (6,)
