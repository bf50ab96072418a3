"""The Metropolis-adjusted Langevin algorithm (Roberts & Tweedie, 1996): an exact sampler.

See :mod:`backprobe.optim.langevin` for the potential ``U`` and the randomness conventions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from backprobe.optim._base import evaluate
from backprobe.optim._chain import ChainState, Closure, LangevinSampler

__all__ = ["MALA", "MALAState"]


@dataclass
class MALAState(ChainState):
    """Chain-level state of :class:`MALA`.

    Attributes:
        step: Number of proposals made (one per :meth:`MALA.step`).
        accepted: Number of accepted proposals.
        potential: ``U`` at the current point, cached with the gradients (``None`` before the
            first step or after :meth:`MALA.reset`).
    """

    accepted: int = 0
    potential: float | None = None

    @property
    def accept_rate(self) -> float:
        """Running acceptance rate ``accepted / step`` (``nan`` before the first step)."""
        return self.accepted / self.step if self.step else math.nan


class MALA(LangevinSampler):
    r"""Metropolis-adjusted Langevin algorithm: an exact sampler of ``exp(-U)``.

    From the current ``theta`` (with ``U(theta)`` and its gradient cached), propose::

        theta' = theta - h * grad U(theta) + sqrt(2 h) * xi,     xi ~ N(0, I)

    so ``q(theta' | theta) = N(theta - h grad U(theta), 2 h I)``, evaluate ``U(theta')`` and
    its gradient with one closure call, and accept with probability

        min(1, exp(-U(theta') + U(theta) + log q(theta | theta') - log q(theta' | theta))),
        log q(x' | x) = -|x' - x + h grad U(x)|^2 / (4 h) + const,

    using the sampler's generator for the uniform draw too. After a rejection the parameters
    and their ``.grad`` are restored. One Metropolis decision covers all parameters together;
    parameter groups may have different step sizes ``h`` (a constant diagonal
    preconditioner), each entering ``q`` with its own ``h``. Parameters whose gradient is
    ``None`` after the closure do not move. The chain leaves ``exp(-U)`` exactly invariant,
    whatever ``h``; ``h`` trades acceptance against move length (aim for an acceptance rate
    around 0.5-0.7; Roberts & Rosenthal, 1998).

    The cached ``U`` and gradients assume only this sampler moves the parameters; after
    changing them by hand call :meth:`reset` (the next step then spends one extra closure call
    to re-evaluate the current point, as the first step does).

    Args:
        params: Parameters or parameter groups.
        lr: Step size ``h > 0``.
        generator: A ``torch.Generator``, an int seed, or ``None`` for a private generator
            seeded once from the global RNG.

    Raises:
        ValueError: ``lr <= 0``.
        TypeError: A non-numeric ``lr`` or a bad ``generator``.

    Example:
        >>> import torch
        >>> theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> opt = MALA([theta], lr=0.5, generator=0)
        >>> def closure():
        ...     opt.zero_grad()
        ...     u = 0.5 * theta.pow(2).sum()
        ...     u.backward()
        ...     return u
        >>> for _ in range(100):
        ...     u = opt.step(closure)
        >>> 0 < opt.accept_rate < 1
        True
    """

    chain: MALAState

    def __init__(
        self, params: Iterable[Any], lr: float, *,
        generator: torch.Generator | int | None = None,
    ) -> None:
        self.chain = MALAState()
        super().__init__(params, {"lr": lr}, generator)

    @property
    def accept_rate(self) -> float:
        """Running acceptance rate (``nan`` before the first step)."""
        return self.chain.accept_rate

    @property
    def accepted(self) -> int:
        """Number of accepted proposals so far."""
        return self.chain.accepted

    def reset(self) -> None:
        """Forget the cached potential and gradients (after moving the parameters by hand)."""
        self.chain.potential = None
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p].pop("grad", None)

    def _evaluate(self, closure: Closure) -> float:
        u = evaluate(closure)
        if not isinstance(u, Tensor) or u.numel() != 1:
            raise TypeError(
                "MALA's closure must return U as a one-element tensor, got "
                f"{type(u).__name__}"
            )
        return float(u.detach())

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """One Metropolis-adjusted Langevin step.

        Args:
            closure: Zeroes the gradients, computes the full potential ``U(theta)`` (negative
                log posterior), calls ``backward`` on it and returns it. Called once per step
                (twice on the first step, to evaluate the starting point).

        Returns:
            ``U`` at the new current point (the proposal's if accepted, else the old one), a
            0-dim float64 tensor.

        Raises:
            ValueError: No closure was given.
            RuntimeError: The closure left a gradient ``None`` at the proposal that was set at
                the current point.
        """
        if closure is None:
            raise ValueError(
                "MALA.step needs a closure that zeroes the gradients, computes the full "
                "potential U (negative log posterior), calls U.backward() and returns U"
            )
        chain = self.chain
        params = [(p, g["lr"]) for g in self.param_groups for p in g["params"]]
        if chain.potential is None or any("grad" not in self.state[p] for p, _ in params):
            chain.potential = self._evaluate(closure)
            for p, _ in params:
                self.state[p]["grad"] = None if p.grad is None else p.grad.detach().clone()
        u0 = chain.potential

        # Proposal theta' = theta - h g + sqrt(2h) xi;
        # log q(theta'|theta) = -|theta' - theta + h g|^2 / (4h)  (= -|xi|^2 / 2 up to rounding).
        moving, log_q_fwd = [], 0.0
        for p, h in params:
            g = self.state[p]["grad"]
            if g is None:
                continue
            old = p.detach().clone()
            p.add_(g, alpha=-h).add_(self._noise(p), alpha=math.sqrt(2.0 * h))
            diff = (p - old).add_(g, alpha=h).double()
            log_q_fwd -= float(diff.pow(2).sum()) / (4.0 * h)
            moving.append((p, h, old))
        u1 = self._evaluate(closure)

        # log q(theta|theta') = -|theta - theta' + h grad U(theta')|^2 / (4h).
        log_q_bwd = 0.0
        for p, h, old in moving:
            if p.grad is None:
                raise RuntimeError(
                    f"MALA: the closure left the gradient of a parameter of shape "
                    f"{tuple(p.shape)} None at the proposal; U must depend on every "
                    "parameter it depended on at the current point"
                )
            diff = (old - p).add_(p.grad, alpha=h).double()
            log_q_bwd -= float(diff.pow(2).sum()) / (4.0 * h)
        log_alpha = -u1 + u0 + log_q_bwd - log_q_fwd
        uniform = float(
            torch.rand((), generator=self.generator, dtype=torch.float64,
                       device=self.generator.device)
        )
        accept = math.isfinite(u1) and math.log(uniform) < log_alpha

        chain.step += 1
        if accept:
            chain.accepted += 1
            chain.potential = u1
            for p, _, _ in moving:
                assert p.grad is not None
                self.state[p]["grad"] = p.grad.detach().clone()
        else:
            for p, _, old in moving:
                p.copy_(old)
                cached = self.state[p]["grad"]
                assert p.grad is not None
                p.grad.copy_(cached)
        return torch.tensor(chain.potential, dtype=torch.float64)
