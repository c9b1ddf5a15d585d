"""Synthetic EMT data, the generic ASE datamodule, statistics, convert and download helpers."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch

from forcefield.data import (
    ASEDataModule,
    AtomicData,
    DataError,
    compute_statistics,
    e0s_least_squares,
    iter_records,
)
from forcefield.data.synthetic import emt_structures


@pytest.fixture(scope="module")
def emt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("emt") / "emt.extxyz"
    ase.io.write(path, emt_structures(20, seed=0, kind="mixed", size=(2, 2, 3)))
    return path


def test_emt_generator_is_deterministic_and_labelled():
    a = emt_structures(4, seed=5, kind="mixed", size=(2, 2, 3))
    b = emt_structures(4, seed=5, kind="mixed", size=(2, 2, 3))
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x.positions, y.positions)
        assert x.get_potential_energy() == y.get_potential_energy()
    slab, bulk = a[0], a[1]
    assert slab.pbc.all() and 2 in slab.get_tags() and len(slab.constraints) == 1
    assert slab.calc.results["forces"].shape == (len(slab), 3)
    assert bulk.calc.results["stress"].shape == (3, 3)
    big = emt_structures(1, seed=0, kind="bulk", repeat=(4, 4, 4), label=False)[0]
    assert len(big) == 256
    with pytest.raises(ValueError):
        emt_structures(1, kind="liquid")


def test_stress_label_sign_matches_ase():
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.5, cubic=True)  # compressed: positive pressure
    atoms.calc = EMT()
    atoms.get_stress()  # a live calculator: only results already computed are labels
    g = AtomicData.from_ase(atoms, 5.0)
    assert torch.allclose(g.stress[0], torch.tensor(atoms.get_stress(voigt=False)))
    assert float(g.stress[0].trace()) < 0  # ASE sign: compressed -> negative stress


def test_ase_datamodule_fractions(emt_file, tmp_path):
    dm = ASEDataModule(train=str(emt_file), valid_fraction=0.2, test_fraction=0.1, r_max=4.0,
                       batch_size=4, e0s="zero", cache_dir=str(tmp_path))
    dm.setup("fit")
    assert (len(dm.train_data), len(dm.valid_data)) == (14, 4)
    assert dm.test_split_names == ["test"]
    dm.setup("test")
    assert len(dm.test_data["test"]) == 2
    energies = {float(g.energy) for g in dm.train_data}
    assert not energies & {float(g.energy) for g in dm.valid_data}
    batch = next(iter(dm.train_dataloader()))
    assert batch.stress.shape == (4, 3, 3) and batch.fixed.dtype == torch.bool
    st = dm.statistics
    assert st.num_structures == 14 and st.e0s_source == "zero"
    # cached on disk per dataset: a new module reads the same numbers back
    files = list((tmp_path / "statistics").glob("*.json"))
    assert len(files) == 1
    cached = json.loads(files[0].read_text())
    assert cached["force_rms"] == pytest.approx(st.force_rms)


def test_ase_datamodule_explicit_splits_and_mapping(emt_file, tmp_path):
    small = tmp_path / "small.extxyz"
    ase.io.write(small, emt_structures(3, seed=9, kind="bulk"))
    dm = ASEDataModule(train=[str(emt_file)], valid=str(small),
                       test={"bulk": str(small), "mixed": str(emt_file)}, index=":10",
                       e0s={z: 0.0 for z in range(1, 90)}, stats_cache=False)
    dm.setup()
    assert len(dm.train_data) == 10 and len(dm.valid_data) == 3
    assert dm.test_split_names == ["bulk", "mixed"]
    assert [len(x.dataset) for x in dm.test_dataloader()] == [3, 10]
    listed = ASEDataModule(train=str(emt_file), test=[str(small), str(small)])
    assert listed.test_split_names == ["small", "small_2"]


def test_least_squares_e0s_recovers_references():
    rng = np.random.default_rng(0)
    true = {1: -13.6, 6: -1029.5, 8: -2042.0}
    numbers = [rng.choice([1, 6, 8], size=rng.integers(2, 9)) for _ in range(30)]
    energies = [sum(true[int(z)] for z in n) for n in numbers]
    fit = e0s_least_squares(numbers, energies)
    for z, v in true.items():
        assert fit[z] == pytest.approx(v, abs=1e-9)
    with pytest.raises(DataError, match="rank-deficient"):
        e0s_least_squares([np.array([1, 1, 8])] * 3, [1.0, 2.0, 3.0])


def test_compute_statistics_float64_and_errors(emt_file):
    graphs = [AtomicData.from_ase(a, 4.0) for a, _, _ in iter_records(emt_file)]
    st = compute_statistics(graphs, {z: 0.0 for z in range(1, 90)})
    n_atoms = sum(g.num_nodes for g in graphs)
    ref = np.mean([float(g.energy) / g.num_nodes for g in graphs])
    assert st.mean_interaction_energy_per_atom == pytest.approx(ref, rel=1e-12)
    assert st.avg_num_neighbors == pytest.approx(sum(g.edge_index.shape[1] for g in graphs)
                                                 / n_atoms)
    with pytest.raises(DataError, match="empty dataset"):
        compute_statistics([], None)
    with pytest.raises(DataError, match="also has"):
        compute_statistics(graphs, {29: 0.0})


def test_isolated_atoms_file_as_e0s(repo_data, emt_file):
    from forcefield.data import ThreeBPADataModule

    dm = ThreeBPADataModule(e0s=str(repo_data / "3bpa" / "iso_atoms.xyz"), train_size=5,
                            valid_size=2, stats_cache=False)
    assert dm.statistics.e0s[6] == pytest.approx(-1029.4889999855063)
    with pytest.raises(DataError, match="one atom per frame"):
        ThreeBPADataModule(e0s=str(emt_file), train_size=5, valid_size=2,
                           stats_cache=False).compute_statistics()


def test_convert_cli_roundtrip(repo_data, tmp_path, capsys):
    from forcefield.cli.convert import main

    out = tmp_path / "frames.db"
    src = repo_data / "oc20" / "legacy_lmdb" / "oc20_s2ef_pyg1layout.lmdb"
    assert main([str(src), "-o", str(out)]) == 0
    assert "wrote 2 structures" in capsys.readouterr().out
    a = [AtomicData.from_ase(x, 6.0) for x, _, _ in iter_records(out)]
    b = [AtomicData.from_ase(x, 6.0) for x, _, _ in iter_records(src)]
    for g, h in zip(a, b, strict=True):
        for key in ("energy", "forces", "pos", "fixed", "tags", "sid", "fid", "atomic_numbers"):
            assert torch.equal(g[key], h[key]), key
    assert main([f"input={src}", f"output={out}"]) == 2  # exists, no overwrite
    assert "exists" in capsys.readouterr().err
    assert main([str(src), "-o", str(out), "--overwrite"]) == 0
    out2 = tmp_path / "frames.aselmdb"
    assert main([f"input={src}", f"output={out2}", "task=s2ef"]) == 0
    assert len(list(iter_records(out2))) == 2
    assert main([str(tmp_path / "nope.lmdb"), "-o", str(tmp_path / "x.db")]) == 2
    assert not (tmp_path / "x.db").exists()
    assert main([str(src), "-o", str(tmp_path / "x.txt")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.aselmdb", "frames.db"]


def test_download_verification_offline(repo_data):
    """Checksum logic of the download helper, exercised on local files (no network)."""
    from forcefield.data.download import _count_xyz_frames, git_blob_sha1, verify_bytes

    data = (repo_data / "3bpa" / "iso_atoms.xyz").read_bytes()
    verify_bytes(data, "dataset_3BPA/iso_atoms.xyz", expected_git_sha=git_blob_sha1(data))
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_bytes(data + b" ", "dataset_3BPA/iso_atoms.xyz")
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_bytes(data, "x.xyz", expected_git_sha="0" * 40)
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob
    assert _count_xyz_frames(data) == 4


def test_embedded_data_dir_found():
    from forcefield.data import embedded_3bpa_dir, embedded_oc20_dir

    assert (embedded_3bpa_dir() / "train_300K.xyz").is_file()
    assert (embedded_oc20_dir() / "oc20_real_frames.extxyz").is_file()


@pytest.mark.parametrize("name", ["3bpa", "oc20", "ase"])
def test_hydra_data_configs_instantiate(name, repo_root, emt_file):
    """conf/data/*.yaml (written against these signatures) instantiate and set up."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = repo_root / "conf" / "data" / f"{name}.yaml"
    if not path.exists():
        pytest.skip(f"{path} not written yet")
    cfg = OmegaConf.load(path)
    cfg.r_max = 5.0
    cfg.stats_cache = False
    if name == "3bpa":
        cfg.train_size, cfg.valid_size, cfg.test_limit = 8, 2, 3
    if name == "ase":
        cfg.train, cfg.e0s = str(emt_file), "zero"
    dm = instantiate(cfg, _convert_="all")
    dm.setup("fit")
    assert dm.statistics.r_max == 5.0 and len(dm.train_data) > 0
    assert isinstance(dm.test_split_names, list)
