"""Which structures to label next: rank candidates by the disagreement of a committee.

:func:`select_structures` is what ``forcefield select`` runs; from Python::

    from ase.io import read
    from forcefield import ForceFieldCalculator
    from forcefield.select import select_structures

    calc = ForceFieldCalculator(["s0/model.pt", "s1/model.pt", "s2/model.pt"])
    summary = select_structures(calc, read("md.traj", ":"), "select_run", top=50)

Committee members are models trained the same way with different seeds
(``forcefield train -m seed=0,1,2,3``, or fine-tunes with ``init_from`` and different seeds).
Where they disagree, the training data did not pin the answer down: those structures are
the ones worth labelling (the query-by-committee of active learning). The scores:

- ``forces_std_max`` (default): the largest, over atoms, of the norm of the committee's
  force standard deviation (eV/A); one badly described atom is enough to be picked, as in
  DP-GEN's maximal force deviation;
- ``forces_std_mean``: its mean over atoms;
- ``energy_std_per_atom``: the committee's energy standard deviation per atom (eV/atom).

Outputs in ``output_dir``: ``selected.extxyz`` (the top ``top`` structures, best first, with
``select_rank``, ``select_score``, ``select_source`` and ``select_index`` in ``info``) and
``select_summary.json`` (every candidate's scores and rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from forcefield.atomic_io import atomic_path, atomic_write_json
from forcefield.errors import ForceFieldError

SCORES = ("forces_std_max", "forces_std_mean", "energy_std_per_atom")
LABELS = ("energy", "free_energy", "forces", "stress")
"""Labels a candidate carries that its written copy keeps."""


class SelectError(ForceFieldError):
    """A bad selection setting or candidate set."""


def committee_scores(results: dict, natoms: int) -> dict[str, float]:
    """Every score of one structure from a committee calculator's ``results``."""
    spread = np.linalg.norm(np.asarray(results["forces_std"]), axis=-1)  # per atom, eV/A
    return {"forces_std_max": float(spread.max()),
            "forces_std_mean": float(spread.mean()),
            "energy_std_per_atom": float(results["energy_std"]) / max(1, natoms)}


def score_structures(calc: Any, structures: Sequence[Atoms], names: Sequence[str]
                     ) -> list[dict[str, float]]:
    """The committee scores of every structure (``names`` say where each came from)."""
    from forcefield.calculator import CalculatorError

    if len(getattr(calc, "models", [])) < 2:
        raise SelectError("select needs a committee of at least two models (models=[a.pt, "
                          "b.pt, ...]), e.g. from forcefield train -m seed=0,1,2,3")
    scores = []
    for atoms, name in zip(structures, names, strict=True):
        atoms = atoms.copy()
        atoms.calc = calc
        try:
            atoms.get_forces()
        except CalculatorError as exc:
            raise SelectError(f"candidate {name}: {exc}") from exc
        scores.append(committee_scores(calc.results, len(atoms)))
    return scores


def rank(scores: Sequence[dict[str, float]], score: str) -> np.ndarray:
    """Candidate indices, highest ``score`` first (ties: the earlier candidate first)."""
    if score not in SCORES:
        raise SelectError(f"score={score!r} is not available; choose one of "
                          f"{', '.join(SCORES)}")
    values = np.array([s[score] for s in scores], dtype=float)
    return np.argsort(-values, kind="stable")


def _with_labels(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` that keeps the labels it was read with (``Atoms.copy`` drops
    the calculator that holds them), so a labelled pool's selection trains as it is."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = atoms.copy()
    results = dict(getattr(atoms.calc, "results", None) or {})
    labels = {k: v for k, v in results.items() if k in LABELS}
    if labels:
        out.calc = SinglePointCalculator(out, **labels)
    return out


def select_structures(calc: Any, structures: Sequence[Atoms], output_dir: str | Path,
                      top: int = 100, score: str = SCORES[0],
                      names: Sequence[str] | None = None) -> dict[str, Any]:
    """Score ``structures`` with the committee ``calc``, write the ``top`` of them and the
    summary into ``output_dir``; return the summary."""
    import ase.io

    if int(top) < 1:
        raise SelectError(f"top={top} must be at least 1 (how many structures to write)")
    if not structures:
        raise SelectError("there are no candidate structures to rank; give a file with at "
                          "least one frame")
    names = list(names) if names is not None else [f"#{i}" for i in range(len(structures))]
    if score not in SCORES:
        rank([], score)  # the one sentence for an unknown score, before any work
    scores = score_structures(calc, structures, names)
    order = rank(scores, score)
    chosen = order[: int(top)]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    selected = []
    for position, i in enumerate(chosen):
        atoms = _with_labels(structures[i])
        atoms.info.update({"select_rank": position + 1, "select_score": scores[i][score],
                           "select_source": names[i], "select_index": int(i)})
        selected.append(atoms)
    with atomic_path(out / "selected.extxyz") as tmp:
        ase.io.write(str(tmp), selected, format="extxyz")
    ranks = np.empty(len(order), dtype=int)
    ranks[order] = np.arange(1, len(order) + 1)
    summary = {
        "score": score,
        "n_candidates": len(structures),
        "n_selected": len(selected),
        "n_models": len(calc.models),
        "candidates": [{"index": i, "source": names[i], "rank": int(ranks[i]), **scores[i]}
                       for i in range(len(structures))],
    }
    atomic_write_json(out / "select_summary.json", summary)
    return summary


__all__ = ["SCORES", "SelectError", "committee_scores", "rank", "score_structures",
           "select_structures"]
