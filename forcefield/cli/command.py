"""The one command layer: every subcommand is a :class:`Command` run by :func:`run_command`.

A command is its config ``conf/<name>.yaml`` (the only home of its defaults), a help text,
and a plain function ``run(cfg) -> int`` that does the work and raises a
:class:`~forcefield.errors.ForceFieldError` for anything the user can fix. This module does
the rest the same way for all of them: parse the command line (:mod:`.compose`), print
``--help``/``--cfg``/``--info``, compose the config, reject unknown top-level keys and values
of the wrong type, ask for missing ones, and report a user error as one sentence on stderr
(exit code 2 when the command cannot run as asked, 1 when its run failed); bugs keep their
traceback.

A new command is one small module in ``forcefield/cli`` (a ``Command`` and its ``run``), one
yaml file in ``conf/`` and one row in :data:`forcefield.cli.main.SUBCOMMANDS`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from forcefield.cli.compose import (
    CONFIG_DIR,
    CommandLine,
    compose_config,
    config_info,
    group_options,
    key_comments,
    override_key,
    parse_argv,
    pop_override,
)
from forcefield.errors import ConfigError, ForceFieldError


@dataclass(frozen=True)
class Command:
    """One subcommand of ``forcefield``.

    Args:
        name: the subcommand, and the primary config ``conf/<name>.yaml``.
        usage: what follows ``forcefield <name>`` on the help's usage line.
        description: what the command does and writes (a paragraph of the help).
        run: the work: takes the composed config, returns the exit code.
        examples: command lines shown by ``--help``.
        path_keys: keys that take a path but are named like a config group of ``conf/``
            (``model=PATH``); taken out of the overrides before Hydra composes.
        compose: composes the config instead of the default (train: resuming a run starts
            from its saved config.yaml).
        multirun: runs ``-m`` sweeps (train); None: ``-m`` is refused.
        translate: rewrites older argument spellings into overrides (convert's ``--flags``).
    """

    name: str
    usage: str
    description: str
    run: Callable[[DictConfig], int]
    examples: tuple[str, ...] = ()
    path_keys: tuple[str, ...] = ()
    compose: Callable[[CommandLine], DictConfig] | None = None
    multirun: Callable[[CommandLine], int] | None = None
    translate: Callable[[list[str]], list[str]] | None = None

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Run the command with a command line (``sys.argv[2:]`` by default)."""
        return run_command(self, argv)


def run_command(command: Command, argv: Sequence[str] | None = None) -> int:
    """Parse, compose, check and run ``command``; every user error is one line on stderr."""
    argv = list(sys.argv[2:] if argv is None else argv)
    try:
        if command.translate is not None:
            argv = command.translate(argv)
        cl = parse_argv(argv, command.name)
        if cl.help:
            print(help_text(command, cl))
            return 0
        if cl.info:
            print(config_info(cl))
            return 0
        if cl.multirun:
            if command.multirun is None:
                raise ConfigError(f"-m (multirun) is available for forcefield train, not "
                                  f"{command.name}")
            return int(command.multirun(cl) or 0)
        hydra_keys = [o for o in cl.overrides if override_key(o).startswith("hydra")]
        if hydra_keys:
            raise ConfigError(f"{hydra_keys[0]}: hydra/... and hydra.* overrides configure "
                              "sweeps; add -m (forcefield train -m ...)")
        cfg = compose_command(command, cl)
        if cl.print_config:
            print_config(cfg)
            return 0
        check_given(cfg, command.name)
        return int(command.run(cfg) or 0)
    except ForceFieldError as exc:
        report(command.name, exc)
        return exc.exit_code


def report(name: str, exc: BaseException) -> None:
    """``forcefield <name>: error: <message>`` as one line on stderr."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text.replace("forcefield <command>", f"forcefield {name}")
    print(f"forcefield {name}: error: {text}", file=sys.stderr, flush=True)


def print_config(cfg: DictConfig) -> None:
    """``--cfg``: the composed config as yaml (interpolations resolved)."""
    print(OmegaConf.to_yaml(cfg, resolve=True))


def compose_command(command: Command, cl: CommandLine) -> DictConfig:
    """The command's config: ``conf/<name>.yaml`` (or ``-cp/-cn``) with the overrides, its
    top-level keys and value types checked against the config without overrides."""
    if command.compose is not None:
        cfg = command.compose(cl)
    else:
        overrides, paths = list(cl.overrides), {}
        for key in command.path_keys:
            overrides, value = pop_override(overrides, key)
            if value is not None:
                paths[key] = value
        cfg = compose_config(cl.config_name, overrides, cl.config_dir)
        with open_dict(cfg):
            cfg.update(paths)
    base = compose_config(cl.config_name, [], cl.config_dir)
    removed = [key for key in map(override_key, cl.overrides)
               if key in base.keys() and key not in cfg.keys()]
    if removed:
        raise ConfigError(f"{removed[0]} cannot be removed (~{removed[0]}): forcefield "
                          f"{command.name} reads it; set a value instead ({removed[0]}=...)")
    check_top_level(cfg, base, command.name)
    return cfg


def _kind(default: Any) -> tuple[type | tuple[type, ...], str] | None:
    """The type a key's default asks for (bool, int, float) and its name; None: any."""
    if isinstance(default, bool):
        return bool, "true or false"
    if isinstance(default, int):
        return int, "an integer"
    if isinstance(default, float):
        return (int, float), "a number"
    return None


def check_top_level(cfg: DictConfig, base: DictConfig, name: str) -> None:
    """Raise ConfigError for a top-level key the command's config does not have (added with
    ``+key=``) or a value whose type differs from the default's (``steps=ten``)."""
    unknown = sorted(set(cfg.keys()) - set(base.keys()) - {"hydra"})
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(map(str, unknown))} for forcefield {name}; "
            f"its keys are {', '.join(map(str, base.keys()))} ('forcefield {name} --help')")
    for key in cfg.keys():
        if key not in base or OmegaConf.is_missing(base, key) or OmegaConf.is_missing(cfg, key):
            continue
        kind = _kind(base[key])
        value = cfg[key]
        if kind is not None and (isinstance(value, bool) is not (kind[0] is bool)
                                 or not isinstance(value, kind[0])):
            raise ConfigError(f"{key} must be {kind[1]}, got {value!r}")


def check_given(cfg: DictConfig, name: str) -> None:
    """Raise ConfigError naming every top-level value left ``???`` and what it should be."""
    missing = [str(k) for k in cfg.keys() if OmegaConf.is_missing(cfg, k)]
    if not missing:
        return
    comments = _comments(name)
    what = "; ".join(f"{key}: {comments[key]}" for key in missing if comments.get(key))
    them = "them" if len(missing) > 1 else "it"
    raise ConfigError(f"missing {', '.join(k + '=...' for k in missing)}; set {them} on the "
                      f"command line" + (f" ({what})" if what else ""))


def _comments(name: str) -> dict[str, str]:
    path = CONFIG_DIR / f"{name}.yaml"
    return key_comments(path) if path.is_file() else {}


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_yaml(value).strip() if isinstance(value, ListConfig) else "{...}"
    return str(value)


def _groups(cfg: DictConfig, config_dir: Path) -> dict[str, list[str]]:
    """The config groups a composed config used -> [chosen option(s) first, other options]."""
    choices = {str(k): v for k, v in cfg.hydra.runtime.choices.items()
               if not str(k).startswith("hydra")}
    options = group_options(config_dir)
    groups = {}
    for group, available in options.items():
        if group in choices:
            chosen = [] if choices[group] is None else [str(choices[group])]
        elif isinstance(cfg.get(group), DictConfig) and set(cfg[group].keys()) <= set(available):
            chosen = [str(k) for k in cfg[group].keys()]  # a list of options: logger=[csv]
        else:
            continue
        groups[group] = [*chosen, *(o for o in available if o not in chosen)]
    return groups


def _row(left: str, comment: str, width: int = 100) -> list[str]:
    """``  left   comment`` with the comment wrapped under itself."""
    import textwrap

    col = 31
    if not comment:
        return [f"  {left}"]
    if len(left) > col - 3:
        return [f"  {left}", *textwrap.wrap(comment, width, initial_indent=" " * col,
                                             subsequent_indent=" " * col)]
    return textwrap.wrap(comment, width, initial_indent=f"  {left:<{col - 3}} ",
                         subsequent_indent=" " * col)


def help_text(command: Command, cl: CommandLine) -> str:
    """``--help``: usage, what the command does, its keys (from its yaml, with their comments),
    config groups, examples and the options every command takes."""
    cfg = compose_config(cl.config_name, [], cl.config_dir, return_hydra_config=True)
    groups = _groups(cfg, Path(cl.config_dir))
    comments = _comments(command.name)
    if Path(cl.config_dir).resolve() != CONFIG_DIR:
        comments.update(key_comments(Path(cl.config_dir) / f"{cl.config_name}.yaml"))
    flags = "[-m] " if command.multirun is not None else ""
    lines = [f"usage: forcefield {command.name} {command.usage} {flags}[--cfg] [--info] "
             "[-cp DIR] [-cn NAME]", "", command.description.strip(), "",
             f"keys ({cl.config_name}.yaml in {cl.config_dir}; key=value sets, +key=value adds, "
             "~key removes):"]
    for key in cfg.keys():
        if key == "hydra" or key in groups:
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            left = f"{key}.{{{','.join(map(str, node.keys()))}}}"
        else:
            left = f"{key}={_show(node._value())}"
        lines += _row(left, comments.get(str(key), ""))
    if groups:
        lines += ["", "config groups (group=option; the default first):"]
        lines += [f"  {group:<11} {', '.join(options)}" for group, options in groups.items()]
    if command.examples:
        lines += ["", "examples:", *(f"  {line}" for line in command.examples)]
    lines += ["", "options:",
              "  --cfg              print the composed config and exit",
              "  --info             the config directory, config groups and their options",
              "  -cp DIR, -cn NAME  compose NAME.yaml of DIR (the packaged configs stay on the",
              "                     search path)"]
    if command.multirun is not None:
        lines += ["  -m                 a sweep: key=a,b ... (one run per job); Hydra sweeper and",
                  "                     launcher plugins: hydra/sweeper=..., hydra/launcher=..."]
    lines.append("  -h, --help         this help")
    return "\n".join(lines)


__all__ = ["Command", "check_given", "check_top_level", "compose_command", "help_text",
           "print_config", "report", "run_command"]
