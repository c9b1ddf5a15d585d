"""The ``forcefield::`` torch operators: fused CPU kernels as dispatcher operators.

The library ``forcefield/ops/_C*.so`` (built at install from ``csrc/``, see setup.py) defines
the schemas and CPU kernels in C++ (``TORCH_LIBRARY``), so the operators exist without
Python too: an exported model (``.pt2``) calls them from a C++ program that loaded the
library.  This module loads it and registers, for tracing and training in Python:

* fake (meta) kernels, so ``torch.compile`` and ``torch.export`` see output shapes;
* autograd formulas, made of the other operators: the convolution Z -> its sender partials
  -> the double kernels, and the powers forward -> backward -> double backward, which is
  what training on forces needs (energy, its gradient, the gradient of a loss of that).
  The double kernels themselves are not differentiable (a third derivative raises).

``available()`` is False where the library was not built (no compiler, or torch missing
at build time), failed to load, or ``FORCEFIELD_NO_CPU_KERNEL=1`` is set; the models then
take their torch route, and a warning says so once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["OPS_VERSION", "available", "is_tracing", "library_path", "tracing", "vector_isa"]

#: the operator set's version, as ``torch.ops.forcefield.version()`` returns it
OPS_VERSION = 1


@cache
def library_path() -> Path | None:
    """The built operator library (``forcefield/ops/_C*.so``), or None."""
    try:
        spec = importlib.util.find_spec("forcefield.ops._C")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    return Path(spec.origin)


@cache
def _load() -> bool:
    path = library_path()
    if path is None:
        warnings.warn("forcefield: the operator library (forcefield/ops/_C) was not built, so "
                      "the models take the slower torch route; reinstall with a C++ compiler: "
                      "pip install --no-build-isolation -e .", stacklevel=3)
        return False
    try:
        torch.ops.load_library(str(path))
    except OSError as error:
        warnings.warn(f"forcefield: the operator library {path} failed to load ({error}); the "
                      "models take the torch route", stacklevel=3)
        return False
    version = torch.ops.forcefield.version()
    if version != OPS_VERSION:
        warnings.warn(f"forcefield: the operator library {path} has operator set {version}, "
                      f"this forcefield needs {OPS_VERSION}; rebuild it (pip install "
                      "--no-build-isolation -e .)", stacklevel=3)
        return False
    _register()
    return True


def available() -> bool:
    """True when the ``forcefield::`` operators can be used (CPU float32/float64)."""
    if os.environ.get("FORCEFIELD_NO_CPU_KERNEL"):
        return False
    return _load()


def vector_isa() -> str:
    """The vector instruction set of the grid Gaunt product kernel ("avx512", "avx2",
    "base"; chosen at run time from the CPU, capped by FORCEFIELD_ISA=avx2|base), or "none"
    without the operator library.  The convolution and powers kernels use AVX2 at most."""
    return str(torch.ops.forcefield.vector_isa()) if available() else "none"


_tracing = False


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """Inside the block the models are being traced into a graph (``forcefield.traced``):
    code that depends on tensor values (caches keyed by identity, data-dependent shortcuts,
    Python-side checks of values) takes its plain, traceable form."""
    global _tracing
    previous, _tracing = _tracing, True
    try:
        yield
    finally:
        _tracing = previous


def is_tracing() -> bool:
    """True inside ``tracing()``, ``torch.compile`` or ``torch.export``."""
    return _tracing or torch.compiler.is_compiling()


def _empty(x: Tensor) -> Tensor:
    return x.new_empty(0)


def _register() -> None:
    """Fake kernels and autograd formulas of every operator (once, after loading)."""
    lib = torch.library
    ops = torch.ops.forcefield

    # -- fake kernels: output shapes from input shapes --------------------------------------
    @lib.register_fake("forcefield::conv_receivers")
    def _(hg, wn, r, sh, ysh, *index):
        return hg.new_empty(hg.shape[0], hg.shape[1], hg.shape[3])

    def sender_shapes(hg, wn, r, sh, ysh, want):
        e = sh.shape[0]
        return (hg.new_empty(hg.shape) if want[0] else _empty(hg),
                hg.new_empty(e, hg.shape[1], hg.shape[2])
                if want[1] and wn is not None else _empty(hg),
                hg.new_empty(r.shape) if want[2] else _empty(hg),
                hg.new_empty(sh.shape) if want[3] else _empty(hg))

    @lib.register_fake("forcefield::conv_senders")
    def _(hg, wn, r, sh, ysh, g, s, rc, rp, rq, sp, sq, want):
        return sender_shapes(hg, wn, r, sh, ysh, want)

    @lib.register_fake("forcefield::conv_double_senders")
    def _(hg, wn, r, sh, ysh, g, u0, u1, u2, u3, s, rc, rp, rq, sp, sq, want):
        return sender_shapes(hg, wn, r, sh, ysh, want)

    @lib.register_fake("forcefield::conv_double_receivers")
    def _(hg, wn, r, sh, ysh, u0, u1, u2, u3, *index):
        return hg.new_empty(hg.shape[0], hg.shape[1], hg.shape[3])

    @lib.register_fake("forcefield::powers_forward")
    def _(a, w, y, proj, nu0):
        return a.new_empty(a.shape[0], w.shape[1], a.shape[1], proj.shape[0])

    @lib.register_fake("forcefield::powers_backward")
    def _(a, w, y, proj, nu0, g, want):
        return (a.new_empty(a.shape) if want[0] else _empty(a),
                w.new_empty(w.shape) if want[1] else _empty(a))

    @lib.register_fake("forcefield::powers_double")
    def _(a, w, y, proj, nu0, g, u, vw, want):
        return (a.new_empty(a.shape) if want[0] else _empty(a),
                w.new_empty(w.shape) if want[1] else _empty(a),
                g.new_empty(g.shape) if want[2] else _empty(a))

    @lib.register_fake("forcefield::gaunt_grid")
    def _(x1, x2, dims, *tables):
        k_out = tables[2].shape[-1] ** 2  # legendre_out [n_beta, 2 Lo + 1, Lo + 1]
        return x1.new_empty(x1.shape[0], x1.shape[1], k_out)

    # -- autograd ---------------------------------------------------------------------------
    def save_inputs(ctx, inputs, output):
        ctx.save_for_backward(*(x if isinstance(x, Tensor) else None for x in inputs))
        ctx.constants = tuple(None if isinstance(x, Tensor) else x for x in inputs)

    def receivers_backward(ctx, grad_z):
        hg, wn, r, sh, ysh, *index = ctx.saved_tensors
        needs = ctx.needs_input_grad
        want = [needs[0], needs[1] and wn is not None, needs[2], needs[3]]
        if not any(want):
            return (None,) * 11
        partials = ops.conv_senders(hg, wn, r, sh, ysh, grad_z.contiguous(), *index, want)
        return (*(p if w else None for p, w in zip(partials, want, strict=True)),
                None, *([None] * 6))

    def senders_backward(ctx, *grads):
        hg, wn, r, sh, ysh, g, *rest = ctx.saved_tensors
        index = rest[:6]
        asked = ctx.constants[-1]
        arguments = (hg, wn, r, sh)
        u = [None if a is None else (grad if asked[k] and grad is not None
                                     else torch.zeros_like(a))
             for k, (a, grad) in enumerate(zip(arguments, grads, strict=True))]
        needs = ctx.needs_input_grad
        want = [needs[0], needs[1] and wn is not None, needs[2], needs[3]]
        result: list[Tensor | None] = [None] * 13
        if any(want):
            partials = ops.conv_double_senders(hg, wn, r, sh, ysh, g, *u, *index, want)
            for k in range(4):
                if want[k]:
                    result[k] = partials[k]
        if needs[5]:
            result[5] = ops.conv_double_receivers(hg, wn, r, sh, ysh, *u, *index)
        return tuple(result)

    def powers_forward_backward(ctx, grad):
        a, w, y, proj, _ = ctx.saved_tensors
        nu0 = ctx.constants[4]
        want = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
        if not any(want):
            return (None,) * 5
        da, dw = ops.powers_backward(a, w, y, proj, nu0, grad.contiguous(), want)
        return (da if want[0] else None, dw if want[1] else None, None, None, None)

    def powers_backward_backward(ctx, grad_da, grad_dw):
        a, w, y, proj, _, g, _ = ctx.saved_tensors
        nu0, asked = ctx.constants[4], ctx.constants[6]
        needs = ctx.needs_input_grad
        want = [needs[0], needs[1], needs[5]]
        if not any(want):
            return (None,) * 7
        u = grad_da if asked[0] else None
        vw = grad_dw if asked[1] else None
        ga, gw, gg = ops.powers_double(a, w, y, proj, nu0, g, u, vw, want)
        return (ga if want[0] else None, gw if want[1] else None, None, None, None,
                gg if want[2] else None, None)

    def not_differentiable(name):
        def backward(ctx, *grads):
            raise RuntimeError(f"forcefield::{name} is not differentiable: the fused kernels "
                               "give derivatives up to the second order (energy, forces, and "
                               "the gradient of a loss on forces)")
        return backward

    lib.register_autograd("forcefield::conv_receivers", receivers_backward,
                          setup_context=save_inputs)
    lib.register_autograd("forcefield::conv_senders", senders_backward,
                          setup_context=save_inputs)
    lib.register_autograd("forcefield::powers_forward", powers_forward_backward,
                          setup_context=save_inputs)
    lib.register_autograd("forcefield::powers_backward", powers_backward_backward,
                          setup_context=save_inputs)
    for name in ("conv_double_senders", "conv_double_receivers", "powers_double"):
        lib.register_autograd(f"forcefield::{name}", not_differentiable(name),
                              setup_context=save_inputs)
