"""First-order quantities: per-example gradients and their statistics.

Notation (BackPACK's): the loss is ``L = sum_n f_n`` (``reduction="sum"``) or
``L = (1/N) sum_n f_n`` (``reduction="mean"``; for ``MSELoss``/``BCEWithLogitsLoss`` torch
also divides by the output width). The per-example *terms* of the actual ``.grad`` are

    b_n = g_n           (sum)        b_n = g_n / N        (mean)

with ``g_n = grad f_n``, so that ``p.grad = sum_n b_n`` in both cases. Every quantity below is
a statistic of the ``b_n`` (the scaling is the loss's, exactly as in BackPACK):

==================  ======================  ==============================================
quantity            attribute               value
==================  ======================  ==============================================
``BatchGrad``       ``p.grad_batch``        ``[N, *p.shape]``: ``b_n``
``BatchL2Grad``     ``p.batch_l2``          ``[N]``: ``||b_n||^2``
``SumGradSquared``  ``p.sum_grad_squared``  ``[*p.shape]``: ``sum_n b_n**2``
``Variance``        ``p.variance``          ``[*p.shape]``:
                                            ``mean_n b_n**2 - (mean_n b_n)**2``
==================  ======================  ==============================================

``BatchGradFactors`` stores ``p.grad_batch_factors = (delta [N, D_out], a [N, D_in])`` with
``b_n = delta_n a_n^T`` on Linear weights (``(delta,)`` on their bias) and ``p.grad_batch``
on every other parameter.

``Variance`` is the (biased, ``1/N``) elementwise variance of the ``b_n``: under
``reduction="mean"`` that is the variance of ``g_n / N``, i.e. ``1/N**2`` times the variance
of the per-example gradients (BackPACK's ``Variance``, ``VarianceBaseModule._variance_from``).

One per-example computation per layer feeds every first-order quantity of the same pass;
``BatchL2Grad`` alone uses the Gram form ``||sum_s g_s a_s^T||^2 = sum_{s,t} (g_s.g_t)(a_s.a_t)``
when that is cheaper than materialising ``b_n``, and statistics without ``BatchGrad`` are
accumulated over chunks of examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from backprobe.quantities._base import FirstOrderQuantity
from backprobe.quantities._sites import BoundSite


class BatchGrad(FirstOrderQuantity):
    """Per-example gradient terms ``b_n`` in ``p.grad_batch``, ``[N, *p.shape]``.

    ``p.grad_batch.sum(0)`` equals this backward's contribution to ``p.grad``.

    Example:
        >>> import torch
        >>> from backprobe.quantities import record, BatchGrad
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> with record(model, BatchGrad()):
        ...     model(torch.randn(8, 4)).sum().backward()
        >>> model[0].weight.grad_batch.shape
        torch.Size([8, 3, 4])
    """

    savefield = "grad_batch"
    accumulates: str | None = "cat"


class BatchL2Grad(FirstOrderQuantity):
    """Squared norms ``||b_n||^2`` of the per-example terms in ``p.batch_l2``, ``[N]``."""

    savefield = "batch_l2"
    accumulates: str | None = "cat"


class SumGradSquared(FirstOrderQuantity):
    """Elementwise second moment ``sum_n b_n**2`` in ``p.sum_grad_squared``, ``[*p.shape]``."""

    savefield = "sum_grad_squared"
    accumulates: str | None = "sum"


class Variance(FirstOrderQuantity):
    """Elementwise variance ``(1/N) sum_n b_n**2 - ((1/N) sum_n b_n)**2`` in ``p.variance``.

    Same shape as the parameter. See the module docstring for the loss-reduction scaling.
    """

    savefield = "variance"


class BatchGradFactors(FirstOrderQuantity):
    """Per-example terms ``b_n`` as factors where that is exact, ``grad_batch`` elsewhere.

    A Linear layer applied once to ``[N, D_in]`` inputs has rank-one per-example weight
    gradients ``b_n = delta_n a_n^T`` (``delta_n``: the output gradient row, carrying the loss
    reduction's scaling; ``a_n``: the input row) and bias terms ``delta_n``. For such a layer
    the weight gets ``p.grad_batch_factors = (delta [N, D_out], a [N, D_in])`` and its bias
    ``(delta,)``, the *same* ``delta`` tensor: ``D_in + D_out`` numbers per example instead of
    ``D_out * (D_in + 1)``, and nothing is computed. Every other parameter (convolutions,
    Linear layers on sequences or used twice, normalisation layers) gets ``p.grad_batch``
    exactly as :class:`BatchGrad` gives it. The variance-reduced optimizers of
    :mod:`backprobe.optim` store gradients in this form.

    Example:
        >>> import torch
        >>> from backprobe.quantities import record, BatchGradFactors
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> with record(model, BatchGradFactors()):
        ...     model(torch.randn(8, 4)).sum().backward()
        >>> delta, a = model[0].weight.grad_batch_factors
        >>> delta.shape, a.shape, model[0].bias.grad_batch_factors[0] is delta
        (torch.Size([8, 3]), torch.Size([8, 4]), True)
    """

    savefield = "grad_batch_factors"


def first_order(
    bound: BoundSite, gs: Sequence[Tensor], wanted: set[type[FirstOrderQuantity]],
    reuse: bool = False,
) -> dict[str, dict[str, Any]]:
    """Compute the wanted first-order quantities of one site.

    Args:
        bound: the site's calls.
        gs: output gradients, one per call, ``[1, N, *out]``.
        wanted: quantity types requested.
        reuse: write ``grad_batch`` into the parameters' previous ``grad_batch`` tensors
            where shape, dtype and layout match (saves the page faults of a fresh
            allocation; the previous values are overwritten).

    Returns:
        ``{savefield: {param_name: value}}``.
    """
    n = gs[0].shape[1]
    out: dict[str, dict[str, Any]] = {}
    if BatchGradFactors in wanted:
        wanted = wanted - {BatchGradFactors}
        factors = bound.factors(gs)
        if factors is None:
            wanted = wanted | {BatchGrad}
        else:
            out["grad_batch_factors"] = factors
            if wanted:
                out.update(first_order(bound, gs, wanted, reuse))
            return out
    bufs: dict[str, Tensor] = {}
    if reuse and BatchGrad in wanted:
        for k, p in bound.params.items():
            old = getattr(p, "grad_batch", None)
            if (isinstance(old, Tensor) and old.shape == (n, *p.shape)
                    and old.dtype == gs[0].dtype and old.is_contiguous()):
                bufs[k] = old
    if wanted == {BatchL2Grad}:
        out["batch_l2"] = {k: v[0] for k, v in bound.sq_norms(gs).items()}
        return out
    stats = bound.moments(gs) if wanted & {SumGradSquared, Variance} else None
    if stats is not None:  # closed forms: no per-example tensor is read back
        if BatchGrad in wanted:
            out["grad_batch"] = {k: v[0] for k, v in bound.per_example(gs, out=bufs).items()}
        if BatchL2Grad in wanted:
            out["batch_l2"] = {k: v[2] for k, v in stats.items()}
        if SumGradSquared in wanted:
            out["sum_grad_squared"] = {k: v[1] for k, v in stats.items()}
        if Variance in wanted:
            out["variance"] = {k: v[1] / n - (v[0] / n).square() for k, v in stats.items()}
        return out
    if BatchGrad in wanted:
        b = {k: v[0] for k, v in bound.per_example(gs, out=bufs).items()}
        out["grad_batch"] = b
        if BatchL2Grad in wanted:
            out["batch_l2"] = {
                k: torch.linalg.vector_norm(v.flatten(1), dim=1).square() for k, v in b.items()
            }
        if not wanted & {SumGradSquared, Variance}:
            return out
        sgs = {k: torch.einsum("n...,n...->...", v, v) for k, v in b.items()}
        total = {k: v.sum(0) for k, v in b.items()}
    else:
        sgs_parts: dict[str, list[Tensor]] = {k: [] for k in bound.params}
        tot_parts: dict[str, list[Tensor]] = {k: [] for k in bound.params}
        l2_parts: dict[str, list[Tensor]] = {k: [] for k in bound.params}
        for sl in bound.chunks(gs):
            for k, v in bound.per_example([g[:, sl] for g in gs], sl).items():
                v = v[0]
                v2 = v.square()
                sgs_parts[k].append(v2.sum(0))
                tot_parts[k].append(v.sum(0))
                if BatchL2Grad in wanted:
                    l2_parts[k].append(v2.flatten(1).sum(1))
        sgs = {k: torch.stack(v).sum(0) for k, v in sgs_parts.items()}
        total = {k: torch.stack(v).sum(0) for k, v in tot_parts.items()}
        if BatchL2Grad in wanted:
            out["batch_l2"] = {k: torch.cat(v) for k, v in l2_parts.items()}
    if SumGradSquared in wanted:
        out["sum_grad_squared"] = sgs
    if Variance in wanted:
        out["variance"] = {k: sgs[k] / n - (total[k] / n).square() for k in sgs}
    return out
