"""Every bad input a user can bring ends in one clear DataError."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from forcefield.data import ASEDataModule, AtomicData, DataError, build_graphs, iter_records

GOOD = ('2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.5 pbc="F F F"\n'
        "H 0 0 0 0 0 0.1\nH 0 0 0.8 0 0 -0.1\n")


def test_truncated_file_names_file_and_frame(tmp_path):
    path = tmp_path / "broken.xyz"
    path.write_text(GOOD * 3 + GOOD.splitlines(keepends=True)[0] + GOOD.splitlines(True)[1]
                    + "H 0 0 0 0 0 0.1\n")
    with pytest.raises(DataError, match=r"frame 3 of '.*broken\.xyz'.*truncated or malformed"):
        list(iter_records(path))


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.extxyz"
    path.write_text("this is not\nan xyz file\n")
    with pytest.raises(DataError, match="junk.extxyz"):
        list(iter_records(path))


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.xyz"
    path.write_text("")
    with pytest.raises(DataError, match="empty.xyz"):
        list(iter_records(path))


def test_missing_energy_lists_found_keys(tmp_path):
    path = tmp_path / "nolabel.xyz"
    path.write_text('2\nProperties=species:S:1:pos:R:3:REF_forces:R:3 E_dft=-1.5 pbc="F F F"\n'
                    "H 0 0 0 0 0 0.1\nH 0 0 0.8 0 0 -0.1\n")
    records = list(iter_records(path))
    expected = r"frame 0 of .*no energy label.*E_dft.*REF_forces.*energy_key"
    with pytest.raises(DataError, match=expected):
        build_graphs(records, 4.0)
    graphs = build_graphs(records, 4.0, energy_key="E_dft")
    assert float(graphs[0].energy) == -1.5
    assert graphs[0].forces[0, 2] == pytest.approx(0.1)  # REF_forces found by default
    with pytest.raises(DataError, match="no forces label"):
        build_graphs(records, 4.0, energy_key="E_dft", forces_key="my_forces")


def test_custom_keys_in_info_and_arrays():
    a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]])
    a.info["dft_e"] = -3.0
    a.arrays["dft_f"] = np.ones((2, 3))
    a.info["dft_s"] = np.arange(6.0)
    g = AtomicData.from_ase(a, 3.0, energy_key="dft_e", forces_key="dft_f", stress_key="dft_s")
    assert float(g.energy) == -3.0 and g.forces.sum() == 6
    assert g.stress.shape == (1, 3, 3) and float(g.stress[0, 0, 1]) == 5.0  # Voigt xy
    assert float(g.stress[0, 1, 2]) == 3.0


def _nan_structures():
    out = []
    for k in range(4):
        a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * k]])
        f = np.zeros((2, 3))
        if k == 2:
            f[1, 0] = np.nan
        e = np.inf if k == 3 else -1.0
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append((a, "mem.xyz", k))
    return out


def test_nan_labels_error_or_skip():
    with pytest.raises(DataError, match=r"frame 2 of 'mem.xyz' has non-finite \(NaN/inf\) forces"):
        build_graphs(_nan_structures(), 3.0)
    with pytest.warns(UserWarning, match=r"skipped 2 structure\(s\).*frame 2.*frame 3"):
        graphs = build_graphs(_nan_structures(), 3.0, nan_policy="skip")
    assert len(graphs) == 2
    with pytest.raises(DataError, match="non-finite"):
        AtomicData.from_ase(_nan_structures()[3][0], 3.0)
    with pytest.raises(DataError, match="nan_policy"):
        build_graphs(_nan_structures(), 3.0, nan_policy="ignore")


def test_all_skipped_is_empty_dataset_error():
    bad = [r for r in _nan_structures() if r[2] >= 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="is empty"):
            build_graphs(bad, 3.0, nan_policy="skip")


def test_empty_split_errors(tmp_path):
    path = tmp_path / "one.xyz"
    path.write_text(GOOD)
    dm = ASEDataModule(train=str(path), stats_cache=False)
    with pytest.raises(DataError, match="empty training split"):
        dm.setup("fit")
    with pytest.raises(DataError, match="no training data"):
        ASEDataModule(train=None).setup("fit")
    test_only = ASEDataModule(train=None, test={"one": str(path)}, stats_cache=False)
    test_only.setup("test")  # evaluation needs no training data
    assert len(test_only.test_data["one"]) == 1
    with pytest.raises(DataError, match="matches no file"):
        ASEDataModule(train=str(tmp_path / "*.nothing"), stats_cache=False).setup("fit")
    with pytest.raises(DataError, match="does not exist"):
        ASEDataModule(train=str(tmp_path / "missing.xyz"), stats_cache=False).setup("fit")
    with pytest.raises(DataError, match="list of data sources is empty"):
        ASEDataModule(train=[], stats_cache=False).setup("fit")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text("x")
    with pytest.raises(DataError, match="holds no"):
        ASEDataModule(train=str(tmp_path / "sub"), stats_cache=False).setup("fit")
    dm = ASEDataModule(train=[str(path)] * 3, valid=str(path), stats_cache=False)
    with pytest.raises(DataError, match="no test data"):
        dm.setup("test")


def test_pbc_zero_cell_in_a_file(tmp_path):
    path = tmp_path / "pbc.xyz"
    path.write_text(GOOD.replace('pbc="F F F"', 'pbc="T T T"'))
    records = list(iter_records(path))
    records[0][0].cell[:] = 0.0
    with pytest.raises(DataError, match=r"frame 0 of '.*pbc\.xyz' is periodic.*cell vector"):
        build_graphs(records, 3.0)


def test_partial_labels_and_optional_keys():
    recs = _nan_structures()[:2]
    recs[1][0].calc.results["stress"] = np.zeros(6)
    with pytest.warns(UserWarning, match="'stress'"):
        graphs = build_graphs(recs, 3.0)
    assert all("stress" not in g for g in graphs)
    plain = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]])
    with pytest.raises(DataError, match="only 1 of 2 structures have energy"):
        build_graphs([recs[0], (plain, "x", 5)], 3.0, required=())


def test_bad_r_max_and_backend():
    a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]])
    with pytest.raises(DataError, match="r_max"):
        AtomicData.from_ase(a, 0.0)
    with pytest.raises(DataError, match="backend"):
        AtomicData.from_ase(a, 2.0, backend="torch_nl")
    with pytest.raises(DataError, match="not an ase.Atoms"):
        AtomicData.from_ase("H2", 2.0)
