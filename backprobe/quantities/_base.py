"""What every quantity declares: where it is stored and what it needs."""

from __future__ import annotations

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

    def __init__(self, mc_samples: int | None = None, seed: int | None = None) -> None:
        if mc_samples is not None and (not isinstance(mc_samples, int) or mc_samples < 1):
            raise ValueError(f"mc_samples must be a positive int, got {mc_samples!r}")
        self.mc_samples = mc_samples
        self.generator = private_generator(seed)

    def __repr__(self) -> str:
        arg = "" if self.mc_samples is None else f"mc_samples={self.mc_samples}"
        return f"{type(self).__name__}({arg})"
