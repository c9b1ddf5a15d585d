"""The forcefield:: operators as torch sees them: ``torch.library.opcheck`` (schema, fake
kernel, autograd registration, aot_dispatch) for every operator, and the operator set's
version."""

from __future__ import annotations

import pytest
import torch

from forcefield import ops
from forcefield.so3 import fused_conv, fused_powers
from forcefield.so3.tables import separable_grid_tables

pytestmark = pytest.mark.skipif(not ops.available(), reason="operator library not built")
F64 = torch.float64


def conv_arguments(first_layer: bool):
    """Arguments of the convolution operators on a small random graph (node 3 isolated)."""
    gen = torch.Generator().manual_seed(0)
    ysh = (fused_conv.first_layer_tables(2) if first_layer
           else fused_conv.conv_grid_tables(2, 2, 2))["ysh"]
    n2, pp = int(round(ysh.shape[0] ** 0.5)), ysh.shape[1]
    n1 = 1 if first_layer else 3
    sender = torch.tensor([0, 1, 2, 4, 0, 2, 4, 1])
    receiver = torch.tensor([1, 0, 4, 2, 2, 1, 0, 4])
    index = fused_conv.EdgeIndex.build(sender, receiver, 5).tensors()

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    hg = randn(5, 2, n1, pp)
    wn = None if first_layer else randn(8, 2, n1)
    r, sh = randn(8, 2, n2 + 1), randn(8, (n2 + 1) ** 2)
    g = randn(5, 2, pp)
    u = (randn(5, 2, n1, pp), None if first_layer else randn(8, 2, n1), randn(*r.shape),
         randn(*sh.shape))
    return hg, wn, r, sh, ysh, g, u, index


def requiring_grad(*tensors):
    return [t.clone().requires_grad_() if t is not None else None for t in tensors]


@pytest.mark.parametrize("first_layer", [False, True])
def test_opcheck_convolution(first_layer: bool) -> None:
    hg, wn, r, sh, ysh, g, u, index = conv_arguments(first_layer)
    live = requiring_grad(hg, wn, r, sh)
    conv = torch.ops.forcefield
    torch.library.opcheck(conv.conv_receivers, (*live, ysh, *index))
    torch.library.opcheck(conv.conv_senders, (*live, ysh, g.clone().requires_grad_(), *index,
                                              [True, not first_layer, True, True]))
    torch.library.opcheck(conv.conv_senders, (hg, wn, r, sh, ysh, g, *index,
                                              [False, False, True, False]))
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(conv.conv_double_senders,
                          (hg, wn, r, sh, ysh, g, *u, *index, [True, True, True, True]),
                          test_utils=tests)
    torch.library.opcheck(conv.conv_double_receivers, (hg, wn, r, sh, ysh, *u, *index),
                          test_utils=tests)


def test_opcheck_powers() -> None:
    gen = torch.Generator().manual_seed(1)
    tables = fused_powers.powers_tables(2, 3, 2)
    a = torch.randn(4, 3, 9, generator=gen, dtype=F64)
    w = torch.randn(4, 2, 3, 3, generator=gen, dtype=F64)
    y, proj = tables["y"], tables["proj"]
    g = torch.randn(4, 2, 3, 9, generator=gen, dtype=F64)
    live = requiring_grad(a, w)
    torch.library.opcheck(torch.ops.forcefield.powers_forward, (*live, y, proj, 2))
    torch.library.opcheck(torch.ops.forcefield.powers_backward,
                          (*live, y, proj, 2, g.clone().requires_grad_(), [True, True]))
    torch.library.opcheck(torch.ops.forcefield.powers_double,
                          (a, w, y, proj, 2, g, torch.randn_like(a), None, [True, True, True]),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_opcheck_grid_product() -> None:
    tables = {k: torch.as_tensor(v) for k, v in separable_grid_tables(2, 2, 3).items()}
    gen = torch.Generator().manual_seed(2)
    x1 = torch.randn(3, 4, 9, generator=gen, dtype=F64)
    x2 = torch.randn(3, 1, 9, generator=gen, dtype=F64).expand(3, 4, 9)  # stride 0
    names = ("legendre1", "legendre2", "legendre_out", "azimuth_cos", "azimuth_sin",
             "output_cos", "output_sin")
    torch.library.opcheck(torch.ops.forcefield.gaunt_grid,
                          (x1, x2, tables["dims"], *(tables[n] for n in names)),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_operator_set_version() -> None:
    assert torch.ops.forcefield.version() == ops.OPS_VERSION


def test_bad_arguments_are_one_error() -> None:
    hg, wn, r, sh, ysh, g, u, index = conv_arguments(False)
    with pytest.raises(RuntimeError, match="grid points must be padded"):
        torch.ops.forcefield.conv_receivers(hg[..., :-1], wn, r, sh, ysh[:, :-1], *index)
    with pytest.raises(RuntimeError, match="expected Double"):
        torch.ops.forcefield.conv_receivers(hg, wn.float(), r, sh, ysh, *index)
