"""Empirical Fisher and Monte-Carlo Fisher as linear operators.

With ``g_n = nabla_f l(f_n, y)`` the gradient of one example's (sum-reduced) loss in the
model output and ``J_n`` the output's Jacobian:

    EF = c sum_n J_n^T g_n g_n^T J_n                 (true labels ``y_n``)
    F  = c sum_n E_{y ~ p(y | f_n)} [J_n^T g_n g_n^T J_n]  ~  (1/M) sum over M sampled y

``F``'s expectation is the GGN for the losses that are negative log-likelihoods
(``CrossEntropyLoss``: categorical; ``MSELoss``: Gaussian with variance 1/2, so
``E[g g^T] = 2 I``; ``BCEWithLogitsLoss``: Bernoulli). Both are symmetric PSD. Products: a
``jvp`` for ``J v``, the contraction with ``g``, and one ``vjp``, vectorised over columns.
The Monte-Carlo labels are drawn once per batch from a private generator seeded with
``seed`` and the batch index, so the operator is a fixed matrix.

Example:
    >>> model = torch.nn.Linear(3, 4).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 4, (8,))
    >>> ef = EFOperator(model, torch.nn.CrossEntropyLoss(), (x, y))
    >>> ef.shape
    (16, 16)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from backprobe._random import SEED_HIGH
from backprobe.linalg.curvature._base import CurvatureOperator

_LOSSES = (nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss)


def _check_loss(loss_fn: nn.Module) -> None:
    if not isinstance(loss_fn, _LOSSES):
        raise ValueError(f"Fisher operators support {[t.__name__ for t in _LOSSES]}, got "
                         f"{type(loss_fn).__name__}")
    if isinstance(loss_fn, nn.CrossEntropyLoss) and (
            loss_fn.weight is not None or loss_fn.label_smoothing != 0):
        raise ValueError("CrossEntropyLoss with class weights or label smoothing is not a "
                         "likelihood: no Fisher operator")


def output_gradients(loss_fn: nn.Module, out: Tensor, target: Tensor) -> Tensor:
    """Per-example gradients ``g_n = nabla_f l(f_n, target_n)`` of the sum-reduced loss."""
    o = out.detach().requires_grad_(True)
    with torch.enable_grad():
        if isinstance(loss_fn, nn.CrossEntropyLoss):
            val = F.cross_entropy(o, target, reduction="sum")
        elif isinstance(loss_fn, nn.MSELoss):
            val = F.mse_loss(o, target, reduction="sum")
        else:
            val = F.binary_cross_entropy_with_logits(o, target, reduction="sum")
        return torch.autograd.grad(val, o)[0]


def reduction_factor(loss_fn: nn.Module, out: Tensor) -> float:
    """``c`` of one batch: ``1`` for sums; ``1/N`` (cross-entropy) or ``1/numel`` (others)."""
    if loss_fn.reduction == "sum":
        return 1.0
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return 1.0 / (out.numel() // out.shape[1])
    return 1.0 / out.numel()


class _OuterProductOperator(CurvatureOperator):
    psd = True

    def __init__(self, model: nn.Module, loss_fn: nn.Module, data: Any,
                 params: Sequence[nn.Parameter] | None = None) -> None:
        _check_loss(loss_fn)
        super().__init__(model, loss_fn, data, params)
        self._batch_index = 0

    def gradients(self, out: Tensor, y: Tensor) -> Tensor:
        """``[M, *out.shape]`` output gradients to form outer products from."""
        raise NotImplementedError

    def _matmat(self, v: Tensor) -> Tensor:
        self._batch_index = 0
        return super()._matmat(v)

    def batch_matmat(self, x: Any, y: Tensor, v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        f = self.forward_fn(x)
        ps = self.primals()
        out, pullback = vjp(f, *ps)  # type: ignore[misc]
        g = self.gradients(out.detach(), y)
        self._batch_index += 1
        scale = reduction_factor(self.loss_fn, out) / g.shape[0]
        dims = tuple(range(2, g.dim()))  # contract everything but (sample, example)

        def fvp(*vs: Tensor) -> tuple[Tensor, ...]:
            jv = jvp(f, ps, vs)[1]
            s = (g * jv).sum(dim=dims, keepdim=True)
            return pullback((s * g).sum(0) * scale)

        return vmap(fvp)(*v)


class EFOperator(_OuterProductOperator):
    """Empirical Fisher ``c sum_n J_n^T g_n g_n^T J_n`` with the true labels."""

    def gradients(self, out: Tensor, y: Tensor) -> Tensor:
        return output_gradients(self.loss_fn, out, y)[None]


class MCFisherOperator(_OuterProductOperator):
    """Monte-Carlo Fisher with ``mc_samples`` labels per example drawn from the model.

    Args:
        model: the network.
        loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss``.
        data: one batch or a re-iterable of batches.
        params: parameter subset.
        mc_samples: labels ``M`` per example.
        seed: seed of the private generators (default: one draw from the global RNG).
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, data: Any,
                 params: Sequence[nn.Parameter] | None = None, *, mc_samples: int = 1,
                 seed: int | None = None) -> None:
        super().__init__(model, loss_fn, data, params)
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.mc_samples = mc_samples
        self.seed = int(torch.randint(0, SEED_HIGH, ()).item()) if seed is None else seed

    def gradients(self, out: Tensor, y: Tensor) -> Tensor:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self._batch_index)
                                            % SEED_HIGH)
        m = self.mc_samples
        o = out.detach().cpu()
        if isinstance(self.loss_fn, nn.CrossEntropyLoss):
            probs = torch.softmax(o.movedim(1, -1).double(), -1)
            flat = probs.reshape(-1, probs.shape[-1])
            idx = torch.multinomial(flat, m, replacement=True, generator=gen).mT  # [M, rows]
            onehot = F.one_hot(idx, flat.shape[-1]).to(flat.dtype)
            g = (flat[None] - onehot).reshape(m, *probs.shape).movedim(-1, 2)
        elif isinstance(self.loss_fn, nn.MSELoss):
            g = torch.randn(m, *o.shape, generator=gen, dtype=torch.float64) * 2 ** 0.5
        else:
            p = torch.sigmoid(o.double())
            g = p[None] - torch.bernoulli(p.expand(m, *p.shape), generator=gen)
        return g.to(out.dtype).to(out.device)
