"""The deployable model file: exact round trip, no pickled code, clear errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read
from helpers import TINY, tiny_model

from forcefield.export import (
    FORMAT_VERSION,
    ModelFileError,
    check_checkpoint_file,
    file_kind,
    load_model,
    model_info,
    read_model_file,
    save_model,
)


@pytest.fixture(scope="module")
def molecule(repo_data):
    return read(repo_data / "3bpa" / "train_300K.xyz", 0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    model = tiny_model()
    path = tmp_path_factory.mktemp("export") / "model.pt"
    save_model(path, model, metadata={"data": "3bpa train_300K", "metrics": {"e_rmse": 1.5}})
    return path, model


def predict(model, atoms, stress=False):
    from torch_geometric.loader import DataLoader

    from forcefield.data import AtomicData

    batch = next(iter(DataLoader([AtomicData.from_ase(atoms, model.config["r_max"])],
                                 batch_size=1)))
    return model(batch, compute_forces=True, compute_stress=stress)


def test_round_trip_is_exact(model_file, molecule):
    path, model = model_file
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.config == model.config
    ref, new = model.state_dict(), loaded.state_dict()
    assert ref.keys() == new.keys()
    for key in ref:
        assert ref[key].dtype == new[key].dtype, key
        assert torch.equal(ref[key], new[key]), key
    a, b = predict(model, molecule), predict(loaded, molecule)
    assert torch.equal(a["energy"], b["energy"])
    assert torch.equal(a["forces"], b["forces"])
    assert torch.equal(a["node_energy"], b["node_energy"])


def test_file_is_a_plain_dict_loadable_without_pickled_code(model_file):
    path, model = model_file
    raw = torch.load(path, weights_only=True)  # would raise on any pickled class
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["model_class"] == "GauntMACE"
    assert raw["species"] == [1, 6, 7, 8]
    assert raw["r_max"] == pytest.approx(4.0)
    assert raw["e0s"] == {int(k): float(v) for k, v in TINY["e0s"].items()}
    assert raw["dtype"] == "float64"
    meta = raw["metadata"]
    assert meta["forcefield_version"]
    assert meta["torch_version"] == str(torch.__version__)
    assert meta["data"] == "3bpa train_300K" and meta["metrics"] == {"e_rmse": 1.5}
    assert file_kind(path) == "model"
    info = model_info(path)
    assert info["species"] == [1, 6, 7, 8] and info["model_class"] == "GauntMACE"
    assert load_model(path).metadata["data"] == "3bpa train_300K"
    # written atomically: no temporary files left beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


def test_dtype_and_device_choice(model_file, molecule):
    path, _ = model_file
    default = torch.get_default_dtype()
    m32 = load_model(path, dtype="float32")
    m64 = load_model(path, dtype=torch.float64)
    assert all(p.dtype == torch.float32 for p in m32.parameters())
    assert all(p.dtype == torch.float64 for p in m64.parameters())
    assert all(p.dtype == torch.float64 for p in load_model(path).parameters())
    assert torch.get_default_dtype() == default
    e32 = predict(m32, molecule)["energy"].item()
    e64 = predict(m64, molecule)["energy"].item()
    assert abs(e32 - e64) < 1e-2  # float32 model, float64 energy accumulation
    with pytest.raises(ValueError, match="float16|dtype"):
        load_model(path, dtype="float16")


def test_float32_model_saved_and_loaded_as_float32(tmp_path, molecule):
    model = tiny_model(1).float()
    save_model(tmp_path / "m32.pt", model)
    loaded = load_model(tmp_path / "m32.pt")
    assert next(loaded.parameters()).dtype == torch.float32
    assert torch.equal(predict(model, molecule)["forces"], predict(loaded, molecule)["forces"])


def test_overwrite_is_atomic(tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, tiny_model(0))
    save_model(path, tiny_model(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    new = load_model(path).state_dict()
    ref = tiny_model(1).state_dict()
    assert all(torch.equal(new[k], ref[k]) for k in ref)


def test_failed_save_leaves_nothing(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(TypeError, match="metadata"):
        save_model(path, tiny_model(), metadata={"bad": object()})
    with pytest.raises(TypeError, match="config"):
        save_model(path, torch.nn.Linear(2, 2))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- errors
def test_other_format_version(model_file, tmp_path):
    raw = torch.load(model_file[0], weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, tmp_path / "new.pt")
    with pytest.raises(ModelFileError, match=r"format version 2.*upgrade forcefield"):
        load_model(tmp_path / "new.pt")
    raw["format_version"] = 0
    torch.save(raw, tmp_path / "old.pt")
    with pytest.raises(ModelFileError, match=r"format version 0.*re-export"):
        load_model(tmp_path / "old.pt")


def test_truncated_file(model_file, tmp_path):
    data = model_file[0].read_bytes()
    for n in (0, 10, len(data) // 2, len(data) - 5):
        bad = tmp_path / f"trunc{n}.pt"
        bad.write_bytes(data[:n])
        with pytest.raises(ModelFileError, match="truncated or corrupted"):
            load_model(bad)


def test_corrupted_weights_detected(model_file, tmp_path):
    path = model_file[0]
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 8)
    header = info.header_offset
    name_len = int.from_bytes(data[header + 26:header + 28], "little")
    extra_len = int.from_bytes(data[header + 28:header + 30], "little")
    data[header + 30 + name_len + extra_len + 3] ^= 0xFF  # flip bits inside a weight tensor
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupted"):
        load_model(bad)


def test_not_a_torch_file(tmp_path, repo_data):
    text = tmp_path / "model.pt"
    text.write_text("this is not a model\n")
    with pytest.raises(ModelFileError, match="truncated or corrupted"):
        load_model(text)
    with pytest.raises(ModelFileError):
        load_model(repo_data / "3bpa" / "iso_atoms.xyz")


def test_lightning_checkpoint_passed_as_model(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.6.0",
                "state_dict": tiny_model().state_dict(), "optimizer_states": [],
                "hyper_parameters": {"model_config": dict(TINY)}}, ckpt)
    assert file_kind(ckpt) == "checkpoint"
    with pytest.raises(ModelFileError, match=r"Lightning training checkpoint.*forcefield export"):
        load_model(ckpt)
    assert check_checkpoint_file(ckpt) == ckpt


def test_model_file_passed_as_checkpoint(model_file, tmp_path):
    with pytest.raises(ModelFileError, match="model file .*not a Lightning checkpoint"):
        check_checkpoint_file(model_file[0])
    with pytest.raises(FileNotFoundError):
        check_checkpoint_file(tmp_path / "missing.ckpt")


def test_some_other_torch_file(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(ModelFileError, match="not a forcefield model file"):
        load_model(tmp_path / "w.pt")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(IsADirectoryError, match="directory"):
        load_model(tmp_path)


def test_pickled_code_is_refused(model_file, tmp_path):
    """A model file with a pickled object inside is refused, never executed."""
    raw = torch.load(model_file[0], weights_only=True)

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    raw["metadata"] = {"evil": Payload()}
    torch.save(raw, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match="refused"):
        load_model(tmp_path / "evil.pt")


def test_damaged_state_dict(model_file, tmp_path):
    raw = read_model_file(model_file[0])
    raw["state_dict"].pop(next(iter(raw["state_dict"])))
    torch.save(raw, tmp_path / "damaged.pt")
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(tmp_path / "damaged.pt")
    raw = read_model_file(model_file[0])
    raw["config"]["no_such_key"] = 1
    torch.save(raw, tmp_path / "badcfg.pt")
    with pytest.raises(ModelFileError, match="config"):
        load_model(tmp_path / "badcfg.pt")


# ------------------------------------------------------------ checkpoint -> model file
def test_exported_model_predicts_what_the_checkpoint_does(tmp_path, repo_data):
    """Train two steps with Lightning, export the checkpoint: EMA predictions are identical."""
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    from torch_geometric.loader import DataLoader

    from forcefield.data import AtomicData
    from forcefield.export import export_checkpoint
    from forcefield.training.module import ForceFieldModule

    frames = read(repo_data / "3bpa" / "train_300K.xyz", ":4")
    graphs = [AtomicData.from_ase(a, TINY["r_max"]) for a in frames]
    torch.manual_seed(0)
    module = ForceFieldModule(model=tiny_model().train(), training={"ema": {"decay": 0.5}},
                              dtype="float64")
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False)
    trainer.fit(module, train_dataloaders=DataLoader(graphs, batch_size=2))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    assert file_kind(ckpt) == "checkpoint"

    exported = load_model(export_checkpoint(str(ckpt), str(tmp_path / "model.pt")))
    reference = ForceFieldModule.from_checkpoint_file(ckpt).eval_model().eval()
    live = ForceFieldModule.from_checkpoint_file(ckpt).model.eval()
    for atoms in frames[:2]:
        ref, new = predict(reference, atoms), predict(exported, atoms)
        assert torch.equal(ref["energy"], new["energy"])
        assert torch.equal(ref["forces"], new["forces"])
        # the EMA weights, not the live ones, are what was exported
        assert not np.allclose(predict(live, atoms)["forces"].numpy(), new["forces"].numpy(),
                               rtol=0, atol=1e-12)
