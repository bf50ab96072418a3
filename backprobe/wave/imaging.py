"""The imaging-strategy interface: what forward keeps, and how backward forms the gradient.

The velocity gradient of a modelling call is a correlation over time steps,

    g[x] = sum_n a_n[x] * b_n[x],     a_n = L p_n (forward),   b_n = C lambda_{n+1} (adjoint),

(see :mod:`backprobe.wave._propagator`), scaled by ``2 v dt^2``. An :class:`Imaging`
strategy is a configuration; each modelling call starts a fresh :class:`ImagingPass` that
owns the call's buffers, so one strategy object can serve several calls in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from backprobe.wave._propagator import Propagator


@dataclass(frozen=True)
class ModellingInfo:
    """How a modelling call was discretised.

    Attributes:
        substeps: Internal time steps per recording sample (``>= 1``).
        dt_internal: Internal time step (s).
        n_steps: Internal time steps ``N = nt * substeps``; strategies see these steps.
        domain_shape: Computational domain (interior plus absorbing layer).
        shots: Number of shots.
    """

    substeps: int
    dt_internal: float
    n_steps: int
    domain_shape: tuple[int, ...]
    shots: int


class ImagingPass:
    """One call's state. Subclasses override the hooks or ``forward``/``backward``."""

    scale: float = 1.0

    def __init__(self) -> None:
        self.held: list[Tensor] = []

    def hold(self, t: Tensor) -> Tensor:
        """Register a tensor this pass holds (counted by ``nbytes``) and return it."""
        self.held.append(t)
        return t

    def nbytes(self) -> int:
        """Bytes of every tensor the pass holds (buffers included)."""
        return sum(t.nbytes for t in self.held)

    def slot(self, n: int) -> Tensor | None:
        """Where step ``n`` writes ``a_n``, or ``None`` if it is not kept."""
        return None

    def commit(self, n: int) -> None:
        """Called once ``a_n`` is written into ``slot(n)``."""

    def history(self, n: int) -> Tensor | None:
        """``a_n`` (or the strategy's stand-in for it) during backward, or ``None``."""
        return None

    def forward(self, prop: Propagator) -> Tensor:
        """Run the forward propagation; returns receiver data ``[S, R, N]``."""
        return prop.forward(self.slot, self.commit)

    def backward(
        self, prop: Propagator, grad_data: Tensor, want_v: bool, want_w: bool,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Run the adjoint; returns ``scale * sum_s sum_n a_n b_n`` (``[*D]``) and ``dJ/df``."""
        acc, grad_w = prop.adjoint(grad_data, self.history if want_v else None, want_w)
        grad = None
        if acc is not None:
            grad = acc.sum(0)
            if self.scale != 1.0:
                grad = grad * self.scale
        return grad, grad_w

    def release(self) -> None:
        """Drop the held tensors (``nbytes`` of the strategy stays as reported)."""
        self.held = []


class Imaging:
    """Base class of imaging strategies (``Exact``, ``Checkpoint``, ``TimeProbe``, ``DFT``).

    Subclasses implement :meth:`start`. After a modelling call, :meth:`nbytes` reports the
    bytes the strategy held for that call (the sum of its tensors' ``nbytes``, block
    buffers included); it stays valid after backward.
    """

    def __init__(self) -> None:
        self._nbytes = 0
        self.last_info: ModellingInfo | None = None

    def start(
        self, prop: Propagator, info: ModellingInfo, observed: Tensor | None, keep: bool,
    ) -> ImagingPass:
        """Allocate one call's state.

        Args:
            prop: The call's propagator.
            info: Its discretisation.
            observed: Observed data ``[S, R, nt]`` at the recording rate, or ``None``.
            keep: Whether a velocity gradient will be needed (if not, keep nothing).
        """
        raise NotImplementedError

    def validate(self, observed: Tensor | None, shots: int, n_rec: int, nt: int) -> None:
        """Check call arguments the strategy depends on (default: nothing)."""

    def nbytes(self) -> int:
        """Bytes held for the most recent modelling call."""
        return self._nbytes

    def _record(self, p: ImagingPass, info: ModellingInfo) -> ImagingPass:
        self._nbytes = p.nbytes()
        self.last_info = info
        return p


def check_stride(stride: int) -> int:
    """Validate a time-subsampling factor."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    return stride


def kept_steps(n_steps: int, stride: int) -> int:
    """Number of steps ``n = 0, stride, 2 stride, ...`` below ``n_steps``."""
    return (n_steps + stride - 1) // stride


def empty_field(prop: Propagator, *lead: int) -> Tensor:
    """An uninitialised ``[*lead, S, *D]`` tensor on the propagator's device and dtype."""
    return torch.empty((*lead, prop.shots, *prop.dom), dtype=prop.dtype, device=prop.device)
