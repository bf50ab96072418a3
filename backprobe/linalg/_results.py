"""Small result types of the randomized estimators, and the adaptive stopping rule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Estimate:
    """A scalar estimate.

    Attributes:
        value: the estimate.
        std_error: its standard error (``nan`` where the method gives none).
        num_matvecs: matrix-vector products spent (columns of all blocks).
        method: the method that produced it (what ``"auto"`` chose).
    """

    value: float
    std_error: float
    num_matvecs: int
    method: str

    def __float__(self) -> float:
        return self.value


@dataclass(frozen=True)
class DiagonalEstimate:
    """A diagonal estimate.

    Attributes:
        value: ``[n]`` the estimate.
        std_error: ``[n]`` entrywise standard errors.
        num_matvecs: matrix-vector products spent.
        method: the method.
    """

    value: Tensor
    std_error: Tensor
    num_matvecs: int
    method: str


@dataclass(frozen=True)
class Stopping:
    """When an adaptive estimator stops: ``std_error <= max(atol, rtol * |value|)`` or budget.

    Without ``rtol`` and ``atol`` the estimator spends exactly its first block.
    """

    rtol: float | None
    atol: float | None
    max_matvecs: int

    @staticmethod
    def make(
        num_matvecs: int, rtol: float | None, atol: float | None, max_matvecs: int | None,
        default_cap: int,
    ) -> Stopping:
        """Validate and build (``default_cap`` is the budget when ``max_matvecs`` is None)."""
        for name, v in (("rtol", rtol), ("atol", atol)):
            if v is not None and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        adaptive = rtol is not None or atol is not None
        cap = num_matvecs if not adaptive else (max_matvecs or max(default_cap, num_matvecs))
        if max_matvecs is not None and max_matvecs < num_matvecs:
            raise ValueError(f"max_matvecs={max_matvecs} is below num_matvecs={num_matvecs}")
        return Stopping(rtol, atol, cap)

    @property
    def adaptive(self) -> bool:
        return self.rtol is not None or self.atol is not None

    def done(self, value: float, std_error: float, spent: int, next_block: int) -> bool:
        """Stop now? (also when the next block would overrun the budget)."""
        if spent + next_block > self.max_matvecs or not self.adaptive:
            return True
        tol = max(self.atol or 0.0, (self.rtol or 0.0) * abs(value))
        return std_error <= tol


def mean_and_error(samples: Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean of 1-D ``samples`` (``nan`` error for one sample)."""
    s = samples.to(torch.float64)
    err = float(s.std() / math.sqrt(s.numel())) if s.numel() > 1 else math.nan
    return float(s.mean()), err


def check_matvecs(num_matvecs: int, minimum: int, method: str, multiple: int = 1) -> None:
    """Raise a ``ValueError`` unless ``num_matvecs`` is an int >= ``minimum``."""
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, int):
        raise TypeError(f"num_matvecs must be an int, got {type(num_matvecs).__name__}")
    if num_matvecs < minimum:
        raise ValueError(f"{method} needs num_matvecs >= {minimum}, got {num_matvecs}")
    if num_matvecs % multiple:
        raise ValueError(f"{method} needs num_matvecs divisible by {multiple}, got {num_matvecs}")
