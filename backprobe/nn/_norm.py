"""BatchNorm whose backward allocates nothing activation-sized but its result.

In training mode BatchNorm's input gradient is, per channel ``c`` over the ``M`` positions
(examples and spatial positions) that share it,

    dx = w_c * invstd_c * (dy - mean(dy) - xhat * mean(dy * xhat)),
    xhat = (x - mean_c) * invstd_c,

with ``dw_c = sum(dy * xhat)`` and ``db_c = sum(dy)`` (Ioffe & Szegedy, 2015). It is affine
in ``x`` and ``dy`` per channel: ``dx = a_c * dy + b_c * x + d_c``. Torch's CPU backward
(``native_batch_norm_backward``) allocates its ``grad_input`` twice (the first block is
dropped unused when input and output gradient are contiguous), so the allocation-event peak
of the step holds two activation-sized blocks there. The drop-ins below keep torch's forward
(identical outputs and running statistics) and save what torch saves (the input, per-channel
mean and inverse standard deviation); their backward takes the two per-channel sums from
torch's kernel (no ``grad_input`` requested: nothing activation-sized allocated) and writes
``dx`` into one fresh tensor.

What this buys is allocation-side: the first ``grad_input`` block of torch's CPU backward is
never written, so with glibc (fresh ``mmap`` for large blocks) it costs address space, not
resident memory; an allocator that must back every allocation (a caching allocator, a
budget counted by allocation events as :func:`backprobe.peak_memory` does) pays it in full.
The price is one more pass: ``dx`` takes two (``b x + d`` by torch's eval-mode BatchNorm
kernel, then ``+= a dy``) where torch's kernel takes one. Other devices take torch's path
unchanged.

What saves resident memory too: where the input is the output of a backprobe layer that
took the exact path on the data batch (the caller holds that batch through the step, e.g.
ResNet's stem convolution), :func:`backprobe.estimators.replay_source` offers a recipe for
it. The BatchNorm then keeps the recipe instead of the input, and backward recomputes the
input and overwrites it with ``dx``: one activation fewer held from forward to the end of
backward, for one extra forward of that layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from backprobe.estimators import replay_source
from backprobe.nn._compact import _plain, plain_path


def _channel_view(t: Tensor, dim: int) -> Tensor:
    """A per-channel vector ``[C]`` shaped to broadcast over ``[N, C, *spatial]``."""
    return t.view((-1,) + (1,) * (dim - 2))


def _differentiable_grads(g: Tensor, x: Tensor, weight: Tensor | None,
                          eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dw, db)`` from plain torch ops, differentiable in ``g``, ``x`` and ``weight``.

    Mean and inverse standard deviation are recomputed from ``x`` so that their dependence
    on ``x`` enters second derivatives.
    """
    dims = [0, *range(2, x.dim())]
    count = x.numel() // x.shape[1]
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    invstd = torch.rsqrt(var + eps)
    xhat = (x - mean) * invstd
    db = g.sum(dims)
    dw = (g * xhat).sum(dims)
    scale = invstd if weight is None else invstd * _channel_view(weight, x.dim())
    dx = scale * (g - _channel_view(db, x.dim()) / count
                  - xhat * _channel_view(dw, x.dim()) / count)
    return dx, dw, db


def _coefficients(weight: Tensor | None, mean: Tensor, invstd: Tensor, dw: Tensor, db: Tensor,
                  count: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel ``(a, b, d)`` of ``dx = a * dy + b * x + d``, each ``[C]``.

    ``a = w * invstd``, ``b = -a * k`` and ``d = a * (k * mean - db / M)`` with
    ``k = dw * invstd / M``: the closed form above with the sums ``dw``, ``db`` given.
    """
    a = invstd if weight is None else invstd * weight
    k = dw * invstd / count
    return a.to(dtype), (-a * k).to(dtype), (a * (k * mean - db / count)).to(dtype)


def _affine_into(out: Tensor, x: Tensor, g: Tensor, a: Tensor, b: Tensor, d: Tensor) -> Tensor:
    """``out = a * g + b * x + d`` per channel (``a``, ``b``, ``d``: ``[C]``); ``out`` may be ``x``.

    Two passes over whole tensors: a chunk loop would keep ``out`` in cache between them,
    but each of its small parallel regions waits for every thread, which costs far more than
    it saves as soon as the cores are shared.
    """
    if out is x:
        torch.addcmul(_channel_view(d, x.dim()), x, _channel_view(b, x.dim()), out=out)
    else:  # torch's eval-mode BatchNorm kernel with mean 0, variance 1, eps 0: b x + d
        empty = b.new_empty(0)
        torch.ops.aten.native_batch_norm.out(x, b, d, torch.zeros_like(b), torch.ones_like(b),
                                             False, 0.0, 0.0, out=out, save_mean=empty,
                                             save_invstd=empty)
    return out.addcmul_(g, _channel_view(a, x.dim()))


def _input_grad(g: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
                dw: Tensor, db: Tensor) -> Tensor:
    """``dx = a * g + b * x + d`` per channel, written into one fresh tensor."""
    a, b, d = _coefficients(weight, mean, invstd, dw, db, x.numel() // x.shape[1], x.dtype)
    return _affine_into(torch.empty_like(x), x, g, a, b, d)


def _replayed_grads(g: Tensor, replay: Any, weight: Tensor | None, mean: Tensor,
                    invstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dw, db)`` with the input recomputed by ``replay``, then turned into ``dx``.

    The recomputed input is the one activation-sized block: the sums read it, and ``dx``
    overwrites it in place.
    """
    out = replay(0, g.shape[0])
    _, dw, db = torch.ops.aten.native_batch_norm_backward(
        g, out, None, None, None, mean, invstd, True, 0.0, [False, True, True])
    a, b, d = _coefficients(weight, mean, invstd, dw, db, out.numel() // out.shape[1],
                            out.dtype)
    return _affine_into(out, out, g, a, b, d), dw, db


class BatchNormFn(torch.autograd.Function):
    """Training-mode batch normalisation (torch's forward) with a lean backward.

    Forward: ``torch.native_batch_norm`` (what ``F.batch_norm`` runs on CPU), which also
    updates the running statistics in place when given. Saves the input, the weight and the
    per-channel mean and inverse standard deviation, as torch does; but where the input is
    the output of a backprobe layer that can recompute it from the data batch
    (:func:`backprobe.estimators.replay_source`), it keeps the recipe instead of the input.

    Backward: the per-channel sums from ``native_batch_norm_backward`` without its
    ``grad_input`` (one read of ``x`` and ``dy``, no activation-sized allocation), then
    :func:`_input_grad` (or :func:`_replayed_grads`, which writes ``dx`` over the
    recomputed input). Under ``create_graph`` it uses a formula of plain torch ops instead,
    so higher derivatives exist. Input, weight or output gradient in a dtype other than
    float32/float64 or the weight's (mixed precision) go through torch's own backward.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor | None, running_var: Tensor | None, momentum: float,
                eps: float) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var,
                                                    True, momentum, eps)
        ctx.eps = eps
        ctx.replay = replay_source(x)
        if ctx.replay is None:
            ctx.save_for_backward(x, weight, mean, invstd)
        else:  # keep the recipe (and the dtype) instead of the input
            ctx.dtype = x.dtype
            ctx.save_for_backward(weight, mean, invstd)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.replay is None:
            x, weight, mean, invstd = ctx.saved_tensors
        else:
            x, (weight, mean, invstd) = None, ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = ctx.dtype if x is None else x.dtype
        dx = dw = db = None
        if torch.is_grad_enabled():  # double backward: differentiable plain ops
            x = ctx.replay(0, g.shape[0], differentiable=True) if x is None else x
            dx, dw, db = _differentiable_grads(g, x, weight, ctx.eps)
        elif g.dtype != dtype or dtype not in (torch.float32, torch.float64) or (
                weight is not None and weight.dtype != dtype):
            x = ctx.replay(0, g.shape[0]) if x is None else x
            dx, dw, db = torch.ops.aten.native_batch_norm_backward(
                g, x, weight, None, None, mean, invstd, True, ctx.eps, [need_x, need_w, need_b])
        elif x is None:
            dx, dw, db = _replayed_grads(g, ctx.replay, weight, mean, invstd)
        else:
            _, dw, db = torch.ops.aten.native_batch_norm_backward(
                g, x, None, None, None, mean, invstd, True, ctx.eps, [False, True, True])
            if need_x:
                dx = _input_grad(g, x, weight, mean, invstd, dw, db)
        return (dx if need_x else None, dw if need_w else None, db if need_b else None,
                None, None, None, None)


class _LeanBatchNorm:
    """Shared forward of the BatchNorm drop-ins (the logic of torch's ``_BatchNorm``)."""

    def forward(self: Any, x: Tensor) -> Tensor:
        if not self.training and self.running_mean is not None:
            return super().forward(x)  # type: ignore[misc]  # eval: running statistics
        if plain_path(x) or x.device.type != "cpu" or x.numel() == 0:  # torch's path (the
            # lean backward is written and measured for CPU)
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        per_channel = x.numel() // x.shape[1] if x.dim() > 1 and x.shape[1] else 0
        if per_channel == 1:
            raise ValueError("Expected more than 1 value per channel when training, got input "
                             f"size {list(x.shape)}")
        track = not self.training or self.track_running_stats
        return BatchNormFn.apply(x, self.weight, self.bias,
                                 self.running_mean if track else None,
                                 self.running_var if track else None, factor, self.eps)

    def __prepare_scriptable__(self: Any) -> nn.Module:
        """For ``torch.jit.script``: the plain torch module (same values and gradients)."""
        return _plain(self)


class BatchNorm1d(_LeanBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose backward allocates only its input gradient."""


class BatchNorm2d(_LeanBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose backward allocates only its input gradient."""


class BatchNorm3d(_LeanBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` whose backward allocates only its input gradient."""
