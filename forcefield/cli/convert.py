"""``forcefield convert``: conf/convert.yaml -> :func:`forcefield.data.convert.convert`.

The older argparse spelling keeps working: positional sources, ``-o/--output``,
``--shard-size``, ``--task``, ``--energy-key``, ``--forces-key``, ``--index`` and the switches
``--overwrite``, ``--subtract-reference`` are rewritten into the same overrides.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig

from forcefield.cli.command import Command
from forcefield.cli.compose import quote
from forcefield.errors import ConfigError

_VALUE_FLAGS = {"-o": "output", "--output": "output", "--shard-size": "shard_size",
                "--task": "task", "--energy-key": "energy_key", "--forces-key": "forces_key",
                "--index": "index"}
_PATHS = ("output", "index")  # quoted: a path may hold spaces, commas or '='
_SWITCHES = {"--overwrite": "overwrite", "--subtract-reference": "subtract_reference"}
_PASS_WITH_VALUE = ("-cp", "-cn", "-cd", "--config-path", "--config-dir", "--config-name")


def translate(argv: list[str]) -> list[str]:
    """Rewrite the older ``SOURCES... -o OUT --flag`` arguments into overrides; overrides and
    the options every command takes pass through unchanged."""
    out: list[str] = []
    inputs: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag in _VALUE_FLAGS:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise ConfigError(f"option {arg} needs a value")
            key = _VALUE_FLAGS[flag]
            out.append(f"{key}={quote(value) if key in _PATHS else value}")
        elif arg in _SWITCHES:
            out.append(f"{_SWITCHES[arg]}=true")
        elif arg in _PASS_WITH_VALUE:
            out += argv[i:i + 2]
            i += 1
        elif arg.startswith("-") or "=" in arg:
            out.append(arg)
        else:
            inputs.append(arg)
        i += 1
    if inputs:
        out.append(f"input=[{','.join(quote(s) for s in inputs)}]")
    return out


def _sources(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, ListConfig)) else [str(value)]


def run(cfg: DictConfig) -> int:
    """Convert ``cfg.input`` into ``cfg.output`` (or rebuild the index of ``cfg.index``)."""
    from forcefield.data.convert import convert, rebuild_index

    if cfg.index is not None:
        if _sources(cfg.input) or cfg.output is not None:
            raise ConfigError("index=DIR (--index DIR) takes no input or output; run it alone")
        print(f"wrote {rebuild_index(str(cfg.index))}")
        return 0
    n = convert(_sources(cfg.input), None if cfg.output is None else str(cfg.output),
                task=str(cfg.task), energy_key=cfg.energy_key, forces_key=cfg.forces_key,
                overwrite=bool(cfg.overwrite), shard_size=int(cfg.shard_size),
                subtract_reference=bool(cfg.subtract_reference), progress=bool(cfg.progress))
    print(f"wrote {n} structures to {cfg.output}")
    return 0


COMMAND = Command(
    name="convert",
    usage="input=SOURCES output=PATH [key=value ...]",
    description="""\
Rewrite any readable data (extxyz, raw S2EF extxyz+txt, ASE db, legacy OC20 LMDB) into a
directory of .aselmdb shards + metadata.npz (output without a suffix), or into one ASE
database (.db or .aselmdb), in one streaming pass. Legacy OC20 LMDBs hold pickles: convert
them once, from a trusted source. Nothing half-written is left behind. The older spelling
works too: forcefield convert SOURCES... -o OUTPUT [--shard-size N] [--task T] [--overwrite]
[--subtract-reference] [--energy-key K] [--forces-key K] [--index DIR].""",
    run=run,
    examples=(
        "forcefield convert input='s2ef_train_2M/*.extxyz' output=s2ef_2M/ "
        "subtract_reference=true",
        "forcefield convert 's2ef_train/*.lmdb' -o train/ --shard-size 20000",
        "forcefield convert data/oc20/legacy_lmdb/oc20_s2ef_pyg1layout.lmdb -o frames.db",
        "forcefield convert index=s2ef_2M/          # only (re)build metadata.npz",
    ),
    translate=translate,
)

main = COMMAND.main

if __name__ == "__main__":
    raise SystemExit(main())
