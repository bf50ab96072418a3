"""Drop-in ``Linear`` and ``ConvNd`` whose weight gradient comes from an estimator.

They are subclasses of the torch modules with the same parameters and ``state_dict`` keys;
the estimator is a plain attribute that can be changed at any time (e.g. to anneal ``r``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from backprobe.estimators._base import Estimator, estimated_affine
from backprobe.estimators.exact import Exact
from backprobe.layers import bind

_EXACT = Exact()


def _check_estimator(estimator: Any) -> Estimator:
    if estimator is None:
        return _EXACT
    if not isinstance(estimator, Estimator):
        raise TypeError(
            "estimator must be a backprobe estimator (Exact, Probe, ...), "
            f"got {type(estimator).__name__}"
        )
    return estimator


class EstimatedLayer(nn.Module):
    """Mixin: the forward of a registered layer routed through its estimator.

    Attributes:
        estimator: forms the weight gradient (default ``Exact``).
        last_path: ``"estimator"`` or ``"exact"``: what the last training forward used
            (probing falls back to exact for an input where it would keep at least as many
            numbers as the input itself).
    """

    estimator: Estimator
    last_path: str | None

    def _estimated_forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__}: expected a floating-point input, got {x.dtype}"
            )
        x, op = bind(self, x)
        weight: Tensor = self.weight  # type: ignore[assignment]
        bias: Tensor | None = self.bias  # type: ignore[assignment]
        if not (torch.is_grad_enabled() and weight.requires_grad):
            return op.forward(x, weight, bias)
        est = self.estimator
        if not est.worthwhile(op, x):
            est, self.last_path = _EXACT, "exact"
        else:
            self.last_path = "estimator"
            est = est.for_module(self)
        return estimated_affine(x, weight, bias, op, est)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, estimator={self.estimator!r}"


def _init(module: EstimatedLayer, estimator: Estimator | None) -> None:
    module.estimator = _check_estimator(estimator)
    module.last_path = None
    module.estimator.attach(module)


class Linear(EstimatedLayer, nn.Linear):
    """``nn.Linear`` with ``estimator=`` (see :class:`backprobe.Probe`)."""

    def __init__(self, *args: Any, estimator: Estimator | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _init(self, estimator)

    def forward(self, x: Tensor) -> Tensor:
        return self._estimated_forward(x)


class Conv1d(EstimatedLayer, nn.Conv1d):
    """``nn.Conv1d`` with ``estimator=``."""

    def __init__(self, *args: Any, estimator: Estimator | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _init(self, estimator)

    def forward(self, x: Tensor) -> Tensor:
        return self._estimated_forward(x)


class Conv2d(EstimatedLayer, nn.Conv2d):
    """``nn.Conv2d`` with ``estimator=``."""

    def __init__(self, *args: Any, estimator: Estimator | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _init(self, estimator)

    def forward(self, x: Tensor) -> Tensor:
        return self._estimated_forward(x)


class Conv3d(EstimatedLayer, nn.Conv3d):
    """``nn.Conv3d`` with ``estimator=``."""

    def __init__(self, *args: Any, estimator: Estimator | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _init(self, estimator)

    def forward(self, x: Tensor) -> Tensor:
        return self._estimated_forward(x)


#: torch type -> drop-in type
AFFINE_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: Linear, nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d,
}
