"""``nn.ConvTranspose1d/2d/3d`` in canonical form (the roles of input and output swap).

A transposed convolution scatters each input position through the kernel:
``y[n, o, p] = sum_{c, k} W[c, o, k] x[n, c, q]`` over ``p = q * stride - padding +
k * dilation``. Per *output* position ``p`` that is the canonical form with the unfolded
input ``a[n, p, (c, k)] = x[n, c, q]`` (zero where no ``q`` lands on ``p``), ``D_in =
C_in * prod(k)``, ``D_out = C_out``; the weight ``[C_in, C_out / groups, *k]`` is the
(block-diagonal) matrix ``[D_out, D_in]`` transposed per block. Its weight gradient is the
correlation of the output gradient with the input, which aten's convolution backward with
``transposed=True`` evaluates exactly (stride, dilation, groups, ``output_padding``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from backprobe.layers._base import AffineOp, register_op
from backprobe.layers.conv import CONV_FN, CONV_T_FN, ConvFamilyOp, batch_chunked


@register_op(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
@dataclass(frozen=True)
class ConvTransposeOp(ConvFamilyOp):
    """An N-d transposed convolution (``padding_mode="zeros"``, the only one torch allows)."""

    output_padding: tuple[int, ...]

    shares_weights = True
    transposed = True

    @classmethod
    def from_module(cls, module: nn.Module) -> ConvTransposeOp:
        assert isinstance(module, nn.modules.conv._ConvTransposeNd)
        return cls(
            module.in_channels, module.out_channels, tuple(module.kernel_size),
            tuple(module.stride), tuple(module.padding),  # type: ignore[arg-type]
            tuple(module.dilation), module.groups, tuple(module.output_padding),
        )

    def with_output_size(self, module: nn.Module, x: Tensor, output_size: Any) -> AffineOp:
        """The op with the ``output_padding`` torch derives from ``output_size``."""
        assert isinstance(module, nn.modules.conv._ConvTransposeNd)
        pad = module._output_padding(
            x, list(output_size), list(self.stride), list(self.padding),
            list(self.kernel_size), self.dim, list(self.dilation),
        )
        return replace(self, output_padding=tuple(int(p) for p in pad))

    def output_sizes(self, sizes: Sequence[int]) -> list[int]:
        """Spatial output sizes for input sizes ``sizes``."""
        geometry = zip(sizes, self.stride, self.padding, self.dilation, self.kernel_size,
                       self.output_padding)
        return [(i - 1) * s - 2 * p + d * (k - 1) + op + 1 for i, s, p, d, k, op in geometry]

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The transposed convolution, in chunks of examples on CPU (``batch_chunked``)."""
        def conv_t(xc: Tensor) -> Tensor:
            return CONV_T_FN[self.dim](xc, weight, bias, self.stride, self.padding,
                                       self.output_padding, self.groups, self.dilation)

        if x.dim() != self.dim + 2:  # unbatched input: torch's own handling
            return conv_t(x)
        out_shape = (x.shape[0], weight.shape[1] * self.groups, *self.output_sizes(x.shape[2:]))
        return batch_chunked(conv_t, x, out_shape)

    def aten_output_padding(self) -> list[int]:
        return list(self.output_padding)

    def input_grad(self, g: Tensor, weight: Tensor, input_shape: tuple[int, ...]) -> Tensor:
        """The adjoint is a plain convolution; trim what ``output_padding`` adds."""
        w = weight.to(g.dtype)

        def conv(gc: Tensor) -> Tensor:
            gi = CONV_FN[self.dim](gc, w, None, self.stride, self.padding, self.dilation,
                                   self.groups)
            for d, size in enumerate(input_shape[2:], start=2):
                gi = gi.narrow(d, 0, size)
            return gi

        if g.dim() != self.dim + 2:
            return conv(g)
        return batch_chunked(conv, g, (g.shape[0], *input_shape[1:]))

    def canonical_input(self, x: Tensor) -> Tensor:
        # Scatter with a one-hot kernel: output channel c*K + k receives channel c via offset k.
        c, k = x.shape[1], math.prod(self.kernel_size)
        eye = torch.eye(k, dtype=x.dtype, device=x.device).reshape(1, k, *self.kernel_size)
        cols = CONV_T_FN[self.dim](x, eye.expand(c, *eye.shape[1:]), None, self.stride,
                                   self.padding, self.output_padding, c, self.dilation)
        return cols.flatten(2).transpose(1, 2)

    def weight_from_matrix(self, m: Tensor) -> Tensor:
        lead, grp = m.shape[:-2], self.groups
        m = m.reshape(*lead, grp, m.shape[-2] // grp, grp, m.shape[-1] // grp)
        return self.weight_from_blocks(torch.diagonal(m, dim1=-4, dim2=-2).movedim(-1, -3))

    def weight_from_blocks(self, blocks: Tensor) -> Tensor:
        lead, grp, o = blocks.shape[:-3], blocks.shape[-3], blocks.shape[-2]
        w = blocks.reshape(*lead, grp, o, -1, math.prod(self.kernel_size)).transpose(-3, -2)
        return w.reshape(*lead, self.in_channels, o, *self.kernel_size)
