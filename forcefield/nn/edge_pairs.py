"""The two directions of each neighbour pair, so that per-pair quantities are computed once.

A full neighbour list holds every pair twice: ``i <- j`` with cell shift ``S`` and
``j <- i`` with ``-S``. Their edge vectors are exact negatives of each other (also as
functions of the positions and the strained cell), so their lengths, and everything a
model computes from the length alone (radial basis, radial MLP), are the same. GauntMACE
evaluates the radial MLP once per pair and hands each edge its pair's row: half the work
of the largest per-edge dense layers. Forces and stress stay exact: the shared row is a
function of one direction's vector, whose length equals the other's as a function of the
positions and the cell.

Edges without a reverse (a capped list keeps ``i <- j`` but may drop ``j <- i``) are pairs
of one edge.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from forcefield import ops

__all__ = ["EdgePairs", "edge_pairs"]


class EdgePairs(NamedTuple):
    """``first`` [U]: one edge of each pair (the first in edge order); ``slot`` [E]: the
    pair of each edge, as a row of ``first``."""

    first: Tensor
    slot: Tensor


def _canonical(receiver: Tensor, sender: Tensor, shifts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The same (a, b, shift) for an edge and its reverse: the direction with the smaller
    receiver, or for an atom and its own image the shift whose first non-zero component is
    positive."""
    first_nonzero = shifts.gather(1, (shifts != 0).to(torch.int8).argmax(1, keepdim=True))
    flip = (receiver > sender) | ((receiver == sender) & (first_nonzero[:, 0] < 0))
    a = torch.where(flip, sender, receiver)
    b = torch.where(flip, receiver, sender)
    return a, b, torch.where(flip[:, None], -shifts, shifts)


def edge_pairs(sender: Tensor, receiver: Tensor, shifts: Tensor, num_nodes: int
               ) -> EdgePairs | None:
    """Group the edges into neighbour pairs; None when no edge has its reverse in the list
    (nothing to share), or while the model is traced (the pairing has a data-dependent size;
    a traced model runs the radial MLP once per edge, with the same numbers).  ``shifts``
    [E, 3] are the integer cell shifts (any dtype)."""
    num_edges = sender.shape[0]
    if num_edges == 0 or ops.is_tracing():
        return None
    with torch.no_grad():
        shifts = torch.round(shifts).to(torch.int64)
        a, b, s = _canonical(receiver.to(torch.int64), sender.to(torch.int64), shifts)
        low = s.amin()
        span = int(s.amax() - low) + 1
        if num_nodes * num_nodes * span**3 < 2**62:  # one int64 key per edge
            key = (a * num_nodes + b) * span**3
            s = s - low
            key = key + (s[:, 0] * span + s[:, 1]) * span + s[:, 2]
            _, slot = torch.unique(key, return_inverse=True)
        else:
            _, slot = torch.unique(torch.stack([a, b, *s.unbind(1)], 1), dim=0,
                                   return_inverse=True)
        num_pairs = int(slot.max()) + 1
        if num_pairs == num_edges:
            return None
        edges = torch.arange(num_edges, device=sender.device)
        first = torch.full((num_pairs,), num_edges, dtype=torch.int64, device=sender.device)
        first.scatter_reduce_(0, slot, edges, reduce="amin")
    return EdgePairs(first, slot)
