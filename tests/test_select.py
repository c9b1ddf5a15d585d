"""`forcefield select`: rank candidate structures by committee disagreement, write the top N
with their scores; bad input is one sentence with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write
from helpers import TINY, tiny_model

from forcefield.calculator import ForceFieldCalculator
from forcefield.cli import main as cli_main
from forcefield.cli import select as select_cli
from forcefield.export import save_model


@pytest.fixture(scope="module")
def committee(tmp_path_factory) -> list[Path]:
    """Three TINY models with different weights (float64 model files)."""
    root = tmp_path_factory.mktemp("committee")
    paths = []
    for seed in range(3):
        path = root / f"m{seed}.pt"
        save_model(path, tiny_model(seed=seed))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def candidates(tmp_path_factory, repo_data) -> Path:
    path = tmp_path_factory.mktemp("cand") / "candidates.xyz"
    write(path, read(repo_data / "3bpa" / "derived_mdbenchgnn" / "test_300K.xyz", ":6"))
    return path


def _models(paths) -> str:
    return "models=[" + ",".join(str(p) for p in paths) + "]"


def test_writes_the_top_n_with_the_committee_spread(committee, candidates, tmp_path):
    out = tmp_path / "sel"
    assert select_cli.main([_models(committee), f"candidates={candidates}", "top=3",
                            f"output_dir={out}"]) == 0
    summary = json.loads((out / "select_summary.json").read_text())
    assert summary["n_candidates"] == 6 and summary["n_selected"] == 3
    assert summary["n_models"] == 3
    # the score is the largest per-atom norm of the committee's force standard deviation
    frames = read(candidates, ":")
    for entry in summary["candidates"]:
        forces = []
        for path in committee:
            atoms = frames[entry["index"]].copy()
            atoms.calc = ForceFieldCalculator(str(path))
            forces.append(atoms.get_forces())
        spread = np.linalg.norm(np.std(forces, axis=0), axis=1)
        assert entry["forces_std_max"] == pytest.approx(spread.max(), rel=1e-9)
        assert entry["forces_std_mean"] == pytest.approx(spread.mean(), rel=1e-9)
    by_rank = sorted(summary["candidates"], key=lambda c: c["rank"])
    scores = [c["forces_std_max"] for c in by_rank]
    assert scores == sorted(scores, reverse=True)
    selected = read(out / "selected.extxyz", ":")
    assert [a.info["select_index"] for a in selected] == [c["index"] for c in by_rank[:3]]
    assert [a.info["select_rank"] for a in selected] == [1, 2, 3]
    assert selected[0].info["select_score"] == pytest.approx(scores[0])
    assert selected[0].info["select_source"] == f"candidates.xyz#{by_rank[0]['index']}"
    first = frames[by_rank[0]["index"]]
    np.testing.assert_allclose(selected[0].positions, first.positions)
    # a labelled pool's selection keeps its labels (DFT energies and forces), not the model's
    assert selected[0].get_potential_energy() == pytest.approx(first.get_potential_energy())
    np.testing.assert_allclose(selected[0].get_forces(), first.get_forces())


def test_glob_of_models_and_another_score(committee, candidates, tmp_path):
    out = tmp_path / "sel"
    pattern = str(committee[0].parent / "m*.pt")
    assert cli_main.main(["select", f"models={pattern}", f"candidates={candidates}", "top=10",
                          "score=energy_std_per_atom", f"output_dir={out}"]) == 0
    summary = json.loads((out / "select_summary.json").read_text())
    assert summary["n_models"] == 3 and summary["n_selected"] == 6  # top > candidates
    best = min(summary["candidates"], key=lambda c: c["rank"])
    assert best["energy_std_per_atom"] == max(c["energy_std_per_atom"]
                                              for c in summary["candidates"])


def _one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_empty_candidate_file_is_one_sentence(committee, tmp_path, capsys):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    code = select_cli.main([_models(committee), f"candidates={empty}",
                            f"output_dir={tmp_path / 'sel'}"])
    err = _one_sentence(capsys)
    assert code == 2
    assert f"candidates={empty}: the file holds no structures" in err
    assert "at least one frame" in err
    assert not (tmp_path / "sel").exists()


@pytest.mark.parametrize("case, message", [
    ("one model", "a committee needs at least two models"),
    ("no match", "the pattern matches no file"),
    ("bad score", "score=spread is not available; choose one of forces_std_max"),
    ("missing", "candidates: "),
])
def test_bad_input_is_one_sentence(case, message, committee, candidates, tmp_path, capsys):
    args = {"one model": [f"models=[{committee[0]}]", f"candidates={candidates}"],
            "no match": [f"models={tmp_path}/*.pt", f"candidates={candidates}"],
            "bad score": [_models(committee), f"candidates={candidates}", "score=spread"],
            "missing": [_models(committee), f"candidates={tmp_path / 'none.xyz'}"]}[case]
    code = select_cli.main([*args, f"output_dir={tmp_path / 'sel'}"])
    assert code == 2 and message in _one_sentence(capsys)


def test_members_that_know_different_elements(committee, candidates, tmp_path, capsys):
    from forcefield.models import build_model

    cho = tmp_path / "cho.pt"
    save_model(cho, build_model(dict(TINY, species=[1, 6, 8],
                                     e0s={1: -13.6, 6: -1029.4, 8: -2041.8})).double())
    code = select_cli.main([_models([committee[0], cho]), f"candidates={candidates}",
                            f"output_dir={tmp_path / 'sel'}"])
    assert code == 2
    assert "committee models know different elements (N (Z=7))" in _one_sentence(capsys)


@pytest.mark.slow
def test_committee_ranks_600K_frames_above_300K_frames(tmp_path, repo_data):
    """Three small models trained on 300K with different seeds disagree more on 600K frames
    (larger distortions, out of their training distribution) than on 300K frames."""
    from forcefield.cli import train as train_cli

    members = []
    for seed in range(3):
        out = tmp_path / f"m{seed}"
        assert train_cli.main([
            "data.train_size=30", "data.valid_size=5", "data.stats_cache=false",
            "trainer.max_time=null", "trainer.max_epochs=4", "model.channels=8",
            "model.radial_mlp=[8]", "test.enabled=false", f"seed={seed}", f"data.seed={seed}",
            "trainer.enable_progress_bar=false", f"output_dir={out}"]) == 0
        members.append(out / "model.pt")
    tests = repo_data / "3bpa" / "derived_mdbenchgnn"
    pool = read(tests / "test_300K.xyz", "-20:") + read(tests / "test_600K.xyz", "-20:")
    write(tmp_path / "pool.xyz", pool)
    out = tmp_path / "sel"
    assert select_cli.main([_models(members), f"candidates={tmp_path / 'pool.xyz'}", "top=20",
                            f"output_dir={out}"]) == 0
    summary = json.loads((out / "select_summary.json").read_text())
    score = np.array([c["forces_std_max"] for c in summary["candidates"]])
    hot, cold = score[20:], score[:20]
    auc = (hot[:, None] > cold[None, :]).mean()
    assert auc >= 0.7, auc
    selected = read(out / "selected.extxyz", ":")
    assert sum(a.info["select_index"] >= 20 for a in selected) >= 13
