"""The one command layer: every subcommand parsed, composed, helped and failing the same way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from forcefield.cli.command import Command, run_command
from forcefield.cli.compose import CONFIG_DIR, compose_config, parse_argv, quote
from forcefield.cli.main import SUBCOMMANDS
from forcefield.cli.main import main as forcefield
from forcefield.errors import ConfigError, ForceFieldError, RunError

#: the least each command needs for its config to be complete
GIVEN = {"train": [], "evaluate": ["model=m.pt"], "export": ["checkpoint=c.ckpt", "output=m.pt"],
         "md": ["model=m.pt", "structure=s.xyz"], "relax": ["model=m.pt", "structure=s.xyz"],
         "convert": ["input=a.xyz", "output=out"],
         "select": ["models=m*.pt", "candidates=c.xyz"], "lammps": ["action=build"]}


def _top_level_keys(name: str) -> list[str]:
    data = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    return [k for k in data if k != "defaults"]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_every_subcommand_has_its_yaml():
    assert set(GIVEN) == set(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        assert (CONFIG_DIR / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_help_lists_every_key_of_the_yaml(name, capsys):
    assert forcefield([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: forcefield {name} ")
    for option in ("--cfg", "--info", "-cp DIR, -cn NAME", "--help"):
        assert option in out
    listed = re.findall(r"^  (\w+)[=.]", out[out.index("keys ("):], flags=re.M)
    groups = set(re.findall(r"^  (\w+) +\S", out[out.index("config groups"):], flags=re.M)
                 ) if "config groups" in out else set()
    assert set(_top_level_keys(name)) <= set(listed) | groups
    assert ("-m " in out) == (name == "train")


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_cfg_prints_the_composed_config(name, capsys):
    assert forcefield([name, "--cfg", *GIVEN[name]]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    for item in GIVEN[name]:
        key, _, value = item.partition("=")
        assert cfg[key] == value
    assert set(_top_level_keys(name)) <= set(cfg)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
@pytest.mark.parametrize("bad, needle", [("nosuchkey=1", "nosuchkey"),
                                         ("+nosuchkey=1", "nosuchkey"),
                                         ("--nosuch", "--nosuch"),
                                         ("nosuch", "key=value")])
def test_unknown_key_or_option_is_one_sentence_and_exit_2(name, bad, needle, capsys, tmp_path):
    if name == "convert" and bad == "nosuch":
        needle = "'nosuch'"  # convert's older spelling: a bare word is an input source
    # (were the error missed, convert would stop at its missing input, writing nothing)
    out = [f"output_dir={tmp_path}/out"] if "output_dir" in _top_level_keys(name) else []
    assert forcefield([name, *GIVEN[name], bad, *out]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"forcefield {name}: error: ") and needle in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, needle", [
    (["md", "model=m.pt", "structure=s.xyz", "steps=ten"], "steps must be an integer, got 'ten'"),
    (["md", "model=m.pt", "structure=s.xyz", "temperature_K=hot"], "temperature_K must be a "),
    (["relax", "model=m.pt", "structure=s.xyz", "relax_cell=maybe"], "relax_cell must be true"),
    (["train", "seed=1.5"], "seed must be an integer"),
    (["convert", "input=a", "output=b", "shard_size=many"], "shard_size must be an integer"),
    (["md", "model=m.pt"], "missing structure=..."),
    (["export"], "missing checkpoint=..., output=..."),
    (["export", "checkpoint=c.ckpt", "output=m.pt", "target=local"], "add format=pt2"),
    (["export", "checkpoint=c.ckpt", "output=m.pt2", "format=pt2", "target=lammps"],
     "target='lammps' is not a package target"),
    (["lammps"], "missing action=..."),
    (["lammps", "action=install"], "action='install' is not a forcefield lammps action"),
    (["md", "-m", "steps=1,2"], "-m (multirun) is available for forcefield train, not md"),
    (["train", "hydra/launcher=submitit_local"], "add -m"),
    (["evaluate", "-cp", "/no/such/dir"], "/no/such/dir"),
    (["relax", "-cn", "nothere"], "nothere"),
])
def test_usage_errors_are_one_sentence_and_exit_2(argv, needle, capsys):
    assert forcefield(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"forcefield {argv[0]}: error: ") and needle in line


def test_md_composes_from_its_yaml_only(tmp_path, capsys):
    """No Python copy of md's defaults: what conf/md.yaml (or a user config built on it) says
    is what md runs with."""
    import forcefield.cli.md as md_cli

    assert [name for name in vars(md_cli) if name.isupper()] == ["COMMAND"]  # no DEFAULTS
    (tmp_path / "mymd.yaml").write_text("defaults:\n  - md\n  - _self_\nsteps: 7\n"
                                        "ensemble: langevin\n")
    assert forcefield(["md", "-cp", str(tmp_path), "-cn", "mymd", "--cfg", "model=m.pt",
                       "structure=s.xyz", "seed=3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    packaged = yaml.safe_load((CONFIG_DIR / "md.yaml").read_text())
    assert (cfg["steps"], cfg["ensemble"], cfg["seed"]) == (7, "langevin", 3)
    assert cfg["timestep_fs"] == packaged["timestep_fs"]
    assert set(cfg) == set(packaged)
    assert forcefield(["md", "--info", "-cp", str(tmp_path), "-cn", "mymd"]) == 0
    info = capsys.readouterr().out
    assert "primary config:   mymd.yaml" in info and str(CONFIG_DIR) in info


def test_convert_old_flags_and_key_value_compose_the_same(capsys):
    from forcefield.cli.convert import translate

    old = ["a b.xyz", "s2ef/*.lmdb", "-o", "out dir/x,y", "--shard-size", "5", "--overwrite",
           "--subtract-reference", "--task=is2re", "--energy-key", "y", "--index", "i=j"]
    new = ["input=['a b.xyz','s2ef/*.lmdb']", "output='out dir/x,y'", "shard_size=5",
           "overwrite=true", "subtract_reference=true", "task=is2re", "energy_key=y",
           "index='i=j'"]
    assert compose_config("convert", translate(old)) == compose_config("convert", new)
    assert translate(["--cfg", "-cp", "d", "x.db", "progress=false"]) == [
        "--cfg", "-cp", "d", "progress=false", "input=['x.db']"]


def test_convert_with_key_value_syntax_and_index(repo_data, tmp_path, capsys):
    source = repo_data / "oc20" / "oc20_real_frames.extxyz"
    out = tmp_path / "shards"
    assert forcefield(["convert", f"input={source}", f"output={out}", "shard_size=1",
                       "progress=false"]) == 0
    assert "wrote 2 structures" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["data.0000.aselmdb", "data.0001.aselmdb",
                                                     "metadata.npz"]
    (out / "metadata.npz").unlink()
    assert forcefield(["convert", f"index={out}"]) == 0
    assert (out / "metadata.npz").is_file() and "wrote" in capsys.readouterr().out
    assert forcefield(["convert", f"index={out}", f"input={source}"]) == 2
    assert "run it alone" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("text", ["plain/path.xyz", "a b,c=d*.x", "it's", "back\\slash",
                                  "ends\\", "quote\\'d", "${x}"])
def test_quote_round_trips_through_hydra(text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"key={quote(text)}")
    assert override.value() == text


def test_dispatcher_exit_codes_and_bugs(tmp_path, capsys):
    """ForceFieldError: one line, exit 2; RunError: one line, exit 1; any other exception
    is a bug and keeps its traceback."""
    (tmp_path / "probe.yaml").write_text("what: usage  # usage | run | bug | ok\nn: 1\n")

    def work(cfg) -> int:
        if cfg.what == "usage":
            raise ConfigError("what=usage cannot run")
        if cfg.what == "run":
            raise RunError("the run\nfailed")
        if cfg.what == "bug":
            raise KeyError("a bug")
        return 0

    probe = Command(name="probe", usage="[key=value ...]", description="A probe.", run=work)
    argv = ["-cp", str(tmp_path)]
    assert run_command(probe, argv) == 2
    assert _one_line(capsys.readouterr().err) == "forcefield probe: error: what=usage cannot run"
    assert run_command(probe, [*argv, "what=run"]) == 1
    assert _one_line(capsys.readouterr().err) == "forcefield probe: error: the run failed"
    assert run_command(probe, [*argv, "what=ok"]) == 0
    with pytest.raises(KeyError):
        run_command(probe, [*argv, "what=bug"])
    assert run_command(probe, [*argv, "--help"]) == 0
    assert re.search(r"^  what=usage +usage \| run \| bug \| ok$", capsys.readouterr().out,
                     flags=re.M)
    assert issubclass(RunError, ForceFieldError) and RunError.exit_code == 1


def test_md_divergence_is_a_run_error():
    from forcefield.md import MDDivergedError, MDError

    assert issubclass(MDDivergedError, MDError) and issubclass(MDDivergedError, RunError)


def test_every_user_error_class_is_a_forcefield_error():
    from forcefield.calculator import CalculatorError
    from forcefield.data.errors import DataError
    from forcefield.md import MDError
    from forcefield.model_files import MissingModelFileError, ModelFileError
    from forcefield.relax import RelaxError
    from forcefield.training.config import ConfigError as TrainingConfigError

    for cls in (CalculatorError, DataError, MDError, ModelFileError, RelaxError,
                TrainingConfigError):
        assert issubclass(cls, ForceFieldError) and issubclass(cls, ValueError), cls
    assert issubclass(MissingModelFileError, FileNotFoundError)


def test_parse_argv_flags():
    cl = parse_argv(["-m", "--cfg", "job", "--info", "a=1", "~b", "+c=2"], "train")
    assert cl.multirun and cl.print_config and cl.info
    assert cl.overrides == ["a=1", "~b", "+c=2"]
    cl = parse_argv(["--config-name=mine.yaml", f"--config-path={Path.cwd()}"], "md")
    assert cl.config_name == "mine" and cl.config_dir == Path.cwd().resolve()


def test_removing_a_key_the_command_needs_is_named(capsys):
    """``~key`` removes a key; removing one of the command's own top-level keys is refused."""
    assert forcefield(["md", "model=m.pt", "structure=s.xyz", "~seed"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "seed" in line and "~seed" in line


def test_resuming_a_run_saved_before_newer_keys_composes(tmp_path, capsys):
    """A run directory's config.yaml written before a key existed (here sweep, logger) still
    resumes: only keys the user removes with ~key are refused, not keys an old file lacks."""
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    saved = OmegaConf.to_container(compose_config("train", [f"output_dir={run}"]), resolve=True)
    del saved["sweep"], saved["logger"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert forcefield(["train", "--cfg", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                       "trainer.max_epochs=3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert "sweep" not in cfg and cfg["trainer"]["max_epochs"] == 3
    assert cfg["ckpt_path"].endswith("last.ckpt")


@pytest.mark.parametrize("changes, needle", [
    ({"forces": "direct"}, "predicts forces directly (model.forces=direct), and a target=local"),
    ({"max_neighbors": 8}, "has a neighbour cap (model.max_neighbors=8)"),
])
def test_export_local_refuses_direct_and_capped_models(changes, needle, tmp_path, capsys):
    """LAMMPS packages need -dE/dx and cannot keep a neighbour cap: one sentence, nothing
    written (the ase target takes both)."""
    from helpers import TINY_EQV2

    from forcefield.export import save_model
    from forcefield.models import build_model

    model = save_model(tmp_path / "model.pt", build_model(dict(TINY_EQV2, **changes)))
    output = tmp_path / "local.pt2"
    assert forcefield(["export", f"checkpoint={model}", f"output={output}", "format=pt2",
                       "target=local"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert needle in line and str(model) in line and "target=ase" in line
    assert not output.exists()
