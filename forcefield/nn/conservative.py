"""Conservative forces and stress by autograd, shared by every energy model.

A model calls :func:`strained_geometry` before it builds its edge vectors (positions that
require grad, and a symmetric strain applied to positions and cells), then
:func:`energy_derivatives` on its per-structure energies: F = -dE/dx, virial = -dE/d(strain),
stress = -virial / volume (zero for non-periodic structures), all in float64.
"""

from __future__ import annotations

import torch


def strained_geometry(pos: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor,
                      num_graphs: int, pos_grad: bool, stress: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(positions, strained positions, strained cells [B, 3, 3], autograd inputs).

    ``pos_grad``: the returned positions require grad and are the first input.
    ``stress``: a zero displacement [B, 3, 3] (the last input) strains positions and cells.
    """
    inputs: list[torch.Tensor] = []
    if pos_grad:
        pos = pos.detach().requires_grad_(True)
        inputs.append(pos)
    pos_s = pos
    if stress:
        displacement = torch.zeros(num_graphs, 3, 3, dtype=pos.dtype, device=pos.device,
                                   requires_grad=True)
        inputs.append(displacement)
        strain = 0.5 * (displacement + displacement.transpose(1, 2))
        pos_s = pos + torch.einsum("ni,nij->nj", pos, strain[batch])
        cell = cell + torch.matmul(cell, strain)
    return pos, pos_s, cell, inputs


def energy_derivatives(energy: torch.Tensor, inputs: list[torch.Tensor], cell: torch.Tensor,
                       forces: bool, stress: bool, training: bool) -> dict[str, torch.Tensor]:
    """``forces`` (from the first input), ``virial`` and ``stress`` (from the last) as asked.

    ``cell`` is the unstrained cell of each structure (for the volume); ``training`` keeps
    the graph so that a loss on forces can be differentiated again.
    """
    out: dict[str, torch.Tensor] = {}
    if not inputs:
        return out
    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]
    if forces:
        out["forces"] = -grads[0].to(torch.float64)
    if stress:
        virial = -grads[-1].to(torch.float64)
        out["virial"] = virial
        out["stress"] = stress_from_virial(virial, cell)
    return out


def stress_from_virial(virial: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """-virial / volume per structure ([B, 3, 3] float64), zero where a cell has no volume
    (a molecule without a cell)."""
    volume = torch.linalg.det(cell.to(torch.float64).reshape(-1, 3, 3)).abs()
    safe = torch.where(volume > 0, volume, torch.ones_like(volume))
    return torch.where(volume[:, None, None] > 0, -virial / safe[:, None, None],
                       torch.zeros_like(virial))


def smootherstep(x: torch.Tensor) -> torch.Tensor:
    """C2 step from 0 to 1 on [0, 1] (clamped outside): the "has neighbours" weight of the
    energy shift, from the envelope-weighted neighbour count."""
    x = x.clamp(0.0, 1.0)
    return x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)
