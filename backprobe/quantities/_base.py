"""What every quantity declares: where it is stored and what it needs."""

from __future__ import annotations

from typing import Any

import torch

from backprobe._random import private_generator


class Quantity:
    """Base class of the quantities :func:`~backprobe.quantities.record` computes.

    Attributes:
        savefield: attribute of each parameter the result is stored under (BackPACK's name).
        needs_input: the result needs the full layer inputs (not available where a
            non-exact estimator such as ``Probe`` keeps only a sketch).
    """

    savefield: str = ""
    needs_input: bool = True
    #: How results of two backward passes combine under ``record(..., accumulate=True)``:
    #: ``"cat"`` along ``cat_dim`` (per-example results), ``"sum"``, or ``None`` (cannot).
    accumulates: str | None = None
    cat_dim: int = 0

    def accumulate(self, old: Any, new: Any) -> Any:
        """One parameter's result over two backward passes (see :attr:`accumulates`).

        Raises:
            ValueError: if this quantity cannot be accumulated.
        """
        if self.accumulates == "cat":
            return torch.cat([old, new], dim=self.cat_dim)
        if self.accumulates == "sum":
            return old + new
        raise ValueError(f"{self!r} cannot be accumulated over several backward passes")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FirstOrderQuantity(Quantity):
    """Computed from the per-example terms of the gradient during ``loss.backward()``."""


class CurvatureQuantity(Quantity):
    """Computed from backpropagated columns of the loss Hessian's square root.

    Needs ``loss_fn``. ``mc_samples=None`` means the exact factor (one column per model
    output), otherwise that many Monte-Carlo columns.
    """

    mc_samples: int | None = None

    def scaled(self, result: dict[str, Any], c: float) -> dict[str, Any]:
        """Result for the objective ``c * loss_fn(...)`` from that of ``loss_fn(...)``.

        The GGN and the Hessian are linear in the loss, so the default multiplies by ``c``.
        """
        return {k: v * c for k, v in result.items()}

    def __init__(self, mc_samples: int | None = None, seed: int | None = None) -> None:
        if mc_samples is not None and (not isinstance(mc_samples, int) or mc_samples < 1):
            raise ValueError(f"mc_samples must be a positive int, got {mc_samples!r}")
        self.mc_samples = mc_samples
        self.generator = private_generator(seed)

    def __repr__(self) -> str:
        arg = "" if self.mc_samples is None else f"mc_samples={self.mc_samples}"
        return f"{type(self).__name__}({arg})"
