"""Lightning callbacks of forcefield's own (besides checkpoints, progress and interrupts)."""

from __future__ import annotations

import lightning.pytorch as pl

from forcefield.data.sampler import BudgetBatchSampler


class BatchSamplerResume(pl.Callback):
    """Exact resume mid-epoch for a :class:`BudgetBatchSampler`.

    The checkpoint records the sampler's epoch and how many batches of that epoch were done;
    on resume the sampler is put back into that epoch and skips those batches before the
    first iterator is created (Lightning builds it before ``on_train_epoch_start``), so
    the resumed run sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, batch_sampler: BudgetBatchSampler) -> None:
        self.batch_sampler = batch_sampler

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        # Lightning's count within the epoch (after a resume it continues from the skipped
        # batches, so it is the position in the full epoch either way)
        checkpoint["batch_sampler"] = {"epoch": self.batch_sampler.epoch, "batches_done": done,
                                       "num_batches": len(self.batch_sampler)}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get("batch_sampler")
        if not state:
            return
        done, total = int(state["batches_done"]), int(state["num_batches"])
        if 0 < done < total and total == len(self.batch_sampler):
            self.batch_sampler.set_epoch(int(state["epoch"]))
            self.batch_sampler.set_start_iter(done)
