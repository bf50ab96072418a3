"""The running-estimate base shared by the trace estimators (Hutchinson, XTrace, XNysTrace).

Each keeps an operator, a probe distribution, a private generator and the matvecs spent, and
grows block by block: :meth:`RunningTrace.add` draws probes and hands them with their
products to the estimator's own ``add_block``; :meth:`RunningTrace.estimate` is the mean and
standard error of the estimator's per-probe ``samples``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from backprobe.linalg._operator import LinearOperator
from backprobe.linalg._probes import draw_block
from backprobe.linalg._results import mean_and_error


class RunningTrace:
    """A trace estimate grown one block of probes at a time.

    Subclasses define ``add_block`` and ``samples``.
    """

    def __init__(self, op: LinearOperator, distribution: str, generator: torch.Generator):
        self.op, self.distribution, self.generator = op, distribution, generator
        self.spent = 0

    def add_block(self, w: Tensor, aw: Tensor) -> None:
        """Add probes ``w [n, k]`` whose products ``A w`` are known."""
        raise NotImplementedError

    def samples(self) -> Tensor:
        """One trace estimate per probe, whose mean is the estimate."""
        raise NotImplementedError

    def add(self, k: int) -> None:
        """Draw ``k`` probes and spend ``k`` matvecs on them (plus what ``add_block`` spends)."""
        w = draw_block(self.op.shape[0], k, self.distribution, self.generator, self.op.dtype,
                       self.op.device)
        self.add_block(w, self.op.matmat(w))
        self.spent += k

    def estimate(self) -> tuple[float, float]:
        """``(value, standard error)``."""
        return mean_and_error(self.samples())
