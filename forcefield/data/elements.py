"""Elements in messages, and the elements of a data set that a model does not know."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from ase.data import chemical_symbols

__all__ = ["element_names", "symbol_list", "unknown_elements"]


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else "?"


def element_names(numbers: Iterable[int]) -> str:
    """``"C (Z=6), Fe (Z=26)"``: symbol and atomic number ("?" outside the periodic table)."""
    return ", ".join(f"{_symbol(int(z))} (Z={int(z)})" for z in numbers)


def symbol_list(numbers: Iterable[int]) -> str:
    """``"H, C, N, O"``: the symbols of ``numbers`` in ascending order."""
    return ", ".join(_symbol(z) for z in sorted(int(z) for z in numbers))


def unknown_elements(graphs: Sequence, species: Iterable[int]) -> list[int]:
    """The atomic numbers in ``graphs`` (with ``atomic_numbers``) not in ``species``, sorted."""
    if not len(graphs):
        return []
    numbers = torch.cat([g.atomic_numbers for g in graphs])
    return sorted({int(z) for z in torch.unique(numbers).tolist()} - {int(z) for z in species})
