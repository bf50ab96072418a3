"""Activations that keep what their backward needs in compact form.

``ReLU``/``LeakyReLU`` keep a 1-bit packed sign mask (1/32 of a float32 activation);
``MaxPool1d/2d/3d`` keep each output's offset inside its window as int8 (1/8 of torch's
int64 indices, and no copy of the input). Gradients are exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _ntuple

_MAGIC_PACK = 0x0102040810204080  # gathers the low bit of 8 bytes into the top byte
_CHUNK = 1 << 20  # elements per chunk of the ReLU backward (a multiple of 8)


def _on_host(t: Tensor) -> bool:
    """Whether numpy's bit (un)packing may serve ``t`` (CPU, eager, a plain tensor)."""
    return (t.device.type == "cpu" and type(t) is Tensor
            and not torch.compiler.is_compiling())


def pack_bits(mask: Tensor) -> Tensor:
    """Pack booleans into ``ceil(numel / 8)`` uint8: bit ``i`` of byte ``k`` is element ``8k+i``.

    On CPU numpy's ``packbits`` does it (about 10x faster than the tensor formula used on
    other devices and under ``torch.compile``; same bytes).

    Example:
        >>> pack_bits(torch.tensor([True, False, True])).tolist()
        [5]
    """
    flat = mask.reshape(-1)
    if _on_host(flat):
        return torch.from_numpy(np.packbits(flat.contiguous().numpy(), bitorder="little"))
    pad = (-flat.numel()) % 64
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.uint8).view(torch.int64)  # 8 booleans (0/1 bytes) per word
    return ((words * _MAGIC_PACK) >> 56).to(torch.uint8)[: (mask.numel() + 7) // 8]


def _unpack_bytes(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Unpacked bits as uint8 0/1 of ``shape`` (numpy's ``unpackbits`` on CPU)."""
    n = math.prod(shape)
    if _on_host(packed):
        bits = np.unpackbits(packed.contiguous().numpy(), count=n, bitorder="little")
        return torch.from_numpy(bits).reshape(shape)
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits_t = (packed.unsqueeze(-1) >> shifts) & 1
    return bits_t.reshape(-1)[:n].reshape(shape)


def unpack_bits(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_bits`: a boolean tensor of ``shape``."""
    return _unpack_bytes(packed, shape).view(torch.bool)


def plain_path(x: Tensor) -> bool:
    """Whether the plain torch op serves ``x`` (same values and gradients, not compact).

    That is without gradient, on the meta device, under ``torch.func`` transforms and
    under ``torch.jit.trace``.
    """
    return (not (torch.is_grad_enabled() and x.requires_grad) or x.is_meta
            or torch.jit.is_tracing() or bool(torch._C._are_functorch_transforms_active()))


class PackedReLUFn(torch.autograd.Function):
    """(Leaky) ReLU that saves a 1-bit mask of ``x > 0`` (slopes >= 0).

    Backward is differentiable in the output gradient (double backward works; the mask is
    piecewise constant in ``x``).
    """

    @staticmethod
    def forward(ctx, x, negative_slope, inplace):  # noqa: D102
        mask = x > 0
        ctx.shape, ctx.negative_slope = x.shape, negative_slope
        ctx.save_for_backward(pack_bits(mask))
        if inplace:
            ctx.mark_dirty(x)
            return x.relu_() if negative_slope == 0 else F.leaky_relu_(x, negative_slope)
        return x.relu() if negative_slope == 0 else F.leaky_relu(x, negative_slope)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        (packed,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: a form differentiable in g
            active = _unpack_bytes(packed, ctx.shape).view(torch.bool)
            return torch.where(active, g, g * ctx.negative_slope), None, None
        # torch's own (leaky) ReLU backward kernels accept the 0/1 bytes as the "input":
        # the same semantics as plain autograd, and ~6x faster than torch.where on CPU. They
        # cast those bytes to a float copy first, so go in chunks of _CHUNK elements, writing
        # into the result: the only activation-sized temporary is the result itself.
        out = torch.empty(ctx.shape, dtype=g.dtype, device=g.device)
        gf, of, n = g.reshape(-1), out.view(-1), out.numel()
        for s in range(0, n, _CHUNK):
            e = min(n, s + _CHUNK)
            active = _unpack_bytes(packed[s // 8:(e + 7) // 8], (e - s,))
            if ctx.negative_slope == 0:
                torch.ops.aten.threshold_backward.grad_input(gf[s:e], active, 0,
                                                             grad_input=of[s:e])
            else:
                torch.ops.aten.leaky_relu_backward.grad_input(
                    gf[s:e], active, ctx.negative_slope, False, grad_input=of[s:e])
        return out, None, None


def _offset_dtype(kernel_numel: int) -> torch.dtype:
    if kernel_numel <= 127:
        return torch.int8
    return torch.int16 if kernel_numel <= 32767 else torch.int32


def _window_starts(out_sizes, stride, padding, device) -> list[Tensor]:
    """Per spatial dim, the first input coordinate of each output's window (broadcastable)."""
    dim = len(out_sizes)
    starts = []
    for d, (o, s, p) in enumerate(zip(out_sizes, stride, padding)):
        view = [1] * dim
        view[d] = o
        starts.append((torch.arange(o, device=device) * s - p).view(view))
    return starts


def _batch_chunk(t: Tensor) -> int:
    """Examples per chunk so that a chunk of ``t`` has about ``_CHUNK`` elements."""
    per = max(1, t[0].numel()) if t.shape[0] else 1
    return max(1, _CHUNK // per)


def _kernel_positions(kernel: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Window offsets in row-major order (the order torch scans a window in)."""
    positions: list[tuple[int, ...]] = [()]
    for k in kernel:
        positions = [p + (a,) for p in positions for a in range(k)]
    return positions


def _flat_indices(offset: Tensor, kernel, stride, padding, dilation, in_sizes) -> Tensor:
    """Flat input index of each window's chosen element: ``base[output] + delta[offset]``."""
    dim = len(kernel)
    strides_in = [math.prod(in_sizes[d + 1:]) for d in range(dim)]
    out_sizes = offset.shape[-dim:]
    base = sum(
        start * st
        for start, st in zip(_window_starts(out_sizes, stride, padding, offset.device), strides_in)
    )
    delta = torch.tensor(
        [sum(a * dl * st for a, dl, st in zip(pos, dilation, strides_in))
         for pos in _kernel_positions(kernel)],
        device=offset.device,
    )
    return base + delta[offset.long()]


_POOL_BACKWARD = {
    2: torch.ops.aten.max_pool2d_with_indices_backward,
    3: torch.ops.aten.max_pool3d_with_indices_backward,
}


class CompactMaxPoolFn(torch.autograd.Function):
    """Max pooling that saves the argmax offset within each window (int8 for kernels <= 127).

    Forward is torch's own pooling (with its indices, a chunk of examples at a time); the
    int64 indices are turned into window offsets and dropped. Backward rebuilds a chunk's
    indices from the offsets and calls torch's own max-pool backward kernel on them: the
    same values, NaN handling and tie-breaking as ``nn.MaxPool``.
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):  # noqa: D102
        dim = len(kernel)
        in_sizes = x.shape[-dim:]
        ctx.geometry = (kernel, stride, padding, dilation, ceil_mode, tuple(x.shape))
        offset_dtype = _offset_dtype(math.prod(kernel))
        # index arithmetic in int32 where the flat input plane fits (it nearly always does)
        idx_dtype = torch.int32 if math.prod(in_sizes) < 2**31 else torch.int64
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dim]
        # in chunks of examples: the int64 indices and their arithmetic are several times
        # the output's size, so only a chunk of them exists at a time
        out = offsets = None
        step = _batch_chunk(x)
        for i in range(0, x.shape[0], step):
            o, idx = pool(x[i:i + step], kernel, stride, padding, dilation, ceil_mode,
                          return_indices=True)
            if out is None:
                out = x.new_empty((x.shape[0], *o.shape[1:]))
                offsets = torch.empty(out.shape, dtype=offset_dtype, device=x.device)
            rest = idx.to(idx_dtype)
            offset = None
            for d, start in enumerate(_window_starts(o.shape[-dim:], stride, padding,
                                                     x.device)):
                below = math.prod(in_sizes[d + 1:])
                coord = torch.div(rest, below, rounding_mode="floor") if below > 1 else rest
                if d + 1 < dim:
                    rest = rest - coord * below
                pos = coord - start.to(idx_dtype)  # position inside the window
                if dilation[d] != 1:
                    pos = pos.div_(dilation[d], rounding_mode="floor")
                offset = pos if offset is None else offset.mul_(kernel[d]).add_(pos)
            out[i:i + step] = o
            offsets[i:i + step] = offset  # type: ignore[index]
        if out is None:  # empty batch
            out = pool(x, kernel, stride, padding, dilation, ceil_mode)
            offsets = torch.zeros(out.shape, dtype=offset_dtype, device=x.device)
        ctx.save_for_backward(offsets)
        return out

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        (offset,) = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode, in_shape = ctx.geometry
        dim = len(kernel)
        grad = g.new_empty(in_shape)
        if torch.is_grad_enabled():  # double backward: a differentiable scatter
            flat = grad.zero_().reshape(*in_shape[:-dim], -1)
            idx = _flat_indices(offset, kernel, stride, padding, dilation, in_shape[-dim:])
            return (flat.scatter_add(-1, idx.reshape(*idx.shape[:-dim], -1),
                                     g.reshape(*g.shape[:-dim], -1)).reshape(in_shape),
                    None, None, None, None, None)
        lift = 1 if dim == 1 else 0  # 1-d pooling is 2-d pooling of a height-1 image
        geometry = [(unit,) * lift + tuple(v)
                    for unit, v in zip((1, 1, 0, 1), (kernel, stride, padding, dilation))]
        backward = _POOL_BACKWARD[dim + lift]
        step = _batch_chunk(g)  # int64 indices for a chunk of examples at a time
        for i in range(0, g.shape[0], step):
            idx = _flat_indices(offset[i:i + step], kernel, stride, padding, dilation,
                                in_shape[-dim:])
            gc = g[i:i + step]
            shape = (gc.shape[0], *in_shape[1:])
            if lift:
                gc, idx = gc.unsqueeze(-2), idx.unsqueeze(-2)
                shape = (*shape[:-1], 1, shape[-1])
            # torch's kernel reads only the input's shape: a stride-0 stand-in, no copy;
            # it writes straight into this chunk of the result
            stand_in = g.new_empty(()).expand(shape)
            backward.grad_input(gc, stand_in, *geometry, ceil_mode, idx,
                                grad_input=grad[i:i + step].view(shape))
        return grad, None, None, None, None, None


class ReLU(nn.ReLU):
    """``nn.ReLU`` that keeps a 1-bit mask for backward (32x less than a float32 output)."""

    def forward(self, x: Tensor) -> Tensor:
        if plain_path(x):
            return F.relu(x, inplace=self.inplace)
        return PackedReLUFn.apply(x, 0.0, self.inplace)

    def __prepare_scriptable__(self) -> nn.Module:
        """For ``torch.jit.script``: the plain torch module (same values and gradients)."""
        return _plain(self)


class LeakyReLU(nn.LeakyReLU):
    """``nn.LeakyReLU`` that keeps a 1-bit mask for backward."""

    def forward(self, x: Tensor) -> Tensor:
        if plain_path(x) or self.negative_slope < 0:  # mask of x > 0 needs slope >= 0
            return F.leaky_relu(x, self.negative_slope, inplace=self.inplace)
        return PackedReLUFn.apply(x, float(self.negative_slope), self.inplace)

    def __prepare_scriptable__(self) -> nn.Module:
        """For ``torch.jit.script``: the plain torch module (same values and gradients)."""
        return _plain(self)


class _CompactMaxPool:
    """Shared forward of the compact max-pool modules."""

    _dim: int

    def forward(self: Any, x: Tensor) -> Tensor:
        if self.return_indices:
            raise ValueError(
                f"backprobe.nn.{type(self).__name__} keeps window offsets, not indices: "
                "use torch.nn's max pooling when return_indices=True"
            )
        if plain_path(x) or x.numel() == 0:
            return super().forward(x)  # type: ignore[misc]
        tup = _ntuple(self._dim)
        stride = self.stride if self.stride is not None else self.kernel_size
        unbatched = x.dim() == self._dim + 1
        out = CompactMaxPoolFn.apply(
            x.unsqueeze(0) if unbatched else x, tup(self.kernel_size), tup(stride),
            tup(self.padding), tup(self.dilation), self.ceil_mode,
        )
        return out.squeeze(0) if unbatched else out


    def __prepare_scriptable__(self: Any) -> nn.Module:
        """For ``torch.jit.script``: the plain torch module (same values and gradients)."""
        return _plain(self)


def _plain(module: nn.Module) -> nn.Module:
    """A shallow copy of a compact module as its torch class (``torch.jit.script``)."""
    torch_type = next(t for t in COMPACT_SWAPS if isinstance(module, t))
    out = torch_type.__new__(torch_type)
    out.__dict__.update(module.__dict__)
    return out


class MaxPool1d(_CompactMaxPool, nn.MaxPool1d):
    """``nn.MaxPool1d`` keeping int8 window offsets."""

    _dim = 1


class MaxPool2d(_CompactMaxPool, nn.MaxPool2d):
    """``nn.MaxPool2d`` keeping int8 window offsets."""

    _dim = 2


class MaxPool3d(_CompactMaxPool, nn.MaxPool3d):
    """``nn.MaxPool3d`` keeping int8 window offsets."""

    _dim = 3


# after plain_path and _plain, which _norm imports (backprobe.nn imports this module first)
from backprobe.nn._norm import BatchNorm1d, BatchNorm2d, BatchNorm3d  # noqa: E402

#: torch type -> compact drop-in type
COMPACT_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.ReLU: ReLU, nn.LeakyReLU: LeakyReLU,
    nn.MaxPool1d: MaxPool1d, nn.MaxPool2d: MaxPool2d, nn.MaxPool3d: MaxPool3d,
    nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d,
}
