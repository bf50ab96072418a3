"""The chain machinery shared by the Langevin samplers of :mod:`backprobe.optim.langevin`.

:class:`ChainState` counts steps; :class:`LangevinSampler` owns the generator (``generator=``,
see :func:`backprobe.optim._base.make_generator`), draws the noise and round-trips the chain's
counters with the optimizer state; :func:`minibatch_potential` is the unbiased mini-batch
estimate of the potential ``U``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from backprobe.optim._base import Optimizer, check, gaussian_like, make_generator

__all__ = ["ChainState", "Closure", "LangevinSampler", "minibatch_potential"]

Closure = Callable[[], Tensor]


def minibatch_potential(
    batch_losses: Tensor, num_examples: int, prior: Tensor | float = 0.0
) -> Tensor:
    """The unbiased mini-batch estimate ``U_hat = (N / B) * sum_i f_i + prior``.

    Args:
        batch_losses: Per-example negative log-likelihoods ``f_i``, shape ``[B]`` (e.g.
            ``F.cross_entropy(logits, y, reduction="none")``).
        num_examples: ``N``, the size of the whole training set.
        prior: ``-log p(theta)`` (up to a constant), added once.

    Returns:
        The 0-dim estimate of the full potential ``U``.

    Raises:
        ValueError: ``batch_losses`` is not 1-D and non-empty, or ``num_examples < 1``.

    Example:
        >>> import torch
        >>> losses = torch.tensor([1.0, 2.0])
        >>> minibatch_potential(losses, num_examples=10, prior=0.5)
        tensor(15.5000)
    """
    if batch_losses.dim() != 1 or batch_losses.numel() == 0:
        raise ValueError(
            "batch_losses must be the non-empty 1-D tensor of per-example losses (use "
            f"reduction='none'), got shape {tuple(batch_losses.shape)}"
        )
    check("num_examples", num_examples, "count")
    return batch_losses.sum() * (num_examples / batch_losses.numel()) + prior


@dataclass
class ChainState:
    """Chain-level state of :class:`SGLD` and :class:`UnderdampedLangevin`.

    Attributes:
        step: Number of steps taken.
    """

    step: int = 0


class LangevinSampler(Optimizer):
    """Shared machinery: the generator, the chain's counters in the state round-trip."""

    rules: ClassVar[dict[str, str]] = {"lr": "positive"}
    chain: ChainState
    generator: torch.Generator

    def __init__(
        self, params: Iterable[Any], defaults: dict[str, Any],
        generator: torch.Generator | int | None,
    ) -> None:
        super().__init__(params, defaults, make_generator(generator, owner=type(self).__name__))

    def _noise(self, p: Tensor) -> Tensor:
        """Standard normal noise shaped like ``p``, from the sampler's generator."""
        return gaussian_like(p, self.generator)

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "chain": asdict(self.chain)}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        self.chain = type(self.chain)(**extra["chain"])
