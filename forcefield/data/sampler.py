"""Batch sampling for large data: atom-budget packing, DDP-equal batch counts, exact resume.

:class:`BudgetBatchSampler` yields lists of dataset indices. With ``max_atoms`` it packs
structures greedily, in a seeded random order, into batches of at most ``max_atoms`` atoms
(a structure larger than the budget gets a batch of its own and is counted in
``oversized``); with ``batch_size`` it takes fixed-size batches. Everything is numpy
(int64 permutations, CSR batches): no per-structure Python objects.

Epochs: ``set_epoch(e)`` (called by Lightning through ``.sampler``) reshuffles. Fixed-size
batches are redrawn from a permutation seeded by ``seed + epoch``; budget batches are packed
once per seed (so the batch count, and ``len``, never changes) and their order is shuffled
by ``seed + epoch``, as fairchem's MaxAtomDistributedBatchSampler does.

DDP: the epoch's batch list is padded (by repeating its first batches) to a multiple of
``num_replicas`` and rank ``r`` takes batches ``r, r + W, ...``, so every rank gets exactly
``len(sampler)`` batches and no collective hangs. ``pad=False`` (evaluation) deals the
*structures* round-robin (rank ``r`` gets ``r, r + W, ...``) and packs each rank's share, so
no structure is evaluated twice and every rank has a batch as long as there are at least as
many structures as ranks (batch counts may then differ between ranks, which evaluation
allows). ``set_start_iter(k)`` skips the first ``k``
batches of the current epoch (exact resume mid-epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from forcefield.data.errors import DataError


def pack_by_atoms(natoms: np.ndarray, order: np.ndarray, max_atoms: int,
                  chunk: int = 1 << 20) -> np.ndarray:
    """Greedy sequential packing of ``order`` under ``max_atoms``; returns batch offsets.

    Batch ``b`` is ``order[offsets[b]:offsets[b+1]]``. For a chunk of positions at once,
    one vectorised ``searchsorted`` on the cumulative atom counts gives the end of the batch
    that would start at each position; following those pointers from 0 is then a cheap
    scalar loop (one step per batch), so 2M structures pack in tens of milliseconds and
    the transient arrays stay at ``chunk`` entries.
    """
    n = len(order)
    csum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(natoms[order], dtype=np.int64, out=csum[1:])
    offsets = [0]
    start = 0
    while start < n:
        lo, hi = start, min(n, start + chunk)
        # the last end with csum[end] - csum[start] <= max_atoms; at least one structure
        ends = np.searchsorted(csum, csum[lo:hi] + max_atoms, side="right") - 1
        np.maximum(ends, np.arange(lo + 1, hi + 1), out=ends)
        while start < hi:
            start = int(ends[start - lo])
            offsets.append(start)
    return np.asarray(offsets, dtype=np.int64)


class BudgetBatchSampler:
    """Batches of dataset indices by atom budget or fixed size; see the module docstring.

    Args:
        natoms: int array, atoms per structure (``StreamingDataset.natoms``).
        max_atoms: atom budget per batch (None: fixed ``batch_size``).
        batch_size: structures per batch when ``max_atoms`` is None.
        shuffle: random order (training) or dataset order (evaluation).
        seed: base seed; the epoch is added for each epoch's shuffle.
        num_replicas / rank: DDP world size and this process's rank.
        pad: pad to a multiple of ``num_replicas`` so every rank gets the same count.
        drop_last: fixed-size mode: drop a last, smaller batch.
    """

    def __init__(self, natoms, *, max_atoms: int | None = None, batch_size: int | None = None,
                 shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 pad: bool = True, drop_last: bool = False) -> None:
        self.natoms = np.asarray(natoms, dtype=np.int32)
        if len(self.natoms) == 0:
            raise DataError("cannot batch an empty dataset; check the data sources.")
        if max_atoms is None and batch_size is None:
            raise DataError("give data.batch_size or data.max_atoms.")
        if max_atoms is not None and int(max_atoms) < 1:
            raise DataError(f"max_atoms must be a positive integer, got {max_atoms!r}.")
        if batch_size is not None and int(batch_size) < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size!r}.")
        self.max_atoms = None if max_atoms is None else int(max_atoms)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.pad = bool(pad)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.start_iter = 0
        self.set_distributed(num_replicas, rank)
        self.oversized = 0
        if self.max_atoms is not None:
            self.oversized = int(np.sum(self.natoms > self.max_atoms))
            n = len(self.natoms)
            index_dtype = np.int32 if n < 2**31 else np.int64
            order = (np.random.default_rng(self.seed).permutation(n) if self.shuffle
                     else np.arange(n))
            self._flat = order.astype(index_dtype, copy=False)
            self._offsets = pack_by_atoms(self.natoms, self._flat, self.max_atoms)

    # ------------------------------------------------------------------ Lightning hooks
    @property
    def sampler(self) -> BudgetBatchSampler:
        """Lightning calls ``loader.batch_sampler.sampler.set_epoch``: this is that object."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (and forget a resume offset from another epoch)."""
        if int(epoch) != self.epoch:
            self.start_iter = 0
        self.epoch = int(epoch)

    def set_start_iter(self, start_iter: int) -> None:
        """Skip the first ``start_iter`` batches of this epoch (resume mid-epoch)."""
        self.start_iter = max(0, int(start_iter))

    def set_distributed(self, num_replicas: int, rank: int) -> None:
        """Set the DDP world size and rank (before iterating)."""
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"invalid rank {rank} for {num_replicas} replicas")
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    # ------------------------------------------------------------------ batches
    def _dealt(self) -> bool:
        return not self.pad and self.num_replicas > 1

    def _share(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat, offsets) of this rank's batches when structures are dealt (``pad=False``)."""
        share = np.arange(self.rank, len(self.natoms), self.num_replicas, dtype=np.int64)
        if self.shuffle:
            share = share[np.random.default_rng((self.seed, self.epoch)).permutation(len(share))]
        if self.max_atoms is not None:
            return share, pack_by_atoms(self.natoms, share, self.max_atoms)
        nb = math.ceil(len(share) / self.batch_size)
        return share, np.minimum(np.arange(nb + 1, dtype=np.int64) * self.batch_size,
                                 len(share))

    def _num_batches_total(self) -> int:
        if self.max_atoms is not None:
            return len(self._offsets) - 1
        n = len(self.natoms)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_batches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flat indices, batch starts, batch lengths) of this epoch before the rank split:
        batch ``b`` is ``flat[starts[b]:starts[b] + lengths[b]]``. Budget batches reorder
        only the (small) start/length arrays, so no O(N) array is made per epoch."""
        if self.max_atoms is not None:
            offsets = self._offsets
            nb = len(offsets) - 1
            order = (np.random.default_rng((self.seed, self.epoch)).permutation(nb)
                     if self.shuffle else np.arange(nb))
            return self._flat, offsets[:-1][order], np.diff(offsets)[order]
        n = len(self.natoms)
        perm = (np.random.default_rng((self.seed, self.epoch)).permutation(n) if self.shuffle
                else np.arange(n, dtype=np.int64))
        nb = self._num_batches_total()
        starts = np.arange(nb, dtype=np.int64) * self.batch_size
        return perm, starts, np.minimum(starts + self.batch_size, n) - starts

    def __len__(self) -> int:
        if self._dealt():
            return len(self._share()[1]) - 1
        nb = self._num_batches_total()
        if self.pad:
            return math.ceil(nb / self.num_replicas)
        return nb

    def __iter__(self) -> Iterator[list[int]]:
        if self._dealt():
            flat, offsets = self._share()
            for b in range(self.start_iter, len(offsets) - 1):
                yield flat[offsets[b]:offsets[b + 1]].tolist()
            return
        flat, starts, lengths = self.epoch_batches()
        nb = len(starts)
        batch_ids = np.arange(nb)
        if self.pad and nb % self.num_replicas:
            extra = self.num_replicas - nb % self.num_replicas
            batch_ids = np.concatenate([batch_ids, np.resize(np.arange(nb), extra)])
        mine = batch_ids[self.rank::self.num_replicas][self.start_iter:]
        for b in mine.tolist():
            yield flat[starts[b]:starts[b] + lengths[b]].tolist()

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_iter": self.start_iter, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.start_iter = int(state.get("start_iter", 0))

    def __repr__(self) -> str:
        mode = (f"max_atoms={self.max_atoms}" if self.max_atoms is not None
                else f"batch_size={self.batch_size}")
        return (f"BudgetBatchSampler({len(self.natoms)} structures, {mode}, "
                f"shuffle={self.shuffle}, replicas={self.num_replicas}, rank={self.rank}, "
                f"{len(self)} batches per rank)")
