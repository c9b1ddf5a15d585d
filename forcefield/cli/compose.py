"""Reading a command line and composing its config from ``conf/<command>.yaml`` with Hydra.

Every subcommand goes through here, so each takes the same arguments: Hydra overrides
(``key=value``, ``group=option``, ``+key=value`` to add, ``~key`` to remove) and the flags
``--help``, ``--cfg``, ``--info``, ``-cp DIR``/``-cn NAME`` and (train) ``-m``.

The configuration directory is resolved to an absolute path at import time
(``forcefield/conf``: a symlink to the repository's ``conf/`` in a checkout or an
editable install, a real folder of package data after ``pip install .``), so the
console script works from any working directory. ``-cp`` and ``-cn`` choose another
directory / primary config; the packaged directory stays on the search path, so a
user's config can still say ``defaults: [train, _self_]`` or ``defaults: [data: 3bpa]``.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from forcefield.errors import ConfigError

CONFIG_DIR: Path = (Path(__file__).resolve().parent.parent / "conf").resolve()
"""The packaged configuration directory (absolute)."""


def _now(fmt: str = "%Y-%m-%d_%H-%M-%S") -> str:
    return _dt.datetime.now().strftime(fmt)


if not OmegaConf.has_resolver("now"):  # Hydra registers it only under @hydra.main
    OmegaConf.register_new_resolver("now", _now, use_cache=True)


@dataclass
class CommandLine:
    """What one command line asks for: the config to compose and what to do with it."""

    config_dir: Path
    config_name: str
    overrides: list[str] = field(default_factory=list)
    help: bool = False
    print_config: bool = False  # --cfg: print the composed config, run nothing
    multirun: bool = False  # -m/--multirun: a sweep (forcefield train only)
    info: bool = False  # --info: config directory, groups and their options


def parse_argv(argv: Sequence[str], default_name: str) -> CommandLine:
    """Split ``argv`` into Hydra overrides and the ``-cp``/``-cn``/``--help``/... flags."""
    cl = CommandLine(config_dir=CONFIG_DIR, config_name=default_name)
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            cl.help = True
        elif arg in ("-m", "--multirun"):
            cl.multirun = True
        elif arg == "--info" or arg.startswith("--info="):
            cl.info = True
        elif arg in ("-c", "--cfg", "--print-config") or arg.startswith("--cfg="):
            cl.print_config = True
            if i + 1 < len(args) and args[i + 1] in ("job", "all"):
                i += 1
        elif arg in ("-cp", "--config-path", "--config-dir", "-cd") or arg.startswith(
            ("--config-path=", "--config-dir=")
        ):
            value, i = _flag_value(args, i)
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ConfigError(f"config directory {value!r} (-cp) does not exist")
            cl.config_dir = path.resolve()
        elif arg in ("-cn", "--config-name") or arg.startswith("--config-name="):
            value, i = _flag_value(args, i)
            cl.config_name = value.removesuffix(".yaml")
        elif arg.startswith("-") and "=" not in arg:
            raise ConfigError(
                f"unknown option {arg!r}; options are -m, -cp DIR, -cn NAME, --cfg, --info, "
                "--help, everything else is key=value"
            )
        elif "=" not in arg and not arg.startswith("~"):
            raise ConfigError(
                f"argument {arg!r} is not an override; write key=value "
                "(e.g. trainer.max_epochs=5)"
            )
        else:
            cl.overrides.append(arg)
        i += 1
    return cl


def _flag_value(args: list[str], i: int) -> tuple[str, int]:
    arg = args[i]
    if "=" in arg and arg.startswith("--"):
        return arg.split("=", 1)[1], i
    if i + 1 >= len(args):
        raise ConfigError(f"option {arg} needs a value")
    return args[i + 1], i + 1


def search_path_overrides(config_dir: str | os.PathLike) -> list[str]:
    """Keep the packaged configs on the search path when ``-cp`` names another directory."""
    if Path(config_dir).resolve() != CONFIG_DIR:
        return [f"hydra.searchpath=[file://{CONFIG_DIR}]"]
    return []


def compose_config(
    config_name: str,
    overrides: Iterable[str] = (),
    config_dir: str | os.PathLike | None = None,
    return_hydra_config: bool = False,
) -> DictConfig:
    """Compose ``config_name`` with overrides; Hydra errors become :class:`ConfigError`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_dir = Path(config_dir or CONFIG_DIR).resolve()
    overrides = [*overrides, *search_path_overrides(config_dir)]
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise ConfigError(f"config {config_name!r} not found in {config_dir} (-cn/-cp)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir), version_base=None):
            cfg = compose(config_name, overrides=overrides,
                          return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(hydra_message(exc)) from exc
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _clean(text: str) -> str:
    keep = []
    for line in str(text).strip().splitlines():
        line = line.strip()
        if not line or line.startswith(("full_key", "object_type", "reference_type")):
            continue
        if line.startswith(("Config search path", "provider=")):
            break
        keep.append(line)
    return " ".join(keep)


def hydra_message(exc: BaseException) -> str:
    """One sentence from a Hydra/OmegaConf error (which spans lines and nests causes)."""
    text = _clean(str(exc))
    m = re.search(r"Could not override '([^']+)'", text)
    if m and "not in struct" in f"{text} {exc.__cause__}":
        return (f"unknown config key '{m.group(1)}' (check the spelling; "
                "'forcefield <command> --cfg' prints every key)")
    cause = exc.__cause__
    if cause is not None:
        extra = _clean(str(cause))
        if extra and extra not in text:
            text = f"{text}: {extra}"
    return text


def pop_override(overrides: list[str], key: str) -> tuple[list[str], str | None]:
    """Remove ``key=value`` from overrides (for keys that clash with a config group name)."""
    rest, value = [], None
    for item in overrides:
        k, _, v = item.partition("=")
        if k.lstrip("+") == key:
            value = v
        else:
            rest.append(item)
    return rest, value


def override_key(item: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~a`` -> ``a``; ``hydra/launcher=x`` -> ``hydra/launcher``."""
    return item.partition("=")[0].lstrip("+~")


def quote(text: str) -> str:
    """``text`` as one quoted Hydra override value (spaces, ``,``, ``=``, ``'`` kept as is)."""
    # in a quoted value a backslash escapes only a quote, or backslashes before one / the end
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", str(text))
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def group_options(config_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Every config group (a folder of yaml files) and its options, packaged ones included."""
    groups: dict[str, set[str]] = {}
    for root in dict.fromkeys([Path(config_dir), CONFIG_DIR]):
        for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
            options = {f.stem for f in folder.glob("*.yaml")}
            if options:
                groups.setdefault(folder.name, set()).update(options)
    return {group: sorted(options) for group, options in sorted(groups.items())}


def config_info(cl: CommandLine) -> str:
    """``--info``: where the configs are, the primary config, every group and its options."""
    lines = [f"config directory: {cl.config_dir}", f"primary config:   {cl.config_name}.yaml"]
    if Path(cl.config_dir).resolve() != CONFIG_DIR:
        lines.append(f"also searched:    {CONFIG_DIR}")
    lines.append("config groups (choose with group=option; several: group=[a,b]):")
    for group, options in group_options(cl.config_dir).items():
        lines.append(f"  {group:<11} {', '.join(options)}")
    return "\n".join(lines)


def key_comments(path: str | os.PathLike) -> dict[str, str]:
    """The comment at the end of each top-level ``key: value`` line of a yaml file (plus the
    comment-only lines right below it): the one place a command documents its keys."""
    comments: dict[str, str] = {}
    key = None
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^([A-Za-z_][\w]*):(.*)$", line)
        if m:
            key = m.group(1)
            _, _, comment = m.group(2).partition(" #")
            comments[key] = comment.strip()
        elif key and re.match(r"^\s+#", line):
            comments[key] = f"{comments[key]} {line.strip().lstrip('#').strip()}".strip()
        else:
            key = None
    return comments


__all__ = ["CONFIG_DIR", "CommandLine", "compose_config", "config_info", "group_options",
           "hydra_message", "key_comments", "override_key", "parse_argv", "pop_override",
           "quote", "search_path_overrides"]
