"""``nn.Linear`` in canonical form: positions are all leading dims but the first."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from backprobe.layers._base import AffineOp, register_op


@register_op(nn.Linear)
@dataclass(frozen=True)
class LinearOp(AffineOp):
    """``y = x @ W.T + b`` on inputs ``[N, *, D_in]``.

    Canonical form: ``N`` examples (first dim), ``S`` = product of the middle dims.
    For probing, every row ``x[n, *]`` is a probe row and the features are the domain,
    whatever ``mode`` says (a Linear layer has a single "channel").
    """

    in_features: int
    out_features: int
    groups: int = 1

    @classmethod
    def from_module(cls, module: nn.Module) -> LinearOp:
        assert isinstance(module, nn.Linear)
        return cls(module.in_features, module.out_features)

    @property
    def d_in(self) -> int:
        return self.in_features

    @property
    def d_out(self) -> int:
        return self.out_features

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def backward(
        self, x: Tensor | None, g: Tensor, weight: Tensor, input_shape: tuple[int, ...],
        mask: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
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

    def matrix_view(self, w: Tensor) -> Tensor:
        return w

    def probe_view(self, x: Tensor, mode: str) -> Tensor:
        return x.reshape(-1, 1, x.shape[-1])

    def rows(self, t: Tensor) -> Tensor:
        return t.reshape(-1, t.shape[-1])


def bind_linear(module: nn.Module, x: Tensor) -> tuple[Tensor, AffineOp]:
    """Describe a ``nn.Linear`` applied to ``x`` (same as ``LinearOp.bind``)."""
    return LinearOp.bind(module, x)
