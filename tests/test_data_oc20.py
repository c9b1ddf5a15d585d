"""OC20 readers on the two real frames in every shipped format, plus the OC20 datamodule."""

from __future__ import annotations

import pickle

import lmdb
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from forcefield.data import AtomicData, DataError, iter_records
from forcefield.data.readers import repair_pyg1

OC20 = "oc20"
FORMATS = {
    "extxyz": "oc20_real_frames.extxyz",
    "db": "oc20_real_frames.db",
    "aselmdb": "oc20_real_frames.aselmdb",
    "lmdb_pyg2": "legacy_lmdb/oc20_s2ef_pyg2.lmdb",
    "lmdb_pyg1": "legacy_lmdb/oc20_s2ef_pyg1layout.lmdb",
}
ENERGIES = [-135.66393572, -140.07469344]


def _graphs(path, **kw):
    return [AtomicData.from_ase(a, 6.0, source=s, index=k, required=("energy", "forces"))
            for a, s, k in iter_records(path, **kw)]


@pytest.fixture(scope="module")
def reference(repo_data):
    return _graphs(repo_data / OC20 / FORMATS["extxyz"])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_agrees(fmt, repo_data, reference):
    graphs = _graphs(repo_data / OC20 / FORMATS[fmt])
    assert len(graphs) == 2
    for g, ref, e in zip(graphs, reference, ENERGIES, strict=True):
        assert float(g.energy) == pytest.approx(e, abs=1e-8)
        assert torch.allclose(g.forces, ref.forces, atol=1e-8)
        assert torch.allclose(g.pos, ref.pos, atol=1e-8)
        assert torch.equal(g.atomic_numbers, ref.atomic_numbers)
        assert torch.equal(g.fixed, ref.fixed) and torch.equal(g.tags, ref.tags)
        assert torch.allclose(g.cell, ref.cell, atol=1e-8)
        assert bool(g.pbc.all())
        assert torch.equal(g.edge_index, ref.edge_index)
    assert int(graphs[0].fixed.sum()) == 24 and int(graphs[1].fixed.sum()) == 8
    assert graphs[0].tags.tolist()[:2] == [1, 1] and int(graphs[0].tags.sum()) == 2
    if fmt not in ("extxyz",):
        assert [int(g.sid) for g in graphs] == [0, 1] and [int(g.fid) for g in graphs] == [0, 0]


def test_single_frame_sources_agree(repo_data, reference):
    adslab = _graphs(repo_data / OC20 / "oc20_adslab_fairchem_test_atoms.json")[0]
    slab = _graphs(repo_data / OC20 / "oc20pipeline_slab_27998_vasprun.xml")[0]
    for g, ref in ((adslab, reference[0]), (slab, reference[1])):
        assert float(g.energy) == pytest.approx(float(ref.energy), abs=1e-8)
        assert torch.allclose(g.forces, ref.forces, atol=1e-6)
        assert torch.equal(g.fixed, ref.fixed) and torch.equal(g.tags, ref.tags)


def test_pyg1_pickle_needs_and_gets_repair(repo_data):
    env = lmdb.open(str(repo_data / OC20 / FORMATS["lmdb_pyg1"]), subdir=False, readonly=True,
                    lock=False)
    with env.begin() as txn:
        raw = pickle.loads(txn.get(b"0"))
    env.close()
    with pytest.raises(RuntimeError):
        _ = raw.pos
    fixed = repair_pyg1(raw)
    assert fixed.pos.shape == (34, 3) and fixed.force.shape == (34, 3)


def _write_lmdb(path, datas, length=True):
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, meminit=False)
    with env.begin(write=True) as txn:
        for k, d in enumerate(datas):
            txn.put(str(k).encode(), pickle.dumps(d))
        if length:
            txn.put(b"length", pickle.dumps(len(datas)))
    env.close()


def _oc20_data(atoms, **extra):
    return Data(pos=torch.tensor(atoms.positions), cell=torch.tensor(atoms.cell.array)[None],
                atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.float32),
                natoms=len(atoms), tags=torch.tensor(atoms.get_tags()),
                fixed=torch.zeros(len(atoms)), **extra)


def test_lmdb_directory_without_length_and_is2re(tmp_path):
    from forcefield.data.synthetic import emt_structures

    structs = emt_structures(4, seed=3, kind="slab", size=(2, 2, 3))
    shard_dir = tmp_path / "is2re"
    shard_dir.mkdir()
    datas = [_oc20_data(a, y_init=a.get_potential_energy() + 1.0,
                        y_relaxed=a.get_potential_energy(), sid=10 + k)
             for k, a in enumerate(structs)]
    _write_lmdb(shard_dir / "data.0000.lmdb", datas[:2], length=True)
    _write_lmdb(shard_dir / "data.0001.lmdb", datas[2:], length=False)
    records = list(iter_records(shard_dir, task="is2re"))
    assert len(records) == 4
    e = [a.get_potential_energy() for a, _, _ in records]
    assert e == pytest.approx([a.get_potential_energy() for a in structs])
    assert [a.info["sid"] for a, _, _ in records] == [10, 11, 12, 13]
    with pytest.raises(DataError, match="no energy under 'y'"):
        list(iter_records(shard_dir, task="s2ef"))
    relabelled = list(iter_records(shard_dir, task="s2ef", lmdb_keys={"energy": "y_init"}))
    assert relabelled[0][0].get_potential_energy() == pytest.approx(e[0] + 1.0)


def test_raw_s2ef_txt_reference_subtraction(tmp_path, repo_data):
    src = (repo_data / OC20 / FORMATS["extxyz"]).read_text()
    (tmp_path / "0.extxyz").write_text(src)
    (tmp_path / "0.txt").write_text("random2001,frame12,-100.5\nrandom77,frame3,-120.0\n")
    raw = list(iter_records(tmp_path / "0.extxyz"))
    assert [a.info["sid"] for a, _, _ in raw] == [2001, 77]
    assert [a.info["fid"] for a, _, _ in raw] == [12, 3]
    assert raw[0][0].get_potential_energy() == pytest.approx(ENERGIES[0])
    ref = list(iter_records(tmp_path / "0.extxyz", subtract_reference=True))
    assert ref[0][0].get_potential_energy() == pytest.approx(ENERGIES[0] + 100.5)
    assert ref[1][0].get_potential_energy() == pytest.approx(ENERGIES[1] + 120.0)
    g = AtomicData.from_ase(ref[0][0], 6.0)
    assert int(g.fixed.sum()) == 24 and int(g.sid) == 2001  # move_mask -> fixed
    (tmp_path / "0.txt").write_text("random2001,frame12,-100.5\n")
    with pytest.raises(DataError, match="one line per frame"):
        list(iter_records(tmp_path / "0.extxyz"))
    (tmp_path / "0.txt").write_text("random2001;frame12\nx\n")
    with pytest.raises(DataError, match="line 1"):
        list(iter_records(tmp_path / "0.extxyz"))


def test_move_mask_and_fixed_arrays():
    from ase import Atoms

    from forcefield.data import fixed_mask

    a = Atoms("H3", positions=np.eye(3))
    a.arrays["move_mask"] = np.array([True, False, True])
    assert fixed_mask(a).tolist() == [False, True, False]
    b = Atoms("H3", positions=np.eye(3))
    b.arrays["fixed"] = np.array([1, 0, 0])
    assert fixed_mask(b).tolist() == [True, False, False]


def test_oc20_datamodule_default_sample_and_sources(repo_data, tmp_path):
    from forcefield.data import OC20DataModule

    dm = OC20DataModule(batch_size=2, stats_cache=False)
    dm.setup("fit")
    assert dm.test_split_names == ["oc20_sample"]
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 2 and batch.fixed.dtype == torch.bool
    st = dm.statistics
    assert st.e0s_source == "zero" and st.species == [6, 8, 13, 29, 34, 75, 77]
    free = torch.cat([g.forces[~g.fixed] for g in dm.train_data])
    assert st.force_rms == pytest.approx(float(free.pow(2).mean().sqrt()), rel=1e-12)
    d = repo_data / OC20
    dm = OC20DataModule(train=[str(d / FORMATS["lmdb_pyg1"])],
                        valid=str(d / "legacy_lmdb" / "*pyg2.lmdb"),
                        test={"aselmdb": str(d / FORMATS["aselmdb"]), "db": str(d / FORMATS["db"])},
                        stats_cache=False, r_max=5.0)
    dm.setup()
    assert dm.test_split_names == ["aselmdb", "db"]
    loaders = dm.test_dataloader()
    assert [sum(b.num_graphs for b in ld) for ld in loaders] == [2, 2]
    dm = OC20DataModule(train=str(d / "legacy_lmdb"), task="is2re", stats_cache=False,
                        valid=str(d / FORMATS["db"]), test=[str(d / FORMATS["db"])],
                        lmdb_keys={"energy": "y"})
    dm.setup()
    assert len(dm.train_data) == 4 and dm.test_split_names == ["oc20_real_frames"]
    with pytest.raises(DataError, match="task"):
        OC20DataModule(task="s2re")
