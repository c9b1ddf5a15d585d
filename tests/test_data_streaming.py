"""The streaming data layer: sharded datasets, metadata, workers, sampler, statistics."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from forcefield.data import DataError, build_graphs, iter_records
from forcefield.data.metadata import METADATA_NAME, build_metadata
from forcefield.data.neighbours import neighbour_list
from forcefield.data.sampler import BudgetBatchSampler
from forcefield.data.shards import close_lmdb_envs
from forcefield.data.statistics import StatisticsAccumulator, compute_statistics
from forcefield.data.streaming import StreamingDataset, collate_graphs
from forcefield.data.synthetic import oc20_like
from forcefield.data.writers import ShardedAseLmdbWriter

N_SYNTH = 2000
DELETED_ID = 7  # a row id deleted from the first shard after writing


def write_shards(directory, n: int, seed: int = 0, shard_size: int = 700) -> None:
    with ShardedAseLmdbWriter(directory, shard_size=shard_size) as writer:
        for atoms in oc20_like(n, seed=seed):
            writer.write(atoms, key_value_pairs={"sid": atoms.info["sid"],
                                                 "fid": atoms.info["fid"]})


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory):
    """2,000 OC20-like structures (20-120 atoms, slabs with FixAtoms and bulk cells with
    stress) in 3 .aselmdb shards, one row deleted, metadata.npz rebuilt."""
    import ase.db

    root = tmp_path_factory.mktemp("shards") / "train"
    write_shards(root, N_SYNTH)
    db = ase.db.connect(str(root / "data.0000.aselmdb"), use_lock_file=False)
    db.delete([DELETED_ID])
    db.close()
    for lock in root.glob("*-lock"):
        lock.unlink()
    (root / METADATA_NAME).unlink()
    build_metadata(root, progress=False)
    return root


def _same_graph(a, b) -> None:
    assert set(a.keys()) == set(b.keys()), (sorted(a.keys()), sorted(b.keys()))
    for key in a.keys():
        va, vb = a[key], b[key]
        assert va.dtype == vb.dtype, key
        assert torch.equal(va, vb), key


# --------------------------------------------------------------------------- layout
def test_fixture_layout(shard_dir):
    names = sorted(p.name for p in shard_dir.iterdir())
    assert names == ["data.0000.aselmdb", "data.0001.aselmdb", "data.0002.aselmdb", METADATA_NAME]
    ds = StreamingDataset(shard_dir, 6.0, progress=False)
    assert len(ds) == N_SYNTH - 1
    assert ds.natoms.dtype == np.int32 and 20 <= ds.natoms.min() and ds.natoms.max() <= 120
    with np.load(shard_dir / METADATA_NAME) as meta:
        assert meta["shard_lengths"].tolist() == [699, 700, 600]
        assert len(meta["natoms"]) == len(ds)
    sids = [int(ds[i].sid) for i in (DELETED_ID - 2, DELETED_ID - 1)]
    assert sids == [DELETED_ID - 2, DELETED_ID]  # row id 7 (sid 6) is gone
    kinds = {bool(ds[i].fixed.any()) for i in range(4)} | {"stress" in ds[i] for i in range(4)}
    assert kinds == {True, False}


# --------------------------------------------------------------------------- parity
def test_streamed_graphs_equal_in_memory_graphs(shard_dir):
    ds = StreamingDataset(shard_dir, 6.0, progress=False)
    reference = build_graphs(iter_records(shard_dir), 6.0, name="reference")
    # in memory, stress is dropped because only the bulk cells carry it; compare the rest
    assert len(reference) == len(ds)
    for i in np.random.default_rng(0).choice(len(ds), 150, replace=False):
        g = ds[int(i)]
        if "stress" in g:
            del g["stress"]
        _same_graph(g, reference[int(i)])


@pytest.mark.parametrize("name", ["oc20_real_frames.aselmdb", "oc20_real_frames.db",
                                  "legacy_lmdb/oc20_s2ef_pyg2.lmdb",
                                  "legacy_lmdb/oc20_s2ef_pyg1layout.lmdb"])
def test_real_frames_parity(name, repo_data, tmp_path):
    src = repo_data / "oc20" / name
    local = tmp_path / src.name  # a private copy: metadata.npz is written beside it
    shutil.copy(src, local)
    ds = StreamingDataset(local, 6.0, max_neighbors=20, progress=False)
    reference = build_graphs(iter_records(src), 6.0, max_neighbors=20)
    assert len(ds) == len(reference) == 2
    for k in range(2):
        _same_graph(ds[k], reference[k])
    assert [int(ds[k].fixed.sum()) for k in range(2)] == [24, 8]


def test_row_decoder_matches_ase_toatoms(repo_data, tmp_path):
    """The direct row decoder (no ase.Atoms) equals ase-db-backends' row.toatoms()."""
    import ase.db

    from forcefield.data.atomic_data import structure_fields
    from forcefield.data.shards import AseLmdbShard

    path = tmp_path / "frames.aselmdb"
    shutil.copy(repo_data / "oc20" / "oc20_real_frames.aselmdb", path)
    db = ase.db.connect(str(path), readonly=True)
    rows = list(db.select())
    expected = [structure_fields(row.toatoms()) for row in rows]
    db.close()
    decoded = AseLmdbShard(path).read([0, 1])
    close_lmdb_envs(path)
    for row, fields, ref in zip(rows, decoded, expected, strict=True):
        for key, value in ref.items():
            assert np.array_equal(np.asarray(fields[key]), np.asarray(value)), key
        assert fields["sid"] == row.key_value_pairs["sid"]


# --------------------------------------------------------------------------- workers
def _batches(ds, workers: int, context: str | None):
    sampler = BudgetBatchSampler(ds.natoms, max_atoms=400, seed=3)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                        collate_fn=collate_graphs, multiprocessing_context=context)
    return [(b.pos.clone(), b.edge_index.clone(), b.energy.clone()) for b in loader]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_give_identical_batches(shard_dir, context):
    ds = StreamingDataset(shard_dir, 5.0, progress=False).subset(np.arange(0, 1999, 40))
    ds[0], len(ds)  # touch the dataset (and its LMDB env) in the parent before forking
    blob = pickle.dumps(ds)
    assert b"Environment" not in blob and len(blob) < 100_000
    ref = _batches(ds, 0, None)
    got = _batches(ds, 2, context)
    assert len(ref) == len(got) > 3
    for a, b in zip(ref, got, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


# --------------------------------------------------------------------------- sampler
NATOMS = np.random.default_rng(5).integers(20, 121, size=997).astype(np.int32)


@pytest.mark.parametrize("replicas", [1, 2, 3, 8])
@pytest.mark.parametrize("mode", [{"max_atoms": 600}, {"batch_size": 7}])
def test_sampler_covers_every_index_with_equal_counts(replicas, mode):
    natoms = np.concatenate([NATOMS, [700, 650]])  # two oversized structures
    per_rank = []
    for rank in range(replicas):
        s = BudgetBatchSampler(natoms, seed=1, num_replicas=replicas, rank=rank, **mode)
        s.set_epoch(4)
        batches = list(s)
        assert len(batches) == len(s)
        per_rank.append(batches)
        if "max_atoms" in mode:
            assert s.oversized == 2
            for b in batches:
                assert natoms[b].sum() <= 600 or len(b) == 1
    assert len({len(b) for b in per_rank}) == 1  # every rank the same number of batches
    flat = [i for batches in per_rank for b in batches for i in b]
    assert set(flat) == set(range(len(natoms)))
    total = s._num_batches_total()
    padding = (-total) % replicas
    assert len(per_rank[0]) * replicas == total + padding
    assert len(flat) - len(natoms) <= padding * max(len(b) for r in per_rank for b in r)


def test_sampler_is_deterministic_per_seed_and_reshuffles_per_epoch():
    def epoch(seed, e, **kw):
        s = BudgetBatchSampler(NATOMS, seed=seed, **kw)
        s.set_epoch(e)
        return list(s)

    for kw in ({"max_atoms": 500}, {"batch_size": 5}):
        assert epoch(0, 1, **kw) == epoch(0, 1, **kw)
        assert epoch(0, 1, **kw) != epoch(0, 2, **kw)
        assert epoch(0, 1, **kw) != epoch(1, 1, **kw)
        assert len(epoch(0, 1, **kw)) == len(epoch(0, 2, **kw))
    # evaluation: dataset order, no padding, every structure exactly once over the ranks
    ranks = [list(BudgetBatchSampler(NATOMS, max_atoms=500, shuffle=False, pad=False,
                                     num_replicas=3, rank=r)) for r in range(3)]
    flat = sorted(i for r in ranks for b in r for i in b)
    assert flat == list(range(len(NATOMS)))
    assert ranks[0][0][0] == 0 and ranks[1][0][0] == 1
    # fewer batches than ranks: every rank still gets one (structures are dealt, not batches)
    few = [list(BudgetBatchSampler(NATOMS[:6], max_atoms=5000, shuffle=False, pad=False,
                                   num_replicas=2, rank=r)) for r in range(2)]
    assert few == [[[0, 2, 4]], [[1, 3, 5]]]


def test_sampler_resume_mid_epoch_equals_uninterrupted():
    full = BudgetBatchSampler(NATOMS, max_atoms=500, seed=2, num_replicas=2, rank=1)
    full.set_epoch(3)
    reference = list(full)
    resumed = BudgetBatchSampler(NATOMS, max_atoms=500, seed=2, num_replicas=2, rank=1)
    resumed.load_state_dict({"epoch": 3, "start_iter": 11})
    resumed.set_epoch(3)  # Lightning calls this again at the epoch start: keeps the offset
    assert list(resumed) == reference[11:]
    resumed.set_epoch(4)  # the next epoch starts from its beginning
    assert len(list(resumed)) == len(reference)


def test_sampler_packing_at_oc20_scale_is_numpy_only():
    natoms = np.random.default_rng(0).integers(20, 121, size=2_000_000).astype(np.int32)
    s = BudgetBatchSampler(natoms, max_atoms=1500, seed=0)
    assert s._flat.dtype == np.int32 and s._flat.nbytes == 8_000_000  # S2EF-2M: 8 MB
    assert len(s) == len(s._offsets) - 1
    assert abs(len(s) - natoms.sum() / 1500) / len(s) < 0.1


# --------------------------------------------------------------------------- max_neighbors
@pytest.mark.parametrize("k", [1, 8, 20])
def test_max_neighbors_keeps_the_k_nearest(repo_data, k):
    from ase.io import read
    from ase.neighborlist import neighbor_list as ase_nl

    for atoms in read(repo_data / "oc20" / "oc20_real_frames.extxyz", ":"):
        pos, cell = atoms.positions, atoms.cell.array
        full = neighbour_list(pos, cell, atoms.pbc, 12.0)
        capped = neighbour_list(pos, cell, atoms.pbc, 12.0, max_neighbors=k)
        by_ase = neighbour_list(pos, cell, atoms.pbc, 12.0, max_neighbors=k, backend="ase")
        for a, b in zip(capped, by_ase, strict=True):  # the same edges in the same order
            assert np.array_equal(a, b)
        full_set = {(a, b, *s) for a, b, s in zip(full[0], full[1], full[2].tolist(),
                                                   strict=True)}
        capped_set = {(a, b, *s) for a, b, s in zip(capped[0], capped[1], capped[2].tolist(),
                                                     strict=True)}
        assert capped_set <= full_set
        # brute-force reference: ASE's list, sorted per centre by distance, first k
        i, j, d, shifts = ase_nl("ijdS", atoms, 12.0)
        for centre in range(len(atoms)):
            mine = capped[0] == centre
            assert mine.sum() == min(k, int((i == centre).sum()))
            d_ref = np.sort(d[i == centre])[:k]
            vec = pos[capped[1][mine]] - pos[centre] + capped[2][mine] @ cell
            assert np.allclose(np.sort(np.linalg.norm(vec, axis=1)), d_ref, atol=1e-9)


# --------------------------------------------------------------------------- statistics
def test_sample_statistics_over_everything_equal_in_memory(shard_dir):
    ds = StreamingDataset(shard_dir, 5.0, progress=False).subset(np.arange(0, 1999, 5))
    acc = StatisticsAccumulator()
    loader = DataLoader(ds, batch_sampler=BudgetBatchSampler(ds.natoms, batch_size=32,
                                                             shuffle=False, pad=False),
                        collate_fn=collate_graphs)
    graphs = []
    for batch in loader:
        acc.update(batch)
        graphs += batch.to_data_list()
    streamed = acc.finish("least_squares", r_max=5.0)
    full = compute_statistics(graphs, "least_squares", r_max=5.0)
    assert streamed.species == full.species
    assert streamed.num_structures == full.num_structures == len(ds)
    for z in full.species:
        assert streamed.e0s[z] == pytest.approx(full.e0s[z], rel=1e-9, abs=1e-9)
    for key in ("mean_interaction_energy_per_atom", "force_rms", "avg_num_neighbors"):
        assert getattr(streamed, key) == pytest.approx(getattr(full, key), rel=1e-9), key


def test_normal_equation_e0s_equal_lstsq():
    rng = np.random.default_rng(1)
    acc = StatisticsAccumulator()
    rows, energies = [], []
    species = [1, 8, 29, 78]
    from torch_geometric.data import Batch, Data

    graphs = []
    for _ in range(40):
        z = rng.choice(species, size=int(rng.integers(3, 30)))
        e = float(np.sum(np.array([-0.5, -4.0, -3.0, -6.0])[np.searchsorted(species, z)])
                  + rng.normal())
        rows.append([np.sum(z == s) for s in species])
        energies.append(e)
        graphs.append(Data(atomic_numbers=torch.tensor(z),
                           energy=torch.tensor([e], dtype=torch.float64),
                           edge_index=torch.zeros(2, 0, dtype=torch.long),
                           pos=torch.zeros(len(z), 3)))
    acc.update(Batch.from_data_list(graphs))
    ref, *_ = np.linalg.lstsq(np.array(rows, float), np.array(energies), rcond=None)
    e0 = acc.e0s_least_squares()
    assert [e0[z] for z in species] == pytest.approx(ref.tolist(), rel=1e-10, abs=1e-10)


def test_given_statistics_read_no_data(shard_dir, monkeypatch):
    from forcefield.data import OC20DataModule

    def forbidden(*args, **kwargs):
        raise AssertionError("the data was read although every statistic was given")

    given = {"species": [1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79], "e0s": "zero",
             "mean_interaction_energy_per_atom": -0.01, "force_std": 2.887317180633545,
             "avg_num_neighbors": 20.0, "energy_mean": -0.7554450631141663,
             "energy_std": 2.887317180633545}
    dm = OC20DataModule(train=str(shard_dir), valid=str(shard_dir), statistics=given,
                        stats_cache=False, progress=False)
    monkeypatch.setattr(StreamingDataset, "fields", forbidden)
    dm.setup("fit")
    stats = dm.statistics
    assert stats.force_rms == pytest.approx(2.887317180633545)
    assert stats.e0s == {z: 0.0 for z in given["species"]}
    assert stats.extra["source"] == "config" and stats.extra["energy_std"] == pytest.approx(
        2.887317180633545)


def test_datamodule_sample_statistics_and_subsets(shard_dir, tmp_path):
    from forcefield.data import OC20DataModule

    dm = OC20DataModule(train=str(shard_dir), valid_fraction=0.05, valid_samples=30,
                        stats_samples=100, max_atoms=800, cache_dir=str(tmp_path),
                        e0s="least_squares", progress=False, num_workers=0)
    dm.setup("fit")
    assert isinstance(dm.train_data, StreamingDataset) and len(dm.valid_data) == 30
    stats = dm.statistics
    assert stats.num_structures == 100 and stats.extra["source"] == "sample"
    assert stats.extra["sample_size"] == 100
    assert set(stats.species) >= {29} and stats.force_rms == pytest.approx(0.5, rel=0.05)
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert int(batch.natoms.sum()) <= 800
    again = OC20DataModule(train=str(shard_dir), valid_fraction=0.05, valid_samples=30,
                           stats_samples=100, max_atoms=800, cache_dir=str(tmp_path),
                           e0s="least_squares", progress=False)
    again.setup("fit")
    assert again.statistics.extra["source"] == "cache"
    assert again.statistics.e0s == stats.e0s


# --------------------------------------------------------------------------- bad input
def test_corrupt_row_names_shard_and_row(tmp_path):
    import lmdb

    root = tmp_path / "bad"
    write_shards(root, 6, shard_size=3)
    env = lmdb.open(str(root / "data.0001.aselmdb"), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"2", b"not zlib at all")
    env.close()
    ds = StreamingDataset(root, 5.0, progress=False)
    ds[0]
    with pytest.raises(DataError, match=r"row 1 \(id 2\) of shard '.*data.0001.aselmdb' is "
                                        r"corrupt"):
        ds[4]


def test_missing_shard_empty_dir_and_metadata_mismatch(tmp_path):
    root = tmp_path / "set"
    write_shards(root, 6, shard_size=3)
    with pytest.raises(DataError, match="does not exist"):
        StreamingDataset(root / "data.0007.aselmdb", 5.0, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no"):
        StreamingDataset(empty, 5.0, progress=False)
    # a metadata file of another data set: the shard lengths disagree
    other = tmp_path / "other"
    write_shards(other, 5, shard_size=3)
    shutil.copy(other / METADATA_NAME, root / METADATA_NAME)
    with pytest.raises(DataError, match="does not match the data.*forcefield convert --index"):
        StreamingDataset(root, 5.0, progress=False)
    # same lengths, wrong atom counts: caught when the row is read
    (root / METADATA_NAME).unlink()
    build_metadata(root, progress=False)
    with np.load(root / METADATA_NAME) as meta:
        arrays = dict(meta)
    arrays["natoms"] = arrays["natoms"] + 1
    np.savez(root / METADATA_NAME, **arrays)
    ds = StreamingDataset(root, 5.0, progress=False)
    with pytest.raises(DataError, match="metadata says"):
        ds[2]


def test_metadata_goes_to_the_cache_for_a_read_only_directory(tmp_path, monkeypatch):
    import os

    root = tmp_path / "ro"
    write_shards(root, 4, shard_size=2)
    (root / METADATA_NAME).unlink()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(root)
                        else real_access(p, mode))
    ds = StreamingDataset(root, 5.0, cache_dir=tmp_path / "cache", progress=False)
    assert not (root / METADATA_NAME).exists()
    assert len(list((tmp_path / "cache" / "metadata").glob("*.npz"))) == 1
    assert len(ds) == 4


# --------------------------------------------------------------------------- convert
def test_convert_writes_shards_and_metadata(repo_data, tmp_path):
    from forcefield.cli import convert as convert_cli

    out = tmp_path / "converted"
    assert convert_cli.main([str(repo_data / "oc20" / "oc20_real_frames.extxyz"),
                             str(repo_data / "oc20" / "legacy_lmdb"), "-o", str(out),
                             "--shard-size", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["data.0000.aselmdb", "data.0001.aselmdb",
                                                     METADATA_NAME]
    ds = StreamingDataset(out, 6.0, progress=False)
    reference = build_graphs(iter_records([repo_data / "oc20" / "oc20_real_frames.extxyz",
                                           repo_data / "oc20" / "legacy_lmdb"]), 6.0)
    assert len(ds) == len(reference) == 6
    for k in range(6):
        a, b = ds[k], reference[k]
        for key in ("pos", "atomic_numbers", "energy", "forces", "fixed", "edge_index"):
            assert torch.equal(a[key], b[key]), key
    assert convert_cli.main([str(repo_data / "oc20" / "oc20_real_frames.extxyz"),
                             "-o", str(out)]) == 2  # exists: refused, nothing touched
    (out / METADATA_NAME).unlink()
    assert convert_cli.main(["--index", str(out)]) == 0
    assert len(np.load(out / METADATA_NAME)["natoms"]) == 6


def test_convert_raw_s2ef_subtracts_reference(tmp_path):
    from ase.io import write

    from forcefield.cli import convert as convert_cli

    frames = list(oc20_like(4, seed=3))
    raw = tmp_path / "raw"
    raw.mkdir()
    write(raw / "0.extxyz", frames, format="extxyz")
    refs = [-1.5, 2.0, 0.25, -3.0]
    (raw / "0.txt").write_text("".join(f"random{10 + k},frame{k},{r}\n"
                                       for k, r in enumerate(refs)))
    out = tmp_path / "s2ef"
    assert convert_cli.main([str(raw / "*.extxyz"), "-o", str(out),
                             "--subtract-reference"]) == 0
    ds = StreamingDataset(out, 6.0, progress=False)
    for k, atoms in enumerate(frames):
        g = ds[k]
        assert float(g.energy) == pytest.approx(atoms.get_potential_energy() - refs[k],
                                                abs=1e-9)
        assert int(g.sid) == 10 + k and int(g.fid) == k


def test_elements_missing_from_the_statistics_sample_come_from_the_metadata(tmp_path):
    from forcefield.data import OC20DataModule

    root = tmp_path / "rare"
    with ShardedAseLmdbWriter(root, shard_size=20) as writer:
        for k, atoms in enumerate(oc20_like(40, seed=2)):
            if k == 33:  # one structure carries an element no other has
                atoms.numbers[0] = 22
            writer.write(atoms)
    with np.load(root / METADATA_NAME) as meta:
        assert meta["shard_species"][1, 22] and not meta["shard_species"][0, 22]
    common = dict(train=str(root), valid=str(root), stats_samples=5, stats_cache=False,
                  progress=False, num_workers=0)
    dm = OC20DataModule(e0s=None, **common)
    dm.setup("fit")
    assert dm.statistics.species == dm.train_data.species
    assert 22 in dm.statistics.species and dm.statistics.e0s[22] == 0.0
    assert 22 in dm.statistics.extra["species_from_metadata"]
    with pytest.raises(DataError, match=r"Ti.* occur in the training shards but not in the "
                                        r"statistics sample of 5"):
        OC20DataModule(e0s="least_squares", **common).setup("fit")


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_packing_equals_a_plain_greedy_loop(chunk):
    from forcefield.data.sampler import pack_by_atoms

    rng = np.random.default_rng(chunk)
    natoms = rng.integers(1, 300, size=777).astype(np.int32)
    order = rng.permutation(len(natoms))
    for budget in (1, 150, 299, 4000):
        expected, current, total = [0], 0, 0
        for k, i in enumerate(order):
            if current and total + natoms[i] > budget:
                expected.append(k)
                current, total = 0, 0
            current += 1
            total += int(natoms[i])
        expected.append(len(order))
        assert pack_by_atoms(natoms, order, budget, chunk=chunk).tolist() == expected
