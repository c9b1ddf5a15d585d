"""OC20 S2EF: train and evaluate on the embedded real frames plus synthetic EMT slabs."""

from __future__ import annotations

import json

import ase.db
import pytest

from forcefield.cli import evaluate as evaluate_cli
from forcefield.cli import train as train_cli
from forcefield.data.synthetic import emt_structures

S2EF_KEYS = ("energy_mae_meV", "forces_mae_meV_A", "forces_cos", "efwt", "n_structures")


@pytest.fixture(scope="module")
def slabs(tmp_path_factory):
    root = tmp_path_factory.mktemp("oc20")
    frames = emt_structures(8, seed=3, kind="slab", size=(2, 2, 3))
    for name, part in (("train.db", frames[:6]), ("test.db", frames[6:])):
        with ase.db.connect(root / name) as db:
            for atoms in part:
                db.write(atoms)
    return root


def test_oc20_s2ef_train_and_evaluate(slabs, repo_data, tmp_path, capsys):
    sample = repo_data / "oc20" / "oc20_real_frames.extxyz"
    out = tmp_path / "run"
    args = [
        "experiment=oc20_s2ef",
        f"data.train=[{slabs / 'train.db'},{sample}]",
        f"data.valid={slabs / 'test.db'}",
        f"data.test={{emt: {slabs / 'test.db'}, oc20_sample: {sample}}}",
        "data.batch_size=4",
        "data.stats_cache=false",
        "model.channels=8",
        "model.radial_mlp=[8]",
        "model.lmax_sh=2",
        "trainer.max_epochs=1",
        f"output_dir={out}",
    ]
    assert train_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "EFwT" in printed and "oc20_sample" in printed
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert set(metrics) == {"emt", "oc20_sample"}
    for split in metrics.values():
        for key in S2EF_KEYS:
            assert key in split, key
        assert -1.0 <= split["forces_cos"] <= 1.0 and 0.0 <= split["efwt"] <= 1.0
    assert metrics["emt"]["n_structures"] == 2 and metrics["oc20_sample"]["n_structures"] == 2
    for name in ("model.pt", "parity_energy.png", "parity_forces.png"):
        assert (out / name).is_file()

    ev = tmp_path / "eval"
    rc = evaluate_cli.main([f"model={out / 'model.pt'}", "data=oc20",
                            f"data.test={{emt: {slabs / 'test.db'}}}", f"output_dir={ev}"])
    assert rc == 0
    got = json.loads((ev / "metrics.json").read_text())["test"]["emt"]
    for key in S2EF_KEYS:
        assert got[key] == pytest.approx(metrics["emt"][key], rel=1e-6, abs=1e-9)
    assert (ev / "predictions_emt.extxyz").is_file()


def test_fixed_atoms_do_not_count(slabs, tmp_path):
    """Force metrics use free atoms only: corrupting fixed-atom forces changes nothing."""
    import torch
    from torch_geometric.loader import DataLoader

    from forcefield.data import AtomicData
    from forcefield.training.metrics import MetricAccumulator

    with ase.db.connect(slabs / "test.db") as db:
        atoms = [row.toatoms() for row in db.select()]
    graphs = [AtomicData.from_ase(a, r_max=5.0) for a in atoms]
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    assert batch.fixed.any() and (~batch.fixed).any()
    pred = {"energy": batch.energy.clone(), "forces": batch.forces.clone()}
    pred["forces"][batch.fixed] += 5.0
    acc = MetricAccumulator()
    acc.update(batch, pred)
    out = acc.compute(oc20=True)
    assert out["forces_mae_meV_A"] == 0.0 and out["efwt"] == 1.0
    assert out["forces_cos"] == pytest.approx(1.0)
    assert torch.is_tensor(batch.fixed)
