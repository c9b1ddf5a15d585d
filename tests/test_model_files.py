"""Every command and API that reads a model: a file that is not one is one sentence.

Commands (evaluate, export, md, relax, train ckpt_path=/init_from=) x bad files (garbage,
a truncated model.pt, another program's torch file or Lightning checkpoint, pickles that
carry code): non-zero exit, one line on stderr naming the file, no traceback, never torch's
advice to disable weights_only, and no pickled code ever runs.
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ase.build import molecule
from ase.io import write
from helpers import tiny_model

from forcefield.export import save_model
from forcefield.model_files import ModelFileError, load_network, read_any, read_checkpoint

BAD_KINDS = ("garbage", "truncated", "foreign_torch", "foreign_lightning", "code_in_torch_zip",
             "code_in_plain_pickle")


class _RunsCode:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "model.pt"
    save_model(path, tiny_model())
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, good_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    marker = root / "CODE_RAN"
    files = {name: root / f"{name}.pt" for name in BAD_KINDS}
    files["garbage"].write_bytes(random.Random(0).randbytes(3000))
    data = good_model.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    torch.save({"a": 1}, files["foreign_torch"])
    torch.save({"epoch": 2, "global_step": 10, "pytorch-lightning_version": "2.6.0",
                "state_dict": {"layer.weight": torch.zeros(2, 2)}, "optimizer_states": [],
                "hyper_parameters": {"lr": 0.1}}, files["foreign_lightning"])
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, files["code_in_torch_zip"])
    with open(files["code_in_plain_pickle"], "wb") as handle:
        pickle.dump(_RunsCode(marker), handle)
    yield files
    assert not marker.exists(), "a pickled payload was executed while loading"


@pytest.fixture(scope="module")
def structure(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("structure") / "mol.xyz"
    write(path, molecule("CH3OH"))
    return path


def _one_sentence(text: str, path: Path) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    line = lines[0]
    assert str(path) in line, line
    assert "Traceback" not in text and "weights_only" not in text and "Weights only" not in text
    assert "model file" in line or "checkpoint" in line, line
    return line


# ---------------------------------------------------------------------------- the CLI
def _evaluate(bad: Path, tmp: Path, structure: Path) -> int:
    from forcefield.cli import evaluate

    return evaluate.main([f"model={bad}", f"output_dir={tmp / 'eval'}"])


def _export(bad: Path, tmp: Path, structure: Path) -> int:
    from forcefield.cli import export

    code = export.main([f"checkpoint={bad}", f"output={tmp / 'exported.pt'}"])
    assert not (tmp / "exported.pt").exists()
    return code


def _md(bad: Path, tmp: Path, structure: Path) -> int:
    from forcefield.cli import md

    return md.main([f"model={bad}", f"structure={structure}", f"output_dir={tmp / 'md'}",
                    "steps=2", "progress=false"])


def _relax(bad: Path, tmp: Path, structure: Path) -> int:
    from forcefield.cli import relax

    code = relax.main([f"model={bad}", f"structure={structure}", f"output_dir={tmp / 'relax'}",
                       "progress=false"])
    assert not (tmp / "relax").exists()
    return code


def _resume(bad: Path, tmp: Path, structure: Path) -> int:
    from forcefield.cli import train

    return train.main([f"ckpt_path={bad}", f"output_dir={tmp / 'run'}"])


def _init_from(bad: Path, tmp: Path, structure: Path) -> int:
    from forcefield.cli import train

    return train.main([f"init_from={bad}", f"output_dir={tmp / 'run'}"])


COMMANDS = {"evaluate": _evaluate, "export": _export, "md": _md, "relax": _relax,
            "train ckpt_path": _resume, "train init_from": _init_from}


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_with_a_bad_model_file(command, kind, bad_files, structure, tmp_path, capsys):
    bad = bad_files[kind]
    code = COMMANDS[command](bad, tmp_path, structure)
    captured = capsys.readouterr()
    assert code != 0
    line = _one_sentence(captured.err, bad)
    assert line.startswith(f"forcefield {command.split()[0]}: error: ")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_model_file_where_a_checkpoint_is_expected(good_model, tmp_path, capsys, structure):
    assert _resume(good_model, tmp_path, structure) == 2
    line = _one_sentence(capsys.readouterr().err, good_model)
    assert "is a forcefield model file (model.pt), not a" in line


def test_export_takes_a_model_file(good_model, tmp_path):
    """export also converts a model.pt (here to float32): the same weights, rounded."""
    from forcefield.cli import export
    from forcefield.export import load_model

    out = tmp_path / "m32.pt"
    assert export.main([f"checkpoint={good_model}", f"output={out}", "dtype=float32"]) == 0
    source, converted = load_model(good_model), load_model(out)
    assert converted.dtype == torch.float32
    for a, b in zip(source.state_dict().values(), converted.state_dict().values(),
                    strict=True):
        if a.is_floating_point():
            assert torch.equal(a.float(), b)


def test_cli_subprocess_garbage_model(bad_files, tmp_path):
    """As a user runs it: exit code 2 and one line, from a fresh interpreter."""
    bad = bad_files["code_in_torch_zip"]
    proc = subprocess.run([sys.executable, "-m", "forcefield", "evaluate", f"model={bad}",
                           f"output_dir={tmp_path / 'e'}"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    line = _one_sentence(proc.stderr, bad)
    assert "pickled Python objects" in line and "refused" in line


# ---------------------------------------------------------------------------- the API
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_python_api_with_a_bad_model_file(kind, bad_files):
    import forcefield
    from forcefield import ForceFieldCalculator

    bad = bad_files[kind]
    for load in (forcefield.load_model, ForceFieldCalculator, load_network, read_any,
                 read_checkpoint):
        with pytest.raises(ModelFileError) as info:
            load(bad)
        _one_sentence(str(info.value), bad)


def test_messages_say_what_the_file_is(bad_files):
    expected = {
        "garbage": "is not a readable torch file (truncated or corrupted",
        "truncated": "is not a readable torch file (truncated or corrupted",
        "foreign_torch": "is a torch file of another program",
        "foreign_lightning": "is a Lightning checkpoint of another program",
        "code_in_torch_zip": "holds pickled Python objects other than tensors",
        "code_in_plain_pickle": "is not a readable torch file",
    }
    for kind, text in expected.items():
        with pytest.raises(ModelFileError, match=r".*expected a forcefield model file") as info:
            load_network(bad_files[kind])
        assert text in str(info.value), (kind, str(info.value))


def test_load_network_reads_model_files_and_checkpoints(good_model, tmp_path):
    from forcefield.training.module import ForceFieldModule

    net, info = load_network(good_model)
    assert info["kind"] == "model" and not net.training
    module = ForceFieldModule(model=tiny_model(), training={"ema": {"enabled": False}})
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "epoch": 4,
                "hyper_parameters": dict(module.hparams)}, ckpt)
    from_ckpt, info = load_network(ckpt, dtype="float32")
    assert info == {"kind": "checkpoint", "epoch": 4, "dtype": "float64",
                    "training": {"ema": {"enabled": False}}}
    assert next(from_ckpt.parameters()).dtype == torch.float32
    for (name, a), b in zip(net.state_dict().items(), from_ckpt.state_dict().values(),
                            strict=True):
        assert torch.allclose(a.float(), b, atol=1e-6), name
