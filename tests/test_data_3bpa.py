"""3BPA datamodule on the embedded real files."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from forcefield.data import DataError, DatasetStatistics, ThreeBPADataModule


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    dm = ThreeBPADataModule(r_max=5.0, batch_size=5, test_limit=20, cache_dir=str(cache))
    dm.setup("fit")
    return dm


def test_split_sizes_and_seed(dm):
    assert len(dm.train_data) == 450 and len(dm.valid_data) == 50
    e_train = {float(d.energy) for d in dm.train_data}
    e_valid = {float(d.energy) for d in dm.valid_data}
    assert not e_train & e_valid

    def valid_energies(seed):
        other = ThreeBPADataModule(seed=seed, train_size=5, valid_size=5, stats_cache=False)
        other.setup("fit")
        return [float(d.energy) for d in other.valid_data]

    assert valid_energies(7) == valid_energies(7)
    assert valid_energies(7) != valid_energies(8)


def test_statistics_match_known_values(dm):
    st = dm.statistics
    assert isinstance(st, DatasetStatistics)
    assert st.species == [1, 6, 7, 8]
    assert st.e0s[1] == pytest.approx(-13.587222780835477, abs=1e-12)
    assert st.e0s[8] == pytest.approx(-2041.9816003861047, abs=1e-12)
    assert st.e0s_source == "isolated_atoms"
    assert st.mean_interaction_energy_per_atom == pytest.approx(-4.873, abs=2e-3)
    assert st.force_rms == pytest.approx(0.948, abs=0.01)
    assert 10 < st.avg_num_neighbors < 26
    d = st.to_dict()
    assert DatasetStatistics.from_dict(d) == st
    import json

    json.dumps(d)


def test_batches(dm):
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 5 and batch.pos.shape == (135, 3)
    assert batch.energy.dtype == torch.float64 and batch.energy.shape == (5,)
    assert batch.forces.shape == (135, 3)
    assert not batch.pbc.any()
    assert abs(float(batch.energy[0])) > 17000  # total energies kept in float64


def test_test_splits_present_and_missing(dm):
    assert dm.test_split_names == ["300K", "600K"]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        dm.setup("test")
    msgs = " ".join(str(w.message) for w in rec)
    assert "1200K" in msgs and "dih" in msgs
    loaders = dm.test_dataloader()
    assert len(loaders) == 2
    assert sum(b.num_graphs for b in loaders[0]) == 20


def test_extra_test_split_in_custom_root(tmp_path, repo_data):
    import shutil

    for name in ("train_300K.xyz", "iso_atoms.xyz"):
        shutil.copy(repo_data / "3bpa" / name, tmp_path / name)
    lines = (repo_data / "3bpa" / "derived_mdbenchgnn" / "test_600K.xyz").read_text().splitlines()
    (tmp_path / "test_1200K.xyz").write_text("\n".join(lines[: 29 * 3]) + "\n")
    dm = ThreeBPADataModule(root=str(tmp_path), test_splits=["1200K", "dih"], stats_cache=False,
                            train_size=10, valid_size=5)
    assert dm.test_split_names == ["1200K"]
    with pytest.warns(UserWarning, match="dih"):
        dm.setup("test")
    assert len(dm.test_data["1200K"]) == 3


def test_full_test_sets_sizes(repo_data):
    """The full 300K/600K test files read completely (1669 / 2138 structures)."""
    dm = ThreeBPADataModule(test_splits=["300K", "600K"], stats_cache=False)
    dm.setup("test")
    assert len(dm.test_data["300K"]) == 1669 and len(dm.test_data["600K"]) == 2138
    e = np.array([float(d.energy) for d in dm.test_data["300K"]])
    assert math.isclose(float(e.std()), 0.164, abs_tol=0.005)


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="train_set"):
        ThreeBPADataModule(train_set="900K")
    with pytest.raises(DataError, match="test split"):
        ThreeBPADataModule(test_splits=["450K"])
    with pytest.raises(DataError, match="not a directory"):
        ThreeBPADataModule(root=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="empty split"):
        ThreeBPADataModule(valid_size=0)
    with pytest.raises(DataError, match="no 3BPA test split"):
        dm = ThreeBPADataModule(root=str(tmp_path))
        dm.setup("test")


def test_least_squares_e0s_rank_deficient_error():
    dm = ThreeBPADataModule(e0s="least_squares", train_size=20, valid_size=5, stats_cache=False)
    with pytest.raises(DataError, match="rank-deficient"):
        dm.setup("fit")


def test_hydra_instantiation():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"_target_": "forcefield.data.ThreeBPADataModule", "r_max": 4.5,
                            "batch_size": 2, "train_set": "mixedT", "seed": 3,
                            "test_splits": ["300K"], "train_size": 8, "valid_size": 2,
                            "stats_cache": False})
    dm = instantiate(cfg)
    assert isinstance(dm, ThreeBPADataModule) and dm.test_split_names == ["300K"]
    dm.setup("fit")
    assert len(dm.train_data) == 8 and dm.statistics.r_max == 4.5
