"""The exact weight gradient: keeps the whole input, as plain autograd does."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from backprobe.estimators._base import Estimator
from backprobe.layers import AffineOp


class Exact(Estimator):
    """Exact weight gradient ``dW = sum_{n,s} g[n,s] (outer) x[n,s]``.

    Unbiased (it is the gradient). Memory: the layer input, ``x.numel()`` numbers.
    All three gradients come from one aten backward call, as in plain autograd.

    Example:
        >>> import torch, backprobe
        >>> layer = backprobe.nn.Conv2d(3, 8, 3, estimator=backprobe.Exact())
        >>> layer(torch.randn(2, 3, 16, 16)).sum().backward()
    """

    exact = True

    def pack(self, op: AffineOp, x: Tensor) -> tuple[tuple[Tensor, ...], Any]:
        return (x,), None

    def weight_grad(self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor) -> Tensor:
        return op.weight_grad(saved[0], g)

    def saved_numbers(self, op: AffineOp, x: Tensor) -> int:
        return x.numel()

    def backward(
        self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor, weight: Tensor,
        input_shape: tuple[int, ...], mask: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x = saved[0] if mask[1] else None
        return op.backward(x, g, weight, input_shape, mask)

    def __repr__(self) -> str:
        return "Exact()"


#: The shared stateless instance (the exact fallback of every estimator).
EXACT = Exact()
