"""Exact imaging: keep ``a_n`` at every (or every ``stride``-th) step."""

from __future__ import annotations

from torch import Tensor

from backprobe.wave._propagator import Propagator
from backprobe.wave.imaging import (
    Imaging,
    ImagingPass,
    ModellingInfo,
    check_stride,
    empty_field,
    kept_steps,
)


class _ExactPass(ImagingPass):
    def __init__(self, prop: Propagator, stride: int, keep: bool) -> None:
        super().__init__()
        self.stride = stride
        self.scale = float(stride)
        self.keep = keep
        self.hist = (self.hold(empty_field(prop, kept_steps(prop.n_steps, stride)))
                     if keep else None)

    def slot(self, n: int) -> Tensor | None:
        if self.hist is None or n % self.stride:
            return None
        return self.hist[n // self.stride]

    history = slot

    def release(self) -> None:
        super().release()
        self.hist = None


class Exact(Imaging):
    """Keep the forward history ``a_n`` at steps ``n = 0, k, 2k, ...`` (``k = stride``).

    Gradient ``k * sum_{n = 0, k, 2k, ...} a_n * b_n``: exact for ``stride=1``, the usual
    subsampled-imaging approximation otherwise. Memory: ``ceil(N / k) * S * |D|`` numbers.

    Args:
        stride: Keep every ``stride``-th internal time step.
    """

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = check_stride(stride)

    def start(
        self, prop: Propagator, info: ModellingInfo, observed: Tensor | None, keep: bool,
    ) -> ImagingPass:
        return self._record(_ExactPass(prop, self.stride, keep), info)

    def __repr__(self) -> str:
        return f"Exact(stride={self.stride})"
