"""``nn.Conv1d/2d/3d`` in canonical form: positions are output pixels, ``D_in = C_in * prod(k)``.

Every path calls the aten convolution (and its backward), so stride, dilation, groups,
padding and 1-D/2-D/3-D inputs are handled by torch itself, exactly. Nothing here unfolds
the input except ``canonical_input``; per-example weight gradients of stride-1 convolutions
avoid even that (``per_example_weight_grad``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _dummy(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A zero-stride tensor of ``shape``: aten reads only its size."""
    return like.new_empty(1).expand(shape)


@dataclass(frozen=True)
class ConvOp:
    """An N-d convolution with resolved integer padding (asymmetric padding already applied)."""

    dim: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel_size)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return _CONV_FN[self.dim](
            x, weight, bias, self.stride, self.padding, self.dilation, self.groups
        )

    def _backward(self, g, x, weight_shape, weight, groups, mask, has_bias):
        return torch.ops.aten.convolution_backward(
            g, x, weight if weight is not None else _dummy(g, weight_shape),
            [g.shape[1]] if has_bias else None,
            list(self.stride), list(self.padding), list(self.dilation),
            False, [0] * self.dim, groups, list(mask),
        )

    def input_grad(self, g: Tensor, weight: Tensor, input_shape: tuple[int, ...]) -> Tensor:
        """The input gradient as a transposed convolution; needs no input tensor.

        ``output_padding`` recovers the input sizes that a stride rounds away. (Handing aten's
        convolution backward a stand-in input instead makes it copy one of full size.)
        """
        geometry = zip(input_shape[2:], g.shape[2:], self.stride, self.padding, self.dilation,
                       self.kernel_size)
        out_pad = [i - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for i, o, s, p, d, k in geometry]
        return _CONV_T_FN[self.dim](
            g, weight.to(g.dtype), None, self.stride, self.padding, out_pad, self.groups,
            self.dilation,
        )

    def backward(self, x, g, weight, input_shape, mask):  # noqa: D102 - see AffineOp
        need_in, need_w, need_b = mask
        if x is None or not need_w:
            gi = self.input_grad(g, weight, input_shape) if need_in else None
            gb = g.sum([0, *range(2, g.dim())]) if need_b else None
            return gi, None, gb
        return self._backward(g, x, None, weight.to(g.dtype), self.groups, mask, need_b)

    def weight_grad(self, x: Tensor, g: Tensor, groups: int | None = None) -> Tensor:
        groups = self.groups if groups is None else groups
        shape = (g.shape[1], x.shape[1] // groups, *self.kernel_size)
        x = x.to(g.dtype)
        return self._backward(g, x, shape, None, groups, (False, True, False), False)[1]

    def canonical_input(self, x: Tensor) -> Tensor:
        # Unfold with a one-hot kernel: output channel c*K + k copies channel c at offset k.
        c, k = x.shape[1], self.kernel_numel
        eye = torch.eye(k, dtype=x.dtype, device=x.device).reshape(k, 1, *self.kernel_size)
        cols = _CONV_FN[self.dim](
            x, eye.repeat(c, *([1] * (self.dim + 1))), None,
            self.stride, self.padding, self.dilation, c,
        )
        return cols.flatten(2).transpose(1, 2)

    def per_example_weight_grad(self, x: Tensor, g: Tensor) -> Tensor | None:
        """``[N, C_out, C_in, *k]`` per-example weight gradients without unfolding, or ``None``.

        For stride 1 and one group: flatten the zero-padded input ``x_p`` (sizes ``P``) and
        pad the output gradient to the same row lengths (zeros beyond the output sizes). The
        kernel offset ``i`` then reads the input window as one contiguous slice of
        ``x_p.flatten()`` starting at ``sum_j i_j d_j prod_{l>j} P_l``, so its gradient is one
        batched matrix product ``g_p [N, C_out, L] @ slice^T [N, L, C_in]`` over strided views:
        ``prod(k)`` GEMMs that read ``g`` repeatedly instead of writing a ``prod(k) * C_in``
        times larger unfolded input. The padded columns of ``g_p`` are zero, so the rows that a
        slice wraps into contribute nothing. ``None`` where unfolding is the better plan (a
        stride, groups, or few input channels against many output channels).
        """
        c_in, c_out = x.shape[1], g.shape[1]
        if any(s != 1 for s in self.stride) or self.groups != 1 or c_out > 2 * c_in:
            return None
        x = x.to(g.dtype)
        if any(self.padding):
            x = F.pad(x, [p for p in reversed(self.padding) for _ in range(2)])
        sizes = x.shape[2:]
        row = [math.prod(sizes[j + 1:]) for j in range(self.dim)]  # flat stride per dim
        pad_g = [v for j in reversed(range(1, self.dim)) for v in (0, sizes[j] - g.shape[2 + j])]
        gp = (F.pad(g, pad_g) if pad_g else g).flatten(2)  # [N, C_out, L]
        length = gp.shape[2]
        offsets = [sum(i * d * r for i, d, r in zip(idx, self.dilation, row))
                   for idx in itertools.product(*(range(k) for k in self.kernel_size))]
        xf = x.flatten(2)
        extra = offsets[-1] + length - xf.shape[2]
        if extra > 0:
            xf = F.pad(xf, (0, extra))
        out = g.new_empty(len(offsets), g.shape[0], c_out, c_in)
        for k, start in enumerate(offsets):
            torch.bmm(gp, xf[:, :, start:start + length].transpose(1, 2), out=out[k])
        out = out.permute(1, 2, 3, 0).contiguous()
        return out.view(g.shape[0], c_out, c_in, *self.kernel_size)

    def input_second_moment(self, x: Tensor, out_sizes: tuple[int, ...]) -> Tensor | None:
        """``sum_{n,s} a[n,s] a[n,s]^T`` (``[D_in, D_in]``) without unfolding, or ``None``.

        Stride 1, one group: lay the zero-padded input out as ``[C_in, N * prod(P)]`` (every
        example's padded block in a row), so that kernel offset ``i`` reads all windows of
        the batch as one contiguous slice ``X_i`` starting at its flat offset. Then the block
        ``(i, j)`` of the second moment is one GEMM ``X_i (X_j * mask)^T`` with ``mask``
        selecting the valid output positions; ``(j, i)`` is its transpose. ``out_sizes``:
        the output's spatial sizes. ``None`` for strides, groups, or fewer than 16 input
        channels (there the unfolded input is small and one GEMM on it is faster).
        """
        if any(s != 1 for s in self.stride) or self.groups != 1 or x.shape[1] < 16:
            return None
        if any(self.padding):
            x = F.pad(x, [p for p in reversed(self.padding) for _ in range(2)])
        n, c = x.shape[:2]
        sizes = x.shape[2:]
        row = [math.prod(sizes[j + 1:]) for j in range(self.dim)]
        block = math.prod(sizes)
        offsets = [sum(i * d * r for i, d, r in zip(idx, self.dilation, row))
                   for idx in itertools.product(*(range(k) for k in self.kernel_size))]
        xf = x.transpose(0, 1).reshape(c, n * block)
        xf = F.pad(xf, (0, offsets[-1]))
        valid = torch.zeros(sizes, dtype=x.dtype, device=x.device)
        valid[tuple(slice(0, o) for o in out_sizes)] = 1
        mask = valid.flatten().repeat(n)
        length = n * block
        k = len(offsets)
        out = x.new_empty(k, k, c, c)
        for j, sj in enumerate(offsets):
            right = xf[:, sj:sj + length] * mask
            for i in range(j + 1):
                si = offsets[i]
                torch.mm(xf[:, si:si + length], right.T, out=out[i, j])
                if i != j:
                    out[j, i] = out[i, j].T
        return out.permute(2, 0, 3, 1).reshape(c * k, c * k)

    def canonical_output_grad(self, g: Tensor) -> Tensor:
        return g.flatten(2).transpose(1, 2)

    def weight_from_matrix(self, m: Tensor) -> Tensor:
        c_out = m.shape[-2]
        lead = m.shape[:-2]
        if self.groups > 1:
            grp = self.groups
            m = m.reshape(*lead, grp, c_out // grp, grp, m.shape[-1] // grp)
            m = torch.diagonal(m, dim1=-4, dim2=-2).movedim(-1, -3)
        return m.reshape(*lead, c_out, -1, *self.kernel_size)

    def probe_view(self, x: Tensor, mode: str) -> Tensor:
        if mode == "channel":
            return x.flatten(2)
        return x.reshape(x.shape[0], 1, -1)

    def rows(self, t: Tensor) -> Tensor:
        return t


def _resolve_padding(module: nn.modules.conv._ConvNd, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Return the input to convolve and symmetric integer padding for the aten call.

    Non-zero padding modes and the asymmetric part of ``padding="same"`` are applied with
    ``F.pad`` (outside the estimator, so autograd differentiates them exactly).
    """
    d = len(module.kernel_size)
    if module.padding_mode != "zeros":
        pad = module._reversed_padding_repeated_twice
        return F.pad(x, pad, mode=module.padding_mode), (0,) * d
    if module.padding == "valid":
        return x, (0,) * d
    if module.padding == "same":
        total = [dl * (k - 1) for dl, k in zip(module.dilation, module.kernel_size)]
        left = tuple(t // 2 for t in total)
        extra = [t - 2 * lt for t, lt in zip(total, left)]
        if any(extra):
            x = F.pad(x, [p for e in reversed(extra) for p in (0, e)])
        return x, left
    return x, tuple(module.padding)  # type: ignore[arg-type]


def bind_conv(module: nn.Module, x: Tensor) -> tuple[Tensor, ConvOp]:
    """Describe a ``nn.ConvNd`` applied to ``x``; returns the (possibly padded) input and op."""
    assert isinstance(module, nn.modules.conv._ConvNd)
    if module.transposed:
        raise TypeError(f"{type(module).__name__}: transposed convolutions are not supported")
    x, padding = _resolve_padding(module, x)
    op = ConvOp(
        dim=len(module.kernel_size),
        kernel_size=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=padding,
        dilation=tuple(module.dilation),
        groups=module.groups,
    )
    return x, op
