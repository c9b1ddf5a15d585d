"""Finding, composing and checking the Hydra configuration.

The configuration directory is resolved to an absolute path at import time
(``forcefield/conf``: a symlink to the repository's ``conf/`` in a checkout or an
editable install, a real folder of package data after ``pip install .``), so the
console script works from any working directory. ``-cp/--config-path`` and
``-cn/--config-name`` choose another directory / primary config; the packaged
directory stays on the search path, so a user's config can still say
``defaults: [data: 3bpa, ...]``.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR: Path = (Path(__file__).resolve().parent.parent / "conf").resolve()
"""The packaged configuration directory (absolute)."""


class ConfigError(ValueError):
    """A configuration a user wrote that cannot run (unknown key, missing path, bad value)."""


def _now(fmt: str = "%Y-%m-%d_%H-%M-%S") -> str:
    return _dt.datetime.now().strftime(fmt)


if not OmegaConf.has_resolver("now"):  # Hydra registers it only under @hydra.main
    OmegaConf.register_new_resolver("now", _now, use_cache=True)


@dataclass
class CommandLine:
    config_dir: Path
    config_name: str
    overrides: list[str] = field(default_factory=list)
    help: bool = False
    print_config: bool = False
    multirun: bool = False  # -m/--multirun: a sweep (forcefield train only)
    info: bool = False  # --info: config directory, groups and their options


def parse_argv(argv: Sequence[str], default_name: str) -> CommandLine:
    """Split ``argv`` into Hydra overrides and the ``-cp``/``-cn``/``--help`` flags."""
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
        elif arg in ("-c", "--cfg", "--print-config"):
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
        else:
            if "=" not in arg:
                raise ConfigError(
                    f"argument {arg!r} is not an override; write key=value "
                    "(e.g. trainer.max_epochs=5)"
                )
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


def compose_config(
    config_name: str,
    overrides: Iterable[str] = (),
    config_dir: str | os.PathLike | None = None,
) -> DictConfig:
    """Compose ``config_name`` with overrides; Hydra errors become :class:`ConfigError`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_dir = Path(config_dir or CONFIG_DIR).resolve()
    overrides = list(overrides)
    if config_dir != CONFIG_DIR:
        overrides.append(f"hydra.searchpath=[file://{CONFIG_DIR}]")
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise ConfigError(f"config {config_name!r} not found in {config_dir} (-cn/-cp)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir), version_base=None):
            cfg = compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_hydra_message(exc)) from exc
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


def _hydra_message(exc: BaseException) -> str:
    import re

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


def check_keys(cfg: DictConfig, allowed: Iterable[str], where: str = "") -> None:
    """Raise ConfigError naming keys of ``cfg`` that are not in ``allowed``."""
    unknown = sorted(set(cfg.keys()) - set(allowed) - {"hydra"})
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + str(k) for k in unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def check_missing(cfg: DictConfig) -> None:
    """Raise ConfigError naming mandatory values (``???``) left unset."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"missing value(s) for {', '.join(missing)}; set them on the command line, "
            f"e.g. {missing[0]}=..."
        )


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_yaml(cfg: DictConfig, path: Path) -> None:
    from forcefield.training.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


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
