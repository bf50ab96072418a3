"""Symmetric factors of the loss Hessian with respect to the model output.

For a loss ``L = sum_n l_n(f_n)`` (``reduction="sum"``) or its mean, the Hessian with
respect to the model output is block diagonal over examples. ``loss_hessian_sqrt`` returns
columns ``S[m, n]`` (``[M, N, *f.shape[1:]]``) with

    sum_m S[m, n] S[m, n]^T = d^2 L / d f_n^2          (exact, M = number of outputs)
    E[sum_m S[m, n] S[m, n]^T] = d^2 L / d f_n^2       (Monte Carlo, M = mc_samples)

including the ``1/N`` of ``reduction="mean"`` as ``1/sqrt(N)`` in ``S``, as BackPACK does.
Torch's ``MSELoss`` and ``BCEWithLogitsLoss`` average over *all* elements, so their mean
factor is ``1/sqrt(f.numel())``; ``CrossEntropyLoss`` averages over the non-ignored examples.

* CrossEntropyLoss: ``H = diag(p) - p p^T`` with ``p = softmax(f)``;
  exact ``S = diag(sqrt(p)) - p sqrt(p)^T`` (columns indexed by classes),
  MC ``S = p - onehot(y)``, ``y ~ Categorical(p)`` (``E[S S^T] = H``).
  Label smoothing leaves ``H`` unchanged (the smoothed target sums to one).
* MSELoss: ``H = 2 I``; exact ``S = sqrt(2) I``, MC ``S = sqrt(2) z``, ``z ~ N(0, I)``.
* BCEWithLogitsLoss: ``H = diag(s (1 - s))`` with ``s = sigmoid(f)``; exact
  ``S = diag(sqrt(s (1 - s)))``, MC ``S = s - y``, ``y ~ Bernoulli(s)``.

MC columns are divided by ``sqrt(M)`` so that the sum over ``m`` estimates ``H``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SUPPORTED_LOSSES: tuple[type[nn.Module], ...] = (
    nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss,
)


def check_loss(loss_fn: nn.Module) -> None:
    """Raise a ``ValueError`` for a loss (configuration) without a supported Hessian factor."""
    if not isinstance(loss_fn, SUPPORTED_LOSSES):
        names = ", ".join(t.__name__ for t in SUPPORTED_LOSSES)
        raise ValueError(f"loss_fn {type(loss_fn).__name__} is not supported (supported: {names})")
    if loss_fn.reduction not in ("sum", "mean"):
        raise ValueError(f"{type(loss_fn).__name__}: reduction must be 'sum' or 'mean'")
    if getattr(loss_fn, "weight", None) is not None:
        raise ValueError(f"{type(loss_fn).__name__}(weight=...) is not supported")
    if getattr(loss_fn, "pos_weight", None) is not None:
        raise ValueError("BCEWithLogitsLoss(pos_weight=...) is not supported")


def loss_hessian_sqrt(
    loss_fn: nn.Module, output: Tensor, target: Tensor, mc_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Columns ``[M, N, *output.shape[1:]]`` of a symmetric factor of the loss Hessian.

    Args:
        loss_fn: ``CrossEntropyLoss``, ``MSELoss`` or ``BCEWithLogitsLoss`` (sum or mean).
        output: model output ``[N, C]`` (CrossEntropy) or ``[N, *]``.
        target: what ``loss_fn`` was called with.
        mc_samples: ``None`` for the exact factor, else the number of sampled columns.
        generator: random source for the Monte-Carlo factor.

    Returns:
        ``S`` with ``sum_m S[m, n] S[m, n]^T`` equal (exact) or unbiased for (MC) the Hessian of
        the total loss with respect to ``output[n]``.

    Raises:
        ValueError: unsupported loss or configuration, or CrossEntropy on non-2d outputs.
    """
    check_loss(loss_fn)
    f = output.detach()
    n = f.shape[0]
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if f.dim() != 2:
            raise ValueError(f"CrossEntropyLoss: expected outputs [N, C], got {tuple(f.shape)}")
        p = torch.softmax(f, dim=1)
        keep = torch.ones(n, dtype=f.dtype, device=f.device)
        if not target.is_floating_point():
            keep = (target != loss_fn.ignore_index).to(f.dtype)
        count = float(keep.sum()) if loss_fn.reduction == "mean" else 1.0
        scale = keep / math.sqrt(max(count, 1.0))  # [N]
        if mc_samples is None:
            sp = p.sqrt()
            s = torch.diag_embed(sp) - p.unsqueeze(2) * sp.unsqueeze(1)  # [N, out, col]
            s = s.permute(2, 0, 1)
        else:
            y = torch.multinomial(p, mc_samples, replacement=True, generator=generator)  # [N, M]
            onehot = torch.nn.functional.one_hot(y.T, f.shape[1]).to(f.dtype)  # [M, N, C]
            s = (p.unsqueeze(0) - onehot) / math.sqrt(mc_samples)
        return s * scale.reshape(1, n, 1)
    mean_scale = 1.0 / math.sqrt(f.numel()) if loss_fn.reduction == "mean" else 1.0
    flat = f.reshape(n, -1)
    d = flat.shape[1]
    if isinstance(loss_fn, nn.MSELoss):
        if mc_samples is None:
            diag = torch.full_like(flat, math.sqrt(2.0))
        else:
            z = torch.randn(
                (mc_samples, n, d), dtype=f.dtype, device=f.device, generator=generator
            )
            return (z * (math.sqrt(2.0) * mean_scale / math.sqrt(mc_samples))).reshape(
                mc_samples, *f.shape
            )
    else:
        sig = torch.sigmoid(flat)
        if mc_samples is None:
            diag = (sig * (1 - sig)).sqrt()
        else:
            u = torch.rand(
                (mc_samples, n, d), dtype=f.dtype, device=f.device, generator=generator
            )
            y = (u < sig).to(f.dtype)
            return ((sig - y) * (mean_scale / math.sqrt(mc_samples))).reshape(mc_samples, *f.shape)
    # exact elementwise losses: column m is e_m scaled by diag[:, m]
    s = torch.diag_embed(diag * mean_scale).permute(2, 0, 1)  # [D(col), N, D(out)]
    return s.reshape(d, *f.shape)
