"""Training on sharded data: forcefield train end to end, DDP, and exact mid-epoch resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from forcefield.cli import train as train_cli
from forcefield.data.sampler import BudgetBatchSampler
from forcefield.data.synthetic import oc20_like
from forcefield.data.writers import ShardedAseLmdbWriter
from forcefield.training.callbacks import BatchSamplerResume

TINY_MODEL = ["model.channels=8", "model.radial_mlp=[8]", "model.num_interactions=1",
              "model.correlation=2", "dtype=float32", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("oc20") / "train"
    with ShardedAseLmdbWriter(root, shard_size=50) as writer:
        for atoms in oc20_like(120, seed=4):
            writer.write(atoms, key_value_pairs={"sid": atoms.info["sid"]})
    return root


def _streaming_args(root, out) -> list[str]:
    return ["data=oc20", f"data.train={root}", "data.valid_fraction=0.1",
            "data.valid_samples=6", f"data.test={{val: {root}}}", "data.test_samples=7",
            "data.max_atoms=400", "data.stats_samples=40", "data.stats_cache=false",
            "data.num_workers=1", "data.progress=false", *TINY_MODEL, f"output_dir={out}"]


def test_train_on_a_sharded_directory(sharded, tmp_path):
    out = tmp_path / "run"
    rc = train_cli.main([*_streaming_args(sharded, out), "trainer.max_epochs=2",
                         "trainer.limit_train_batches=3"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["val"]["n_structures"] == 7
    assert np.isfinite(metrics["test"]["val"]["forces_mae_meV_A"])
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["extra"]["source"] == "sample" and stats["extra"]["sample_size"] == 40
    assert stats["num_structures"] == 40
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + two epochs
    assert (out / "model.pt").is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_a_sharded_directory(sharded, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "forcefield", "train", "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.max_epochs=2", *_streaming_args(sharded, out)],
        capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Test errors") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["val"]["n_structures"] == 7  # unpadded: each structure once
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


# --------------------------------------------------------------------------- resume
class _Indices(Dataset):
    def __len__(self) -> int:
        return 200

    def __getitem__(self, i: int) -> int:
        return i


class _Recorder(pl.LightningModule):
    """Records the dataset indices of every training batch; stops at a given step."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []
        self.stop_at = stop_at

    def training_step(self, batch, batch_idx):
        self.seen.append([int(x) for x in batch])
        if self.stop_at is not None and len(self.seen) == self.stop_at:
            raise KeyboardInterrupt
        return (self.w * batch.double().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(tmp_path, module, ckpt_path=None):
    natoms = np.random.default_rng(0).integers(20, 121, size=200)
    sampler = BudgetBatchSampler(natoms, max_atoms=700, seed=5)
    loader = DataLoader(_Indices(), batch_sampler=sampler, num_workers=1,
                        persistent_workers=True, multiprocessing_context="fork")

    class SaveOnInterrupt(pl.Callback):
        def on_exception(self, trainer, pl_module, exception):
            trainer.save_checkpoint(tmp_path / "interrupted.ckpt")

    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, accelerator="cpu", devices=1,
                         callbacks=[BatchSamplerResume(sampler), SaveOnInterrupt()])
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return len(sampler)


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    straight = _Recorder()
    per_epoch = _fit(tmp_path, straight)
    assert len(straight.seen) == 3 * per_epoch
    assert straight.seen[:per_epoch] != straight.seen[per_epoch:2 * per_epoch]  # reshuffled
    stop = per_epoch + 5  # inside the second epoch
    first = _Recorder(stop_at=stop)
    with pytest.raises((SystemExit, KeyboardInterrupt)):  # Lightning exits after a Ctrl-C
        _fit(tmp_path, first)
    resumed = _Recorder()
    _fit(tmp_path, resumed, ckpt_path=tmp_path / "interrupted.ckpt")
    # the interrupted step did not complete: it is repeated, then the rest follows exactly
    assert first.seen[:stop - 1] + resumed.seen == straight.seen


def test_ddp_loss_is_the_exact_per_atom_mean_over_ranks():
    """Two ranks with different atom counts: the DDP-averaged loss (and so its gradient)
    equals the loss of the union batch, not the mean of the two ranks' means."""
    from torch_geometric.data import Batch, Data

    from forcefield.training.losses import LossConfig, compute_loss

    rng = np.random.default_rng(0)

    def graph(n):
        return Data(pos=torch.zeros(n, 3), natoms=torch.tensor([n]),
                    energy=torch.tensor([float(rng.normal())], dtype=torch.float64),
                    forces=torch.tensor(rng.normal(size=(n, 3))),
                    fixed=torch.tensor(rng.random(n) < 0.3),
                    e_err=torch.tensor([float(rng.normal())], dtype=torch.float64),
                    f_err=torch.tensor(rng.normal(size=(n, 3))))

    ranks = [[graph(5), graph(40)], [graph(3)]]
    union = Batch.from_data_list(ranks[0] + ranks[1])
    weight = torch.zeros(1, dtype=torch.float64, requires_grad=True)

    def pred(batch):
        return {"energy": batch.energy + weight * batch.e_err * batch.natoms,
                "forces": batch.forces + weight * batch.f_err}

    cfg = LossConfig(energy_weight=2.0, forces_weight=10.0)
    batches = [Batch.from_data_list(r) for r in ranks]
    # what the all-reduce returns: energies and free force components of both ranks
    counts = sum(torch.tensor([float(len(b.energy)), float((~b.fixed).sum()) * 3, 0.0],
                              dtype=torch.float64) for b in batches)

    def reduce_counts(local):
        return counts, 2

    with torch.no_grad():
        weight.fill_(0.3)
    ddp = [compute_loss(b, pred(b), cfg, reduce_counts=reduce_counts)[0] for b in batches]
    averaged = (ddp[0] + ddp[1]) / 2  # what DDP's gradient averaging optimises
    exact, _ = compute_loss(union, pred(union), cfg)
    naive = sum(compute_loss(b, pred(b), cfg)[0] for b in batches) / 2
    assert float(averaged) == pytest.approx(float(exact), rel=1e-12)
    assert abs(float(naive) - float(exact)) > 1e-3 * float(exact)
    g_avg = torch.autograd.grad(averaged, weight)[0]
    g_exact = torch.autograd.grad(exact, weight)[0]
    assert float(g_avg) == pytest.approx(float(g_exact), rel=1e-12)
