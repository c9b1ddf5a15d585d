"""OC20 S2EF and IS2RE: train and evaluate on the embedded real frames and synthetic EMT slabs."""

from __future__ import annotations

import json

import ase.db
import pytest

from forcefield.cli import evaluate as evaluate_cli
from forcefield.cli import train as train_cli
from forcefield.data.synthetic import emt_is2re, emt_structures

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
        "export.dtype=null",  # model.pt in the training dtype: evaluate repeats the test
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


# --------------------------------------------------------------------------- IS2RE
IS2RE_KEYS = ("energy_mae_meV", "energy_rmse_meV", "ewt", "n_structures")


def _write_is2re_lmdb(path, frames):
    """OC20's legacy IS2RE LMDB layout: pickled PyG Data with pos (initial), y_init,
    y_relaxed, pos_relaxed, cell [1, 3, 3], atomic_numbers (float), tags, fixed, sid."""
    import pickle

    import lmdb
    import numpy as np
    import torch
    from torch_geometric.data import Data

    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, meminit=False)
    with env.begin(write=True) as txn:
        for k, a in enumerate(frames):
            fixed = np.zeros(len(a))
            for c in a.constraints:
                fixed[c.get_indices()] = 1.0
            d = Data(pos=torch.tensor(a.positions, dtype=torch.float32),
                     pos_relaxed=torch.tensor(a.arrays["pos_relaxed"], dtype=torch.float32),
                     cell=torch.tensor(a.cell.array, dtype=torch.float32)[None],
                     atomic_numbers=torch.tensor(a.numbers, dtype=torch.float32),
                     natoms=len(a), tags=torch.tensor(a.get_tags()),
                     fixed=torch.tensor(fixed), y_init=a.info["y_init"],
                     y_relaxed=a.info["y_relaxed"], sid=int(a.info["sid"]))
            txn.put(str(k).encode(), pickle.dumps(d))
        txn.put(b"length", pickle.dumps(len(frames)))
    env.close()


@pytest.fixture(scope="module")
def is2re(tmp_path_factory):
    """Synthetic IS2RE data: EMT slab + adsorbate structures, each labelled with the energy
    after an EMT relaxation. Train: legacy LMDB shards; valid/test: an ASE db whose rows
    also carry the initial structure's EMT forces (which IS2RE must ignore)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    root = tmp_path_factory.mktemp("is2re")
    frames = emt_is2re(24, seed=5, size=(2, 2, 3))
    # six test structures whose elements all occur in the other 18 (the training set)
    test = []
    for a in reversed(frames):
        rest = {int(z) for b in frames if all(b is not t for t in [a, *test]) for z in b.numbers}
        if len(test) < 6 and set(a.numbers.tolist()) <= rest:
            test.append(a)
    train = [a for a in frames if not any(a is b for b in test)]
    assert len(test) == 6 and len(train) == 18
    shards = root / "train"
    shards.mkdir()
    _write_is2re_lmdb(shards / "data.0000.lmdb", train[:9])
    _write_is2re_lmdb(shards / "data.0001.lmdb", train[9:])
    with ase.db.connect(root / "test.db") as db:
        for a in test:
            initial_forces = EMT().get_forces(a.copy())
            row = a.copy()
            row.calc = SinglePointCalculator(row, energy=a.info["y_relaxed"],
                                             forces=initial_forces)
            db.write(row, sid=int(a.info["sid"]))
    return {"root": root, "train": train, "test": test}


def test_is2re_records_are_relaxations():
    """The synthetic IS2RE label is a relaxed energy: below the initial one, reached with
    the fixed atoms in place and free-atom forces under the threshold."""
    from ase.calculators.emt import EMT

    frames = emt_is2re(3, seed=2, size=(2, 2, 3), fmax=0.05)
    for a in frames:
        assert a.get_potential_energy() == a.info["y_relaxed"] < a.info["y_init"]
        relaxed = a.copy()
        relaxed.positions = a.arrays["pos_relaxed"]
        relaxed.calc = EMT()
        assert relaxed.get_potential_energy() == pytest.approx(a.info["y_relaxed"], abs=1e-9)
        fixed = a.constraints[0].get_indices()
        assert (relaxed.positions[fixed] == a.positions[fixed]).all()
        assert abs(relaxed.get_forces()).max() < 0.05  # FixAtoms zeroes the fixed rows


def test_oc20_is2re_train_and_evaluate(is2re, tmp_path, capsys):
    """``forcefield train data=oc20 data.task=is2re`` on energies only, then ``forcefield
    evaluate`` reproduces its test metrics; MAE and EwT match the written predictions."""
    import numpy as np
    from ase.io import read

    root = is2re["root"]
    out = tmp_path / "run"
    args = [
        "experiment=oc20_is2re",
        f"data.train={root / 'train'}",
        f"data.valid={root / 'test.db'}",
        f"data.test={{is2re_test: {root / 'test.db'}}}",
        "data.batch_size=6",
        "data.stats_cache=false",
        "model.channels=8",
        "model.radial_mlp=[8]",
        "model.lmax_sh=2",
        "model.correlation=2",
        "training.optimizer.lr=0.01",
        "trainer.max_epochs=4",
        "trainer.enable_progress_bar=false",
        f"output_dir={out}",
    ]
    assert train_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "EwT" in printed and "is2re_test" in printed and "F RMSE" not in printed
    summary = json.loads((out / "metrics.json").read_text())
    metrics = summary["test"]["is2re_test"]
    for key in IS2RE_KEYS:
        assert key in metrics, key
    assert not any(k.startswith("forces") or k == "efwt" for k in metrics)
    assert metrics["n_structures"] == 6 and 0.0 <= metrics["ewt"] <= 1.0
    # energies only: the statistics saw no forces (the db's initial forces were ignored)
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["force_rms"] == 0.0 and stats["num_structures"] == 18
    assert (out / "parity_energy.png").is_file() and not (out / "parity_forces.png").exists()
    # the model learned the relaxed energies: better than the constant mean of the targets
    e_test = np.array([a.info["y_relaxed"] for a in is2re["test"]])
    e_mean = np.mean([a.info["y_relaxed"] for a in is2re["train"]])
    baseline_mae = 1000 * np.mean(np.abs(e_test - e_mean))
    print(f"IS2RE test MAE {metrics['energy_mae_meV']:.1f} meV, EwT {metrics['ewt']:.3f}; "
          f"mean-of-targets baseline {baseline_mae:.1f} meV")
    assert metrics["energy_mae_meV"] < baseline_mae

    ev = tmp_path / "eval"
    rc = evaluate_cli.main([f"model={out / 'model.pt'}", "data=oc20", "data.task=is2re",
                            f"data.test={{is2re_test: {root / 'test.db'}}}",
                            f"output_dir={ev}"])
    assert rc == 0
    assert "EwT" in capsys.readouterr().out
    got = json.loads((ev / "metrics.json").read_text())["test"]["is2re_test"]
    assert set(got) == set(metrics)
    for key in IS2RE_KEYS:
        assert got[key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9)
    # the metrics are those of the written predictions against the relaxed energies
    preds = read(ev / "predictions_is2re_test.extxyz", ":")
    de = np.array([p.get_potential_energy() - p.info["ref_energy"] for p in preds])
    assert np.allclose([p.info["ref_energy"] for p in preds], e_test)
    assert got["energy_mae_meV"] == pytest.approx(1000 * np.mean(np.abs(de)), rel=1e-9)
    assert got["ewt"] == pytest.approx(np.mean(np.abs(de) < 0.02))
