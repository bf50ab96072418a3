"""``nn.Linear`` in canonical form: positions are all leading dims but the first."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LinearOp:
    """``y = x @ W.T + b`` on inputs ``[N, *, D_in]``.

    Canonical form: ``N`` examples (first dim), ``S`` = product of the middle dims.
    For probing, every row ``x[n, *]`` is a probe row and the features are the domain,
    whatever ``mode`` says (a Linear layer has a single "channel").
    """

    in_features: int
    out_features: int

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def backward(self, x, g, weight, input_shape, mask):  # noqa: D102 - see AffineOp
        need_in, need_w, need_b = mask
        gi = (g @ weight.to(g.dtype)).reshape(input_shape) if need_in else None
        gw = self.weight_grad(x, g) if need_w and x is not None else None
        gb = g.reshape(-1, g.shape[-1]).sum(0) if need_b else None
        return gi, gw, gb

    def weight_grad(self, x: Tensor, g: Tensor, groups: int | None = None) -> Tensor:
        return g.reshape(-1, g.shape[-1]).mT @ x.reshape(-1, x.shape[-1]).to(g.dtype)

    def canonical_input(self, x: Tensor) -> Tensor:
        if x.dim() == 1:
            return x.reshape(1, 1, -1)
        return x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])  # N may be 0

    def canonical_output_grad(self, g: Tensor) -> Tensor:
        return self.canonical_input(g)

    def weight_from_matrix(self, m: Tensor) -> Tensor:
        return m

    def probe_view(self, x: Tensor, mode: str) -> Tensor:
        return x.reshape(-1, 1, x.shape[-1])

    def rows(self, t: Tensor) -> Tensor:
        return t.reshape(-1, t.shape[-1])


def bind_linear(module: nn.Module, x: Tensor) -> tuple[Tensor, LinearOp]:
    """Describe a ``nn.Linear`` applied to ``x``."""
    assert isinstance(module, nn.Linear)
    return x, LinearOp(module.in_features, module.out_features)
