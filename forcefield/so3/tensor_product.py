"""The Gaunt tensor product and Gaunt powers, by three exact methods.

``GauntTensorProduct(l1, l2, lout)(x1, x2)`` returns the spherical-harmonic expansion (up to
degree lout) of the pointwise product of the functions x1 and x2 on the sphere;
``GauntPowers(l, nu, lout)(x)`` returns x, x^2, ..., x^nu the same way while transforming x
only once.  Methods (all exact to round-off, see notes/gaunt.md):

* ``dense``: contraction with the real Gaunt coefficients (best for small degrees);
* ``grid``: values on a Gauss-Legendre x uniform sphere grid just large enough to be exact
  (on CPU a fused C kernel, ``grid_kernel``, evaluates it separably; elsewhere, or where the
  kernel was not built, three torch matrix products);
* ``fourier``: the paper's route, SH -> 2D Fourier (block-sparse), FFT product, projection;
* ``auto``: the fastest of them for the degrees, dtype and device (see ``select_method``).

The modules have no parameters.  Tables are built once in float64 and cast once per
(dtype, device), so float64 results keep full precision whatever the module was moved to.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from forcefield import ops
from forcefield.so3 import grid_kernel
from forcefield.so3.spherical_harmonics import check_lmax, num_coefficients
from forcefield.so3.tables import (
    fourier_analysis_table,
    fourier_sizes,
    fourier_synthesis_table,
    gaunt_coefficients,
    grid_tables,
    separable_grid_tables,
)

METHODS = ("auto", "dense", "fourier", "grid")


def select_method(
    lmax1: int,
    lmax2: int,
    lmax_out: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    order: int = 2,
) -> str:
    """The fastest exact method for these degrees, by the rule measured with
    ``scripts/bench_tensor_product.py`` (README, Benchmarks).

    On CPU the grid method (the fused kernel, or three matrix products over cache-sized
    chunks of rows where the kernel is not built) beat the dense contraction from L = 1 up,
    and the FFTs of the Fourier route cost more than both at every L <= 8.  Dense is kept
    where a grid makes no sense (scalar inputs).  On GPU the same rule holds pending
    measurement there.
    """
    del dtype, device  # the measured ranking did not depend on them
    if order > 2:
        return "dense" if lmax1 == 0 else "grid"
    if max(lmax1, lmax2) == 0:
        return "dense"
    return "grid"


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def _check_input(name: str, x: Tensor, lmax: int) -> None:
    expected = num_coefficients(lmax)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != expected:
        raise ValueError(
            f"{name} must have last dimension (lmax+1)**2 = {expected} for lmax={lmax}, "
            f"got shape {tuple(x.shape)}"
        )


def _check_pair(x1: Tensor, x2: Tensor) -> None:
    if x1.dtype != x2.dtype:
        raise ValueError(f"x1 and x2 must have the same dtype, got {x1.dtype} and {x2.dtype}")
    if x1.device != x2.device:
        raise ValueError(f"x1 and x2 must be on the same device, got {x1.device} and {x2.device}")
    try:
        torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"the leading dimensions of x1 {tuple(x1.shape[:-1])} and x2 "
            f"{tuple(x2.shape[:-1])} do not broadcast"
        ) from None


class _Tables:
    """Float64 master tables with a cache of copies per (dtype, device)."""

    def __init__(self, **tables: np.ndarray) -> None:
        self._master = {name: torch.as_tensor(value) for name, value in tables.items()}
        self._cache: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}

    def get(self, like: Tensor) -> dict[str, Tensor]:
        key = (like.dtype, like.device)
        if key in self._cache:
            return self._cache[key]
        tables = {
            name: value.to(device=like.device, dtype=like.dtype if value.is_floating_point()
                           else value.dtype)
            for name, value in self._master.items()
        }
        if not ops.is_tracing():  # a traced copy is not a tensor to keep
            self._cache[key] = tables
        return tables


def _batched_blocks(x: Tensor, index: Tensor, table: Tensor) -> Tensor:
    """Block-sparse linear map: gather x[..., index[k]] and multiply by table[k] for each k.

    x [..., D], index [K, W] (value D = zero padding), table [K, W, N] -> [K, ..., N].
    """
    padded = torch.cat([x, x.new_zeros(x.shape[:-1] + (1,))], dim=-1)
    gathered = padded.index_select(-1, index.flatten()).unflatten(-1, index.shape)  # [..., K, W]
    lead = gathered.shape[:-2]
    blocks = gathered.reshape(-1, *index.shape).transpose(0, 1)  # [K, B, W]
    return torch.bmm(blocks, table).reshape(index.shape[0], *lead, table.shape[-1])


class _FourierTransform:
    """SH coefficients <-> values on a torus grid via block-sparse tables and real FFTs."""

    def __init__(self, lmax_in: tuple[int, ...], lmax_product: int, lmax_out: int) -> None:
        widest = max(lmax_in)
        n_theta, n_phi = fourier_sizes(lmax_product, lmax_out)
        self.n_theta, self.n_phi = n_theta, max(n_phi, 2 * widest + 1)
        self.lmax_in = lmax_in
        self.lmax_out = lmax_out
        tables = {}
        for slot, lmax in enumerate(lmax_in):
            index, table = fourier_analysis_table(lmax, self.n_theta)
            tables[f"index{slot}"] = np.where(index < 0, num_coefficients(lmax), index)
            tables[f"analysis{slot}"] = table
        index, table = fourier_synthesis_table(lmax_out, self.n_theta)
        width = index.shape[1]
        flat = np.full(num_coefficients(lmax_out), -1, dtype=np.int64)
        for k in range(index.shape[0]):
            for s in range(width):
                if index[k, s] >= 0:
                    flat[index[k, s]] = k * width + s
        tables["synthesis"] = table
        tables["output_order"] = flat
        self.tables = _Tables(**tables)

    def to_grid(self, x: Tensor, slot: int, t: dict[str, Tensor]) -> Tensor:
        """Values of the function x on the (n_theta, n_phi) torus grid: [..., n_theta, n_phi]."""
        blocks = _batched_blocks(x, t[f"index{slot}"], t[f"analysis{slot}"])  # [K, ..., 2N]
        spectrum = torch.complex(blocks[..., : self.n_theta], blocks[..., self.n_theta :])
        spectrum = spectrum.movedim(0, -1)  # [..., n_theta(u), K(v)]
        pad = self.n_phi // 2 + 1 - spectrum.shape[-1]
        spectrum = nn.functional.pad(spectrum, (0, pad))
        return torch.fft.irfft2(spectrum, s=(self.n_theta, self.n_phi), norm="forward")

    def from_grid(self, values: Tensor, t: dict[str, Tensor]) -> Tensor:
        """Project torus-grid values [..., n_theta, n_phi] onto Y_lm, l <= lmax_out."""
        spectrum = torch.fft.rfft2(values, norm="forward")[..., : self.lmax_out + 1]
        parts = torch.cat([spectrum.real, spectrum.imag], dim=-2)  # [..., 2N, K]
        lead = parts.shape[:-2]
        blocks = parts.reshape(-1, *parts.shape[-2:]).permute(2, 0, 1)  # [K, B, 2N]
        projected = torch.bmm(blocks, t["synthesis"])  # [K, B, W]
        flat = projected.permute(1, 0, 2).reshape(*lead, -1)
        return flat.index_select(-1, t["output_order"])


# Rows of grid values per chunk on CPU: about 1 MiB of float32 grid values, so the
# temporaries of one chunk stay in the L2 cache (measured 1.3-1.7x over one big batch).
_CHUNK_BYTES = 1 << 20


def _in_chunks(fn, inputs: tuple[Tensor, ...], grid_points: int) -> Tensor:
    """Apply ``fn`` to slices of the broadcast leading dimension 0 and concatenate.

    Only on CPU and only when there is more than one chunk; inputs whose dimension 0 is
    1 (broadcast) are passed whole to every chunk, so broadcasting is preserved.
    """
    lead = torch.broadcast_shapes(*(x.shape[:-1] for x in inputs))
    first = inputs[0]
    rows = math.prod(lead)
    budget = max(1, _CHUNK_BYTES // (grid_points * first.element_size()))
    if first.device.type != "cpu" or len(lead) == 0 or rows <= budget or lead[0] == 1:
        return fn(*inputs)
    inputs = tuple(x.reshape((1,) * (len(lead) + 1 - x.dim()) + x.shape) for x in inputs)
    step = max(1, budget // max(1, rows // lead[0]))
    chunks = [
        fn(*(x[start:start + step] if x.shape[0] > 1 else x for x in inputs))
        for start in range(0, lead[0], step)
    ]
    return torch.cat(chunks)


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to the shape of the input it belongs to."""
    extra = grad.dim() - len(shape)
    if extra:
        grad = grad.sum(dim=tuple(range(extra)))
    dims = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    return grad.sum(dim=dims, keepdim=True) if dims else grad


class _GridProductFunction(torch.autograd.Function):
    """Grid Gaunt product whose backward is two more Gaunt products.

    Real Gaunt coefficients are symmetric in their three indices, so
    d out / d x1 contracted with g is Gaunt(g, x2) projected to lmax1 (and likewise for
    x2).  The backward therefore reuses the chunked grid product instead of saving the
    [rows, grid points] intermediates, and it is itself differentiable (double backward
    for force training) because it calls this same function.
    """

    @staticmethod
    def forward(ctx, x1: Tensor, x2: Tensor, product: GauntTensorProduct) -> Tensor:
        ctx.product = product
        ctx.save_for_backward(x1, x2)
        return product._grid_forward(x1, x2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x1, x2 = ctx.saved_tensors
        product = ctx.product
        grad1 = grad2 = None
        if ctx.needs_input_grad[0]:
            grad1 = _sum_to(_resize(product._adjoint(0)(grad, x2), x1.shape[-1]), x1.shape)
        if ctx.needs_input_grad[1]:
            grad2 = _sum_to(_resize(product._adjoint(1)(grad, x1), x2.shape[-1]), x2.shape)
        return grad1, grad2, None


class GauntTensorProduct(nn.Module):
    """Gaunt tensor product: the degree-<=lmax_out expansion of f1(r) * f2(r) on the sphere.

    ``forward(x1 [..., (lmax1+1)^2], x2 [..., (lmax2+1)^2]) -> [..., (lmax_out+1)^2]`` with
    broadcasting of the leading dimensions (e.g. nodes x channels against nodes x 1).
    """

    def __init__(self, lmax1: int, lmax2: int, lmax_out: int, method: str = "auto") -> None:
        super().__init__()
        check_lmax("lmax1", lmax1)
        check_lmax("lmax2", lmax2)
        check_lmax("lmax_out", lmax_out)
        if lmax_out > lmax1 + lmax2:
            raise ValueError(
                f"lmax_out must be at most lmax1 + lmax2 = {lmax1 + lmax2}, got {lmax_out}"
            )
        _check_method(method)
        self.lmax1, self.lmax2, self.lmax_out = lmax1, lmax2, lmax_out
        self.requested_method = method
        self.method = select_method(lmax1, lmax2, lmax_out) if method == "auto" else method
        self._adjoints: list[GauntTensorProduct | None] = [None, None]  # built on first backward
        self._build()

    def _build(self) -> None:
        l1, l2, lo = self.lmax1, self.lmax2, self.lmax_out
        if self.method == "dense":
            g = gaunt_coefficients(l1, l2, lo)
            self._tables = _Tables(
                first=g.reshape(g.shape[0], -1),
                second=np.ascontiguousarray(g.transpose(1, 0, 2)).reshape(g.shape[1], -1),
            )
        elif self.method == "grid":
            y1, y2, projection = grid_tables((l1, l2), lo, l1 + l2 + lo)
            self._tables = _Tables(y1=y1, y2=y2, projection=projection)
            self._kernel_tables = _Tables(**separable_grid_tables(l1, l2, lo))
        else:
            self._fourier = _FourierTransform((l1, l2), l1 + l2, lo)
            self._tables = self._fourier.tables

    def extra_repr(self) -> str:
        return (f"lmax1={self.lmax1}, lmax2={self.lmax2}, lmax_out={self.lmax_out}, "
                f"method={self.method!r}")

    def _grid_forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The grid product itself (no autograd logic): the fused kernel on CPU where it is
        built, else three matrix products in cache-sized chunks."""
        if grid_kernel.supports(x1):
            return grid_kernel.gaunt_grid(x1, x2, self._kernel_tables.get(x1))
        t = self._tables.get(x1)

        def product(a: Tensor, b: Tensor) -> Tensor:
            return ((a @ t["y1"]) * (b @ t["y2"])) @ t["projection"]

        return _in_chunks(product, (x1, x2), t["projection"].shape[0])

    def _adjoint(self, slot: int) -> GauntTensorProduct:
        """The product giving the gradient for input ``slot`` (degrees above
        lmax_out + the other degree get no gradient and are padded with zeros)."""
        if self._adjoints[slot] is None:
            own, other = (self.lmax1, self.lmax2) if slot == 0 else (self.lmax2, self.lmax1)
            self._adjoints[slot] = GauntTensorProduct(
                self.lmax_out, other, min(own, self.lmax_out + other), method="grid")
        return self._adjoints[slot]

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        _check_input("x1", x1, self.lmax1)
        _check_input("x2", x2, self.lmax2)
        _check_pair(x1, x2)
        t = self._tables.get(x1)
        if self.method == "dense":
            d_out = num_coefficients(self.lmax_out)
            if x1.numel() // x1.shape[-1] >= x2.numel() // x2.shape[-1]:
                partial = (x1 @ t["first"]).unflatten(-1, (x2.shape[-1], d_out))
                return (x2.unsqueeze(-2) @ partial).squeeze(-2)
            partial = (x2 @ t["second"]).unflatten(-1, (x1.shape[-1], d_out))
            return (x1.unsqueeze(-2) @ partial).squeeze(-2)
        if self.method == "grid":
            return _GridProductFunction.apply(x1, x2, self)
        grid1 = self._fourier.to_grid(x1, 0, t)
        grid2 = self._fourier.to_grid(x2, 1, t)
        return self._fourier.from_grid(grid1 * grid2, t)


class GauntPowers(nn.Module):
    """Gaunt powers x, x^2, ..., x^correlation, each projected to degree lmax_out.

    ``forward(x [..., (lmax_in+1)^2]) -> [..., correlation, (lmax_out+1)^2]``; index k holds
    x^(k+1).  Grid and Fourier methods transform x once at the final resolution, take the
    powers pointwise and project each once; the dense method chains exact products, keeping
    only the intermediate degrees that can still reach lmax_out.
    """

    def __init__(self, lmax_in: int, correlation: int, lmax_out: int, method: str = "auto") -> None:
        super().__init__()
        check_lmax("lmax_in", lmax_in)
        check_lmax("lmax_out", lmax_out)
        if isinstance(correlation, bool) or not isinstance(correlation, int) or correlation < 1:
            raise ValueError(f"correlation must be a positive integer, got {correlation!r}")
        if lmax_out > correlation * lmax_in:
            raise ValueError(
                f"lmax_out must be at most correlation * lmax_in = {correlation * lmax_in}, "
                f"got {lmax_out}"
            )
        _check_method(method)
        self.lmax_in, self.correlation, self.lmax_out = lmax_in, correlation, lmax_out
        self.requested_method = method
        self.method = (
            select_method(lmax_in, lmax_in, lmax_out, order=correlation)
            if method == "auto" else method
        )
        if self.method == "dense":
            self._build_dense()
        elif self.method == "grid":
            y, projection = grid_tables((lmax_in,), lmax_out, correlation * lmax_in + lmax_out)
            self._tables = _Tables(y=y, projection=projection)
        else:
            self._fourier = _FourierTransform((lmax_in,), correlation * lmax_in, lmax_out)
            self._tables = self._fourier.tables

    def _build_dense(self) -> None:
        l, nu, lo = self.lmax_in, self.correlation, self.lmax_out
        # x^k only matters up to degree lo + (nu - k) * l: higher parts cannot reach lo.
        self._degrees = [min(k * l, lo + (nu - k) * l) for k in range(1, nu + 1)]
        self._steps = nn.ModuleList(
            GauntTensorProduct(self._degrees[k - 1], l, self._degrees[k], method="dense")
            for k in range(1, nu)
        )
        self._tables = None

    def extra_repr(self) -> str:
        return (f"lmax_in={self.lmax_in}, correlation={self.correlation}, "
                f"lmax_out={self.lmax_out}, method={self.method!r}")

    def forward(self, x: Tensor) -> Tensor:
        _check_input("x", x, self.lmax_in)
        d_out = num_coefficients(self.lmax_out)
        if self.method == "dense":
            powers = [x[..., : num_coefficients(self._degrees[0])]]
            for step in self._steps:
                powers.append(step(powers[-1], x))
            return torch.stack([_resize(p, d_out) for p in powers], dim=-2)
        t = self._tables.get(x)
        if self.method == "grid":
            def powers(a: Tensor) -> Tensor:
                return _powers(a @ t["y"], self.correlation, -2) @ t["projection"]

            return _in_chunks(powers, (x,), self.correlation * t["projection"].shape[0])
        values = self._fourier.to_grid(x, 0, t)
        return self._fourier.from_grid(_powers(values, self.correlation, -3), t)


def _powers(values: Tensor, order: int, dim: int) -> Tensor:
    """values, values^2, ..., values^order stacked along ``dim``."""
    powers = [values]
    for _ in range(order - 1):
        powers.append(powers[-1] * values)
    return torch.stack(powers, dim=dim)


def _resize(x: Tensor, size: int) -> Tensor:
    """Truncate or zero-pad the last dimension to ``size`` (orthogonal projection / embedding)."""
    if x.shape[-1] >= size:
        return x[..., :size]
    return nn.functional.pad(x, (0, size - x.shape[-1]))


