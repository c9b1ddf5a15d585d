"""The rule for direct-force models in MD, relaxations and the ASE calculator.

A model with ``model.forces=direct`` predicts forces with a head of their own: they are not
-dE/dx, so NVE dynamics does not conserve the energy and optimisers that use the energy
(BFGS, LBFGS line searches) can stall.  :func:`check_direct_forces` refuses such a model in
one sentence that names the conservative alternatives (``model.forces=gradient``, or the
fine-tuning route ``forcefield train init_from=MODEL model.forces=gradient``), unless the
user allows it, and then warns once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from forcefield.errors import ForceFieldError

FINETUNE_HINT = ("train with model.forces=gradient, or fine-tune this model into a "
                 "conservative one with 'forcefield train init_from=MODEL "
                 "model.forces=gradient' (docs/equiformer_v2.md)")


class DirectForcesError(ForceFieldError):
    """A direct-force model where conservative forces are needed, not explicitly allowed."""


class DirectForcesWarning(UserWarning):
    """A direct-force model is used for dynamics or relaxation because the user allowed it."""


def is_direct(model: torch.nn.Module) -> bool:
    """Whether ``model`` predicts its forces with a head (``config["forces"] == "direct"``)."""
    config = getattr(model, "config", None) or {}
    return config.get("forces") == "direct"


def check_direct_forces(models: Iterable[torch.nn.Module], allow: bool) -> bool:
    """True when a model of ``models`` has direct forces (and ``allow`` is set: one warning);
    a :class:`DirectForcesError` when one has and ``allow`` is not set."""
    if not any(is_direct(m) for m in models):
        return False
    if not allow:
        raise DirectForcesError(
            "the model has direct forces (model.forces=direct), which are not -dE/dx, so MD "
            f"does not conserve energy and relaxations can stall; {FINETUNE_HINT}, or set "
            "allow_direct_forces=true to use it anyway (relaxations then run FIRE only)")
    warnings.warn("using a direct-force model (allow_direct_forces=true): its forces are not "
                  "-dE/dx, so expect NVE energy drift; relaxations run FIRE only",
                  DirectForcesWarning, stacklevel=3)
    return True


__all__ = ["DirectForcesError", "DirectForcesWarning", "check_direct_forces", "is_direct"]
