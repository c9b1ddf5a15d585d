"""Species handling: atomic number -> element index, and the learnable species embedding."""

from __future__ import annotations

import torch
from ase.data import chemical_symbols
from torch import nn

from forcefield import ops

__all__ = ["SpeciesIndex", "SpeciesEmbedding"]


class SpeciesIndex(nn.Module):
    """Maps atomic numbers to 0..len(species)-1 and raises a clear error on unknown elements."""

    def __init__(self, species: list[int]):
        super().__init__()
        self.species = [int(z) for z in species]
        table = torch.full((119,), -1, dtype=torch.long)
        for k, z in enumerate(self.species):
            table[z] = k
        self.register_buffer("table", table, persistent=False)

    def forward(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        idx = self.table[atomic_numbers]
        if ops.is_tracing():  # a traced model's loader checks the elements before the call
            return idx
        if bool((idx < 0).any()):
            bad = sorted({int(z) for z in atomic_numbers[idx < 0].tolist()})
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in bad)
            known = ", ".join(chemical_symbols[z] for z in self.species)
            raise ValueError(
                f"element {names} is not in this model's species [{known}]; "
                "retrain with a dataset (or model.species) that includes it"
            )
        return idx


class SpeciesEmbedding(nn.Module):
    """One learnable vector of ``channels`` scalars per element (a linear map of the one-hot)."""

    def __init__(self, num_elements: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_elements, channels))

    def forward(self, species_idx: torch.Tensor) -> torch.Tensor:
        return self.weight[species_idx]


