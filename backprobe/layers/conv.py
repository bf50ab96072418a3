"""``nn.Conv1d/2d/3d`` in canonical form: positions are output pixels, ``D_in = C_in * prod(k)``.

Every path calls the aten convolution (and its backward), so stride, dilation, groups,
padding and 1-D/2-D/3-D inputs are handled by torch itself, exactly. Nothing here unfolds
the input except ``canonical_input``; per-example weight gradients and the input's second
moment for stride-1 convolutions avoid even that, and so do AOP's row scores.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backprobe.layers._base import AffineOp, chunks, register_op

CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def dummy(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A zero-stride tensor of ``shape``: aten reads only its size."""
    return like.new_empty(1).expand(shape)


def batch_chunks(x: Tensor, row_bytes: int) -> list[slice] | None:
    """Chunks of the examples of ``x`` for :func:`batch_chunked`, or ``None`` for one call.

    ``None`` where chunking could not help or is not allowed: one chunk would do, not on
    CPU, a channels-last input (the plain call keeps its memory format; a chunked output is
    contiguous), autograd recording (grad mode on), a ``torch.func`` transform or
    ``torch.compile`` (which plans memory itself).
    """
    if torch.compiler.is_compiling() or x.dim() < 2:
        return None
    parts = chunks(x.shape[0], row_bytes)
    if (len(parts) < 2 or x.device.type != "cpu" or _channels_last(x)
            or torch.is_grad_enabled() or torch._C._are_functorch_transforms_active()):
        return None
    return parts


def batch_chunked(fn: Callable[[Tensor], Tensor], x: Tensor,
                  out_shape: Sequence[int]) -> Tensor:
    """``fn(x)`` for a batch-wise ``fn``, evaluated a chunk of examples at a time into one output.

    oneDNN's CPU convolution reorders its input into a blocked layout and writes a blocked
    output before the plain one: for a whole batch these transients are as large as the
    input and the output themselves, and they set the peak of many steps. On chunks of about
    ``CHUNK_BYTES`` (input plus output) they stay small; the result is the same. A plain
    call where :func:`batch_chunks` says so.

    Args:
        fn: maps ``x[a:b]`` to rows ``a:b`` of the result.
        x: input ``[N, ...]``.
        out_shape: shape of ``fn(x)``.

    Returns:
        ``fn(x)``.
    """
    row_bytes = (math.prod(x.shape[1:]) + math.prod(out_shape[1:])) * x.element_size()
    parts = batch_chunks(x, row_bytes)
    if parts is None:
        return fn(x)
    out: Tensor | None = None
    for sl in parts:
        part = fn(x[sl])
        if out is None:
            out = part.new_empty(tuple(out_shape))
        out[sl] = part
        del part
    assert out is not None
    return out


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` is laid out channels-last (and not also contiguous)."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    return (x.dim() in formats and not x.is_contiguous()
            and x.is_contiguous(memory_format=formats[x.dim()]))


def pad_list(before: Sequence[int], after: Sequence[int] | None = None) -> list[int]:
    """``F.pad``'s argument (last dim first) for per-dim padding ``before`` and ``after``."""
    after = before if after is None else after
    return [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)]


def flat_offsets(sizes: Sequence[int], kernel: Sequence[int], dilation: Sequence[int]) -> list[int]:
    """Flat offsets of every kernel position in a row-major block of spatial ``sizes``."""
    row = [math.prod(sizes[j + 1:]) for j in range(len(sizes))]
    return [sum(i * d * r for i, d, r in zip(idx, dilation, row))
            for idx in itertools.product(*(range(k) for k in kernel))]


def one_hot_kernel(channels: int, kernel: tuple[int, ...], like: Tensor) -> Tensor:
    """``[channels * K, 1, *kernel]``: filter ``c * K + k`` is one at kernel offset ``k``."""
    k = math.prod(kernel)
    eye = torch.eye(k, dtype=like.dtype, device=like.device).reshape(k, 1, *kernel)
    return eye.repeat(channels, *([1] * (len(kernel) + 1)))


def resolve_padding(module: nn.modules.conv._ConvNd) -> tuple[tuple[int, ...], str, list[int]]:
    """``(symmetric padding for aten, F.pad mode, F.pad list applied first)`` of a conv module.

    Non-zero padding modes and the asymmetric part of ``padding="same"`` are applied with
    ``F.pad`` (outside the estimator, so autograd differentiates them exactly).
    """
    d = len(module.kernel_size)
    if module.padding_mode != "zeros":
        return (0,) * d, module.padding_mode, list(module._reversed_padding_repeated_twice)
    if module.padding == "valid":
        return (0,) * d, "constant", []
    if module.padding == "same":
        total = [dl * (k - 1) for dl, k in zip(module.dilation, module.kernel_size)]
        left = tuple(t // 2 for t in total)
        extra = [t - 2 * lt for t, lt in zip(total, left)]
        return left, "constant", pad_list([0] * d, extra) if any(extra) else []
    return tuple(module.padding), "constant", []  # type: ignore[arg-type]


@dataclass(frozen=True)
class ConvFamilyOp(AffineOp):
    """What ``ConvOp`` and ``ConvTransposeOp`` share: their fields and aten's convolution backward.

    ``transposed`` selects aten's transposed convolution; subclasses give ``input_grad``,
    the gradient with respect to the input.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    transposed: ClassVar[bool] = False

    @property
    def dim(self) -> int:
        return len(self.kernel_size)

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def d_in(self) -> int:
        return self.in_channels * self.kernel_numel

    @property
    def d_out(self) -> int:
        return self.out_channels

    def aten_output_padding(self) -> list[int]:
        """The ``output_padding`` handed to aten's convolution backward."""
        return [0] * self.dim

    def input_grad(self, g: Tensor, weight: Tensor, input_shape: tuple[int, ...]) -> Tensor:
        """The gradient with respect to an input of ``input_shape``; needs no input tensor."""
        raise NotImplementedError

    def _aten_backward(
        self, g: Tensor, x: Tensor, weight: Tensor, groups: int, mask: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return torch.ops.aten.convolution_backward(
            g, x, weight, [g.shape[1]] if mask[2] else None,
            list(self.stride), list(self.padding), list(self.dilation),
            self.transposed, self.aten_output_padding(), groups, list(mask),
        )

    def backward(
        self, x: Tensor | None, g: Tensor, weight: Tensor, input_shape: tuple[int, ...],
        mask: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        need_in, need_w, need_b = mask
        if x is None or not need_w:
            gi = self.input_grad(g, weight, input_shape) if need_in else None
            gb = g.sum([0, *range(2, g.dim())]) if need_b else None
            return gi, None, gb
        w = weight.to(g.dtype)
        # per example: input and output gradient, each with oneDNN's reorder
        row_bytes = 2 * (math.prod(x.shape[1:]) + math.prod(g.shape[1:])) * g.element_size()
        parts = batch_chunks(g, row_bytes)
        # chunks add weight-sized partial sums (the running sum beside a chunk's blocked and
        # plain result): worth it only where the batch's reorders (about half of
        # n * row_bytes) clearly outweigh them
        if parts is None or 4 * w.numel() * w.element_size() >= g.shape[0] * row_bytes // 2:
            return self._aten_backward(g, x, w, self.groups, mask)
        gi_all: Tensor | None = None
        gw: Tensor | None = None
        for sl in parts:  # chunks of examples: the weight gradient is their sum
            gi_c, gw_c, _ = self._aten_backward(g[sl], x[sl].to(g.dtype), w, self.groups,
                                                (need_in, True, False))
            if gi_c is not None:
                if gi_all is None:
                    gi_all = gi_c.new_empty((g.shape[0], *gi_c.shape[1:]))
                gi_all[sl] = gi_c
            assert gw_c is not None
            gw = gw_c if gw is None else gw.add_(gw_c)
            del gi_c, gw_c
        gb = g.sum([0, *range(2, g.dim())]) if need_b else None
        return gi_all, gw, gb

    def weight_grad(self, x: Tensor, g: Tensor, groups: int | None = None) -> Tensor:
        groups = self.groups if groups is None else groups
        # the weight is [C_out, C_in / groups, *k], transposed [C_in, C_out / groups, *k]
        rows, cols = (x.shape[1], g.shape[1]) if self.transposed else (g.shape[1], x.shape[1])
        shape = (rows, cols // groups, *self.kernel_size)
        out = self._aten_backward(g, x.to(g.dtype), dummy(g, shape), groups, (False, True, False))
        assert out[1] is not None
        return out[1]

    def canonical_output_grad(self, g: Tensor) -> Tensor:
        return g.flatten(2).transpose(1, 2)


@register_op(nn.Conv1d, nn.Conv2d, nn.Conv3d)
@dataclass(frozen=True)
class ConvOp(ConvFamilyOp):
    """An N-d convolution with resolved symmetric integer padding (the rest is ``pre_pad``)."""

    pad_mode: str = "constant"
    pre_pad: tuple[int, ...] = ()

    shares_weights = True

    @classmethod
    def from_module(cls, module: nn.Module) -> ConvOp:
        assert isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
        padding, mode, pre = resolve_padding(module)
        return cls(
            module.in_channels, module.out_channels, tuple(module.kernel_size),
            tuple(module.stride), padding, tuple(module.dilation), module.groups, mode,
            tuple(pre),
        )

    def prepare(self, x: Tensor) -> Tensor:
        return F.pad(x, list(self.pre_pad), mode=self.pad_mode) if self.pre_pad else x

    def output_sizes(self, sizes: Sequence[int]) -> list[int]:
        """Spatial output sizes for (already prepared) input sizes."""
        geometry = zip(sizes, self.stride, self.padding, self.dilation, self.kernel_size)
        return [(i + 2 * p - d * (k - 1) - 1) // s + 1 for i, s, p, d, k in geometry]

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The convolution, in chunks of examples on CPU (see :func:`batch_chunked`)."""
        def conv(xc: Tensor) -> Tensor:
            return CONV_FN[self.dim](
                xc, weight, bias, self.stride, self.padding, self.dilation, self.groups
            )

        if x.dim() != self.dim + 2:  # unbatched input: torch's own handling
            return conv(x)
        out_shape = (x.shape[0], weight.shape[0], *self.output_sizes(x.shape[2:]))
        return batch_chunked(conv, x, out_shape)

    def input_grad(self, g: Tensor, weight: Tensor, input_shape: tuple[int, ...]) -> Tensor:
        """The input gradient as a transposed convolution; needs no input tensor.

        ``output_padding`` recovers the input sizes that a stride rounds away. (Handing aten's
        convolution backward a stand-in input instead makes it copy one of full size.)
        """
        geometry = zip(input_shape[2:], g.shape[2:], self.stride, self.padding, self.dilation,
                       self.kernel_size)
        out_pad = [i - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for i, o, s, p, d, k in geometry]
        w = weight.to(g.dtype)

        def conv_t(gc: Tensor) -> Tensor:
            return CONV_T_FN[self.dim](gc, w, None, self.stride, self.padding, out_pad,
                                       self.groups, self.dilation)

        if g.dim() != self.dim + 2:
            return conv_t(g)
        return batch_chunked(conv_t, g, (g.shape[0], *input_shape[1:]))

    def canonical_input(self, x: Tensor) -> Tensor:
        # Unfold with a one-hot kernel: output channel c*K + k copies channel c at offset k.
        c = x.shape[1]
        cols = CONV_FN[self.dim](x, one_hot_kernel(c, self.kernel_size, x), None,
                                 self.stride, self.padding, self.dilation, c)
        return cols.flatten(2).transpose(1, 2)

    def weight_from_matrix(self, m: Tensor) -> Tensor:
        c_out = m.shape[-2]
        lead = m.shape[:-2]
        if self.groups > 1:
            grp = self.groups
            m = m.reshape(*lead, grp, c_out // grp, grp, m.shape[-1] // grp)
            m = torch.diagonal(m, dim1=-4, dim2=-2).movedim(-1, -3)
        return m.reshape(*lead, c_out, -1, *self.kernel_size)

    def weight_from_blocks(self, blocks: Tensor) -> Tensor:
        lead = blocks.shape[:-3]
        return blocks.reshape(*lead, self.out_channels, -1, *self.kernel_size)

    def matrix_view(self, w: Tensor) -> Tensor | None:
        if self.groups != 1:
            return None
        return w.flatten(-self.dim - 1)

    # -- fast paths ----------------------------------------------------------------------
    def _padded(self, x: Tensor) -> Tensor:
        return F.pad(x, pad_list(self.padding)) if any(self.padding) else x

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
        x = self._padded(x.to(g.dtype))
        sizes = x.shape[2:]
        pad_g = pad_list([0] * (self.dim - 1), [sizes[j] - g.shape[2 + j]
                                                for j in range(1, self.dim)])
        gp = (F.pad(g, pad_g) if pad_g else g).flatten(2)  # [N, C_out, L]
        length = gp.shape[2]
        offsets = flat_offsets(sizes, self.kernel_size, self.dilation)
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
        x = self._padded(x)
        n, c = x.shape[:2]
        sizes = x.shape[2:]
        block = math.prod(sizes)
        offsets = flat_offsets(sizes, self.kernel_size, self.dilation)
        xf = F.pad(x.transpose(0, 1).reshape(c, n * block), (0, offsets[-1]))
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

    def row_scores(self, x: Tensor, g: Tensor) -> Tensor:
        """Row norms without unfolding: ``||x_patch||^2`` per group is ``x^2`` conv ones."""
        n, c_in, grp = x.shape[0], x.shape[1], self.groups
        ones = x.new_ones(grp, c_in // grp, *self.kernel_size)
        nx = self.forward(x.square(), ones, None).flatten(2)  # [N, groups, S]
        ng = g.flatten(2).square().reshape(n, grp, -1, nx.shape[-1]).sum(2)
        return (nx * ng).sum(1).clamp_min(0).sqrt().reshape(-1)

    def gather_rows(self, x: Tensor, g: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Only the selected patches of the (zero-padded) input, by advanced indexing."""
        out_shape = g.shape[2:]
        s_total = math.prod(out_shape)
        n_idx, s_idx = idx // s_total, idx % s_total
        xp = self._padded(x).movedim(1, -1)  # [N, *spatial, C]
        d = self.dim
        index: list[Tensor] = [n_idx.reshape(-1, *([1] * d))]
        coords = torch.unravel_index(s_idx, tuple(out_shape))
        for j in range(d):
            shape = [1] * d
            shape[j] = self.kernel_size[j]
            offs = torch.arange(self.kernel_size[j], device=x.device) * self.dilation[j]
            pos = coords[j].reshape(-1, 1) * self.stride[j] + offs
            index.append(pos.reshape(-1, *shape))
        patches = xp[tuple(index)]  # [K, *kernel, C]
        xs = patches.movedim(-1, 1).reshape(idx.shape[0], -1)
        gs = g.flatten(2)[n_idx, :, s_idx]
        return xs, gs

    def shared_probe_weight_grad(
        self, sketch: Tensor, z: Tensor, row_shape: tuple[int, ...], g: Tensor
    ) -> Tensor | None:
        """``H[n, o, j, k] = corr(g[n, o], z_j)[k]`` as one convolution backward.

        Probes are the input channels of a batch-1 convolution whose output channels are
        ``(n, o)``; then ``dW = (1/r) s . H``. Worth it while ``r <= C_in / groups``. ``H``
        is formed for a chunk of examples at a time (about ``CHUNK_BYTES`` each), so its
        size stays bounded whatever the batch.
        """
        n, c_in, r = sketch.shape
        if r > row_shape[1] // self.groups:
            return None
        c_out, out_sp = g.shape[1], g.shape[2:]
        probes = z.reshape(1, r, *row_shape[2:])
        acc = sketch.new_zeros(c_in, c_out * self.kernel_numel)
        # per example: its output gradient (reordered by oneDNN) and H, which exists up to
        # four times at once (stand-in weight, blocked and plain result, permuted copy)
        item = (math.prod(out_sp) * c_out + 4 * c_out * r * self.kernel_numel) \
            * sketch.element_size()
        for sl in chunks(n, item):
            gk = g[sl].reshape(1, -1, *out_sp)
            h = self.weight_grad(probes, gk, groups=1).reshape(-1, c_out, r, self.kernel_numel)
            _accumulate(acc, sketch[sl], h)
            del h
        return self._from_accumulated(acc, r)


    def per_example_probe_weight_grad(
        self, sketch: Tensor, probes: Callable[[slice], Tensor], row_shape: tuple[int, ...],
        g: Tensor,
    ) -> Tensor | None:
        """Channel-mode probed weight gradient for per-example probes, or ``None``.

        ``H[n, o, j, k] = corr(g[n, o], z_nj)[k]`` for every example at once is one
        convolution backward with ``groups = N``: example ``n``'s ``r`` probe images are the
        input channels of group ``n``, its output gradient the output channels. Then
        ``dW = (1/r) sum_{n,j} s[n, :, j] H[n, :, j]``: the reconstruction ``x_hat`` never
        exists and the correlations cost ``r / C_in`` of the exact weight gradient. One
        group only, and only while ``r < C_in`` (otherwise the reconstruction is cheaper);
        runs over chunks of examples of about ``CHUNK_BYTES`` (probe images and ``H``).

        Args:
            sketch: ``[N, C_in, r]``, ``<x[n, c], z_nj>``.
            probes: ``slice -> [len, r, Q]``, the probes of those examples.
            row_shape: the input's shape.
            g: output gradient ``[N, C_out, *out]``.
        """
        n, c_in, r = sketch.shape
        if self.groups != 1 or r >= c_in or g.dim() != self.dim + 2:
            return None
        c_out, out_sp, k = g.shape[1], g.shape[2:], self.kernel_numel
        spatial = tuple(row_shape[2:])
        acc = sketch.new_zeros(c_in, c_out * k)
        # per example: probe images and output gradient (each reordered by oneDNN) and H,
        # which exists up to four times at once (stand-in weight, blocked and plain, permuted)
        item = (2 * r * math.prod(spatial) + 2 * c_out * math.prod(out_sp)
                + 4 * c_out * r * k) * sketch.element_size()
        for sl in chunks(n, item):
            m = sl.stop - sl.start
            images = probes(sl).reshape(1, m * r, *spatial)
            gk = g[sl].to(sketch.dtype).reshape(1, m * c_out, *out_sp)
            h = self.weight_grad(images, gk, groups=m).reshape(m, c_out, r, k)
            del images, gk
            _accumulate(acc, sketch[sl], h)
            del h
        return self._from_accumulated(acc, r)

    def _from_accumulated(self, acc: Tensor, r: int) -> Tensor:
        """The weight from ``acc [C_in, C_out * K]`` (see :func:`_accumulate`), divided by r."""
        c_in, k = acc.shape[0], self.kernel_numel
        full = acc.div_(r).view(c_in, -1, k).transpose(0, 1)  # [C_out, C_in, K], one copy:
        return self.weight_from_matrix(full.reshape(full.shape[0], c_in * k))


def _accumulate(acc: Tensor, sketch: Tensor, h: Tensor) -> None:
    """``acc[i, (o, k)] += sum_{n, j} sketch[n, i, j] h[n, o, j, k]``: one GEMM, in place.

    (An ``einsum`` would return a weight-sized result per chunk before the sum.)
    """
    m, c_out, r, k = h.shape
    hp = h.permute(0, 2, 1, 3).reshape(m * r, c_out * k)
    sp = sketch.transpose(1, 2).reshape(m * r, sketch.shape[1])
    acc.addmm_(sp.mT, hp)


def bind_conv(module: nn.Module, x: Tensor) -> tuple[Tensor, AffineOp]:
    """Describe a ``nn.ConvNd`` applied to ``x`` (same as ``ConvOp.bind``)."""
    return ConvOp.bind(module, x)
