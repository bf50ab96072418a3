"""Slow, obviously-correct references shipped for tests and users alike."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from backprobe.convert import revert
from backprobe.nn import AFFINE_SWAPS, COMPACT_SWAPS

_BACKPROBE_TYPES = (*AFFINE_SWAPS.values(), *COMPACT_SWAPS.values())


def reference_grads(
    module: nn.Module, x: Tensor, grad_output: Tensor, dtype: torch.dtype = torch.float64
) -> dict[str, Tensor]:
    """Gradients of ``<module(x), grad_output>`` by plain torch autograd in ``dtype``.

    The module is copied and reverted to its plain torch type first, so this is the oracle
    for any backprobe layer. Keys: ``"input"`` and each parameter name.
    """
    ref = copy.deepcopy(module)
    if any(type(m) in _BACKPROBE_TYPES for m in ref.modules()):
        revert(ref)
    ref = ref.to(dtype)
    xr = x.detach().to(dtype).requires_grad_(True)
    out = ref(xr)
    params = dict(ref.named_parameters())
    grads = torch.autograd.grad(out, [xr, *params.values()], grad_output.to(dtype))
    return {"input": grads[0], **dict(zip(params, grads[1:]))}


def estimate_mean(
    draw: Callable[[], Tensor], n: int
) -> tuple[Tensor, Tensor]:
    """Mean and standard error (elementwise) of ``n`` estimates from ``draw()`` (float64)."""
    samples = torch.stack([draw().double() for _ in range(n)])
    return samples.mean(0), samples.std(0, unbiased=True) / n**0.5
