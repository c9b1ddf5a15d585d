"""``forcefield md``: molecular dynamics with a trained model.

    forcefield md model=run/model.pt structure=molecule.xyz ensemble=nve \\
        temperature_K=300 timestep_fs=0.5 steps=1000 output_dir=md_run

Keys (Hydra overrides; defaults from conf/md.yaml when present):
model, structure, structure_index, ensemble (nve|langevin), temperature_K, timestep_fs,
steps, output_dir, friction (1/fs, Langevin), seed, log_interval, dtype (float64|float32),
device, progress.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULTS: dict = {
    "model": None,
    "structure": None,
    "structure_index": 0,
    "ensemble": "nve",
    "temperature_K": 300.0,
    "timestep_fs": 0.5,
    "steps": 1000,
    "output_dir": "md_output",
    "friction": 0.01,
    "seed": 0,
    "log_interval": 10,
    "dtype": "float64",
    "device": "cpu",
    "progress": True,
}

USAGE = """usage: forcefield md model=PATH structure=FILE [key=value ...]

Run molecular dynamics with a trained model (model.pt) through ASE.

keys:
  model=PATH            model file written by 'forcefield train' / 'forcefield export'
  structure=FILE        any file ASE reads (xyz, extxyz, cif, POSCAR, traj, ...)
  structure_index=0     frame of a multi-frame file (ASE index: 0, -1, ...)
  ensemble=nve          nve (velocity Verlet) or langevin (NVT)
  temperature_K=300     initial Maxwell-Boltzmann temperature (and Langevin bath)
  timestep_fs=0.5       timestep in fs
  steps=1000            number of steps
  friction=0.01         Langevin friction in 1/fs
  seed=0                seed of the initial velocities and Langevin noise
  log_interval=10       steps between md.log lines and md.traj frames
  dtype=float64         float64 (recommended for MD) or float32
  device=cpu            torch device, e.g. cuda
  output_dir=md_output  writes md.traj, md.log, md_summary.json

example:
  forcefield md model=outputs/run/model.pt structure=data/3bpa/train_300K.xyz steps=2000
"""


def _conf_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "conf"


def _split(overrides: list[str], known: set[str]) -> list[str]:
    """Hydra overrides; keys missing from conf/md.yaml but known here get a '+' prefix."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" in item and key[:1] not in "+~" and key not in known and key in DEFAULTS:
            item = "+" + item
        out.append(item)
    return out


_TYPES = {
    "structure_index": int,
    "temperature_K": float,
    "timestep_fs": float,
    "steps": int,
    "friction": float,
    "seed": int,
    "log_interval": int,
}


def _typed(cfg) -> dict:
    """Plain dict of the resolved config with numbers checked (one clear error each)."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(cfg, resolve=True)
    for key, kind in _TYPES.items():
        value = out.get(key)
        try:
            if isinstance(value, bool) or (kind is int and isinstance(value, float)):
                raise ValueError
            out[key] = kind(value)
        except (TypeError, ValueError):
            name = "an integer" if kind is int else "a number"
            raise ValueError(f"{key} must be {name}, got {value!r}") from None
    progress = out.get("progress", True)
    if isinstance(progress, str):
        progress = progress.lower() not in ("0", "false", "no", "off")
    out["progress"] = bool(progress)
    return out


def compose_config(overrides: list[str]) -> dict:
    """The run configuration: defaults < conf/md.yaml (when present) < overrides."""
    from omegaconf import OmegaConf

    conf_dir = _conf_dir()
    base = OmegaConf.create(DEFAULTS)
    if (conf_dir / "md.yaml").is_file():
        from hydra import compose, initialize_config_dir

        # `model` (and `structure`) are also names of config groups/keys elsewhere in
        # conf/: take them out of the overrides before Hydra sees them.
        direct = {}
        rest = []
        for item in overrides:
            key, _, value = item.partition("=")
            if key.lstrip("+") in ("model", "structure"):
                direct[key.lstrip("+")] = value
            else:
                rest.append(item)
        known = set(OmegaConf.load(conf_dir / "md.yaml").keys())
        for item in rest:
            key = item.partition("=")[0].lstrip("+~").split(".")[0]
            if key not in known and key not in DEFAULTS:
                raise KeyError(
                    f"unknown key {key!r}; forcefield md takes: "
                    f"{', '.join(dict.fromkeys([*DEFAULTS, *known]))}"
                )
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = compose(config_name="md", overrides=_split(rest, known))
        cfg = OmegaConf.merge(base, cfg)
        for key, value in direct.items():
            cfg[key] = value
        for key in ("model", "structure"):
            if OmegaConf.is_missing(cfg, key):
                cfg[key] = None
        return _typed(cfg)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    for override in parsed:
        key = override.key_or_group.lstrip("+~")
        if key not in DEFAULTS:
            raise KeyError(
                f"unknown key {key!r}; forcefield md takes: {', '.join(DEFAULTS)}"
            )
        base[key] = override.value()
    return _typed(base)


class _Cfg(dict):
    __getattr__ = dict.get


def _fail(message: str, code: int = 1) -> int:
    print(f"forcefield md: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run ``forcefield md`` with Hydra-style overrides; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    bad = [a for a in argv if "=" not in a]
    if bad:
        return _fail(f"arguments must be key=value, got {bad[0]!r}; see 'forcefield md --help'", 2)
    try:
        cfg = compose_config(argv)
    except Exception as exc:  # hydra/omegaconf errors: one line
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return _fail(f"bad override: {text.strip().splitlines()[0]}", 2)
    cfg = _Cfg(cfg)

    if not cfg.model:
        return _fail("no model given; pass model=PATH/TO/model.pt", 2)
    if not cfg.structure:
        return _fail("no structure given; pass structure=FILE (xyz, cif, POSCAR, traj, ...)", 2)
    model_path = Path(str(cfg.model))
    structure = Path(str(cfg.structure))
    if not model_path.is_file():
        return _fail(f"model file {model_path} does not exist (model=...)")
    if not structure.is_file():
        return _fail(f"structure file {structure} does not exist (structure=...)")

    import ase.io

    from forcefield.calculator import ForceFieldCalculator
    from forcefield.md import MDError, run_md
    from forcefield.model_files import ModelFileError, load_network

    try:
        atoms = ase.io.read(str(structure), index=cfg.structure_index)
    except Exception as exc:
        return _fail(
            f"cannot read a structure from {structure} (index {cfg.structure_index}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
            "give a file ASE can read (xyz, extxyz, cif, POSCAR, traj)"
        )
    if isinstance(atoms, list):
        atoms = atoms[0]
    try:
        net, _ = load_network(model_path, dtype=cfg.dtype, device=str(cfg.device))
        calc = ForceFieldCalculator(net, device=str(cfg.device), dtype=cfg.dtype)
        calc.check_atoms(atoms)
        summary = run_md(
            calc,
            atoms,
            ensemble=str(cfg.ensemble),
            temperature_K=float(cfg.temperature_K),
            timestep_fs=float(cfg.timestep_fs),
            steps=int(cfg.steps),
            output_dir=str(cfg.output_dir),
            friction=float(cfg.friction),
            seed=int(cfg.seed),
            log_interval=int(cfg.log_interval),
            progress=bool(cfg.progress),
        )
    except (ModelFileError, MDError, ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    out = Path(str(cfg.output_dir))
    print(
        f"MD done: {summary['steps']} steps of {summary['timestep_fs']} fs "
        f"({summary['ensemble']}, {summary['natoms']} atoms) at "
        f"{summary['steps_per_second']:.1f} steps/s; max |E_tot - E_0| = "
        f"{summary['max_energy_drift_meV_per_atom']:.4f} meV/atom; final T = "
        f"{summary['final_temperature_K']:.1f} K; wrote {out / 'md.traj'}, {out / 'md.log'}, "
        f"{out / 'md_summary.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
