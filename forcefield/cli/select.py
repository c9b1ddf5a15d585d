"""``forcefield select``: conf/select.yaml -> :func:`forcefield.select.select_structures`."""

from __future__ import annotations

import glob
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from forcefield.cli.command import Command
from forcefield.errors import ConfigError, ForceFieldError


def model_paths(value) -> list[str]:
    """``models`` as a list of files: a list, or one path or glob."""
    items = [str(v) for v in value] if isinstance(value, (list, ListConfig)) else [str(value)]
    paths: list[str] = []
    for item in items:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise ConfigError(f"models={item}: the pattern matches no file; give two or more "
                              "model files, e.g. models='runs/sweep/*/model.pt'")
        paths += matches
    if len(paths) < 2:
        raise ConfigError(f"models={paths[0] if paths else ''}: a committee needs at least "
                          "two models, e.g. models=[s0/model.pt,s1/model.pt] from forcefield "
                          "train -m seed=0,1,2,3")
    return paths


def read_candidates(cfg: DictConfig) -> tuple[list, list[str]]:
    """(structures, a name for each: file#frame) of ``candidates``; one sentence for a file
    that is missing, unreadable or empty."""
    from forcefield.data.errors import DataError
    from forcefield.data.readers import expand_sources, iter_records

    source = cfg.candidates
    sources = [str(v) for v in source] if isinstance(source, (list, ListConfig)) else str(source)
    structures, names = [], []
    try:
        for path in expand_sources(sources):
            if path.is_file() and not _head(path).strip():
                raise ConfigError(f"candidates={path}: the file holds no structures (it is "
                                  "empty); give an extxyz, ASE-readable file or MD trajectory "
                                  "with at least one frame")
        for atoms, path, index in iter_records(sources, index=cfg.index):
            structures.append(atoms)
            names.append(f"{Path(str(path)).name}#{index}")
    except (DataError, FileNotFoundError) as exc:
        if "contains no structures" in str(exc):
            raise ConfigError(f"candidates={source}: the file holds no structures; give an "
                              "extxyz, ASE-readable file or MD trajectory with at least one "
                              "frame (or check index=...)") from exc
        raise ConfigError(f"candidates: {exc}") from exc
    if not structures:
        raise ConfigError(f"candidates={source}: no structures found; give an extxyz, "
                          "ASE-readable file or MD trajectory with at least one frame")
    return structures, names


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(1 << 16)


def run(cfg: DictConfig) -> int:
    """Rank the candidates of ``cfg`` by committee disagreement; the exit code."""
    from forcefield.calculator import ForceFieldCalculator
    from forcefield.select import SCORES, select_structures
    from forcefield.training.config import check_dtype

    check_dtype(cfg.dtype)
    if str(cfg.score) not in SCORES:
        raise ConfigError(f"score={cfg.score} is not available; choose one of "
                          f"{', '.join(SCORES)}")
    paths = model_paths(cfg.models)
    structures, names = read_candidates(cfg)
    try:
        calc = ForceFieldCalculator(paths, device=str(cfg.device), dtype=cfg.dtype)
    except ForceFieldError:
        raise
    except ValueError as exc:  # committee members that know different elements
        raise ConfigError(f"models: {exc}") from exc
    out = Path(str(cfg.output_dir)).expanduser().resolve()
    summary = select_structures(calc, structures, out, top=int(cfg.top), score=str(cfg.score),
                                names=names)
    best = summary["candidates"]
    chosen = sorted(best, key=lambda c: c["rank"])[: summary["n_selected"]]
    print(f"ranked {summary['n_candidates']} structures by {cfg.score} over "
          f"{summary['n_models']} models; top {summary['n_selected']}: "
          f"{chosen[0][cfg.score]:.4g} .. {chosen[-1][cfg.score]:.4g}")
    print(f"wrote {out / 'selected.extxyz'}, {out / 'select_summary.json'}")
    return 0


COMMAND = Command(
    name="select",
    usage="models=[A,B,...] candidates=FILE [key=value ...]",
    description="""\
Rank candidate structures (an extxyz or any ASE-readable set, or an MD trajectory) by the
disagreement of a committee of models, and write the top N to label next. Writes into
output_dir: selected.extxyz (best first; select_rank, select_score, select_source,
select_index in info) and select_summary.json (every candidate's scores and rank).""",
    run=run,
    examples=(
        "forcefield select models='runs/committee/*/model.pt' candidates=md.traj top=50",
        "forcefield select models=[a/model.pt,b/model.pt,c/model.pt] candidates=pool.xyz \\",
        "    index='::10' score=forces_std_mean output_dir=runs/select",
        "forcefield train init_from=runs/committee/0_seed=0/model.pt data=ase "
        "data.train=labelled.xyz",
    ),
)

main = COMMAND.main

if __name__ == "__main__":
    raise SystemExit(main())
