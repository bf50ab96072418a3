r"""Langevin samplers in ``torch.optim`` style, each with its own random generator.

The target is a density ``pi(theta) ∝ exp(-U(theta) / T)`` on all parameters together, with
``U`` the *potential*: the negative log posterior ``U = -sum_i log p(y_i | x_i, theta) -
log p(theta)`` (summed, not averaged, over the ``N`` training examples) and ``T`` a
temperature (``T = 1``: the posterior). Three samplers:

* :class:`SGLD`: unadjusted Langevin / stochastic gradient Langevin dynamics
  (Welling & Teh, 2011)::

      theta <- theta - lr * grad U(theta) + sqrt(2 * lr * T) * xi,      xi ~ N(0, I)

  with ``grad U`` exact or an unbiased mini-batch estimate. Biased by ``O(lr)``: for
  ``U = 1/2 (theta - m)^T A (theta - m)`` the chain's stationary law is
  ``N(m, T (A - lr A^2 / 2)^{-1})`` (for ``lr < 2 / lambda_max(A)``), not ``N(m, T A^{-1})``.
* :class:`MALA`: the Metropolis-adjusted Langevin algorithm (Roberts & Tweedie, 1996): the
  ``SGLD`` move (``T = 1``) as a proposal, accepted or rejected so that the chain leaves
  ``exp(-U)`` exactly invariant. Needs the full ``U`` (no mini-batches).
* :class:`UnderdampedLangevin`: kinetic Langevin dynamics with a velocity per parameter,
  discretised with the BAOAB splitting (Leimkuhler & Matthews, 2013).

**Mini-batch scaling.** ``U`` is a *sum* over the ``N`` training examples. With a mini-batch
``B`` of ``|B|`` examples, the unbiased estimate is

    U_hat(theta) = (N / |B|) * sum_{i in B} f_i(theta) + prior(theta),
    f_i = -log p(y_i | x_i, theta),   prior = -log p(theta),

which :func:`minibatch_potential` forms from per-example losses (``reduction="none"``).
Alternatively give :class:`SGLD` ``num_examples=N`` and back-propagate the *per-example
average* ``U_hat / N = mean_{i in B} f_i + prior / N`` (e.g. ``F.cross_entropy`` with its
default mean reduction plus ``prior / N``); the sampler then multiplies the gradient by ``N``.
A mean-reduced loss without ``num_examples`` samples the posterior of a data set ``N`` times
smaller (a tempered posterior), a common silent mistake.

**Randomness.** Every sampler owns a ``torch.Generator`` (``generator=``: a generator, used
as is, or an int seed); by default a private one seeded once, at construction, from the
global RNG, so ``torch.manual_seed`` before construction makes a run reproducible and
stepping never touches the global RNG. ``state_dict()`` / ``load_state_dict()`` carry the
generator's state, the chain's counters (:class:`ChainState`, :class:`MALAState`) and
per-parameter state (velocities, cached gradients) under ``"backprobe"``: a restored chain
continues exactly as the original would.

References:
    Welling, M. & Teh, Y. W. (2011). Bayesian learning via stochastic gradient Langevin
    dynamics. ICML.
    Roberts, G. O. & Tweedie, R. L. (1996). Exponential convergence of Langevin distributions
    and their discrete approximations. Bernoulli 2(4).
    Leimkuhler, B. & Matthews, C. (2013). Rational construction of stochastic numerical
    methods for molecular sampling. Applied Mathematics Research eXpress 2013(1).

Example:
    >>> import torch
    >>> from backprobe.optim.langevin import SGLD
    >>> theta = torch.zeros(2, requires_grad=True)
    >>> opt = SGLD([theta], lr=0.1, generator=0)
    >>> samples = []
    >>> for _ in range(200):
    ...     opt.zero_grad()
    ...     (0.5 * theta.pow(2).sum()).backward()   # U = |theta|^2 / 2: target N(0, I)
    ...     opt.step()
    ...     samples.append(theta.detach().clone())
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from backprobe.optim._base import Optimizer, check, gaussian_like, make_generator

__all__ = ["MALA", "SGLD", "ChainState", "MALAState", "UnderdampedLangevin", "minibatch_potential"]

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


class _Langevin(Optimizer):
    """Shared machinery: the generator, the chain's counters in the state round-trip."""

    rules: ClassVar[dict[str, str]] = {"lr": "positive"}
    chain: ChainState

    def __init__(
        self, params: Iterable[Any], defaults: dict[str, Any],
        generator: torch.Generator | int | None,
    ) -> None:
        super().__init__(params, defaults, make_generator(generator, owner=type(self).__name__))

    def _noise(self, p: Tensor) -> Tensor:
        """Standard normal noise shaped like ``p``, from the sampler's generator."""
        assert self.generator is not None
        return gaussian_like(p, self.generator)

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "chain": asdict(self.chain)}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        self.chain = type(self.chain)(**extra["chain"])


class SGLD(_Langevin):
    r"""Stochastic gradient Langevin dynamics (the unadjusted Langevin algorithm).

    For every parameter with a gradient ``g = p.grad`` (of ``U`` or of an unbiased mini-batch
    estimate ``U_hat``; see the module docstring for the scaling)::

        theta <- theta - lr * s * g + sqrt(2 * lr * T) * xi,     xi ~ N(0, I)

    with ``s = num_examples`` if given (``p.grad`` then being the gradient of ``U_hat / N``),
    else ``s = 1``. ``lr``, ``temperature`` and ``num_examples`` are per parameter group and
    ``lr`` is read from ``param_groups`` at every step, so ``torch.optim.lr_scheduler`` gives
    step-size schedules (Welling & Teh's decreasing ``lr_t`` makes the chain consistent).

    With a constant ``lr`` the chain targets ``exp(-U / T)`` only up to an ``O(lr)`` bias
    (plus the mini-batch noise's ``O(lr)`` bias); for a Gaussian
    ``U = 1/2 (theta - m)^T A (theta - m)`` and exact gradients the stationary law is
    ``N(m, T (A - lr A^2 / 2)^{-1})``, from solving ``C = (I - lr A) C (I - lr A) + 2 lr T I``.
    ``temperature=0`` is gradient descent (no noise is drawn).

    Args:
        params: Parameters or parameter groups.
        lr: Step size ``lr > 0``.
        num_examples: ``N``, if ``p.grad`` is the gradient of the per-example average
            ``U_hat / N``; ``None`` if it is the gradient of ``U_hat`` itself.
        temperature: ``T >= 0``; the chain targets ``exp(-U / T)``.
        generator: A ``torch.Generator``, an int seed, or ``None`` for a private generator
            seeded once from the global RNG.

    Raises:
        ValueError: ``lr <= 0``, ``temperature < 0``, ``num_examples < 1`` (or not finite).
        TypeError: Non-numeric hyper-parameters or a bad ``generator``.

    Example:
        >>> import torch
        >>> theta = torch.zeros(3, requires_grad=True)
        >>> opt = SGLD([theta], lr=0.01, generator=0)
        >>> for _ in range(10):
        ...     opt.zero_grad()
        ...     (0.5 * theta.pow(2).sum()).backward()
        ...     opt.step()
        >>> opt.chain.step
        10
    """

    rules: ClassVar[dict[str, str]] = {
        "lr": "positive", "temperature": "nonnegative", "num_examples": "count"}

    def __init__(
        self, params: Iterable[Any], lr: float, *, num_examples: int | None = None,
        temperature: float = 1.0, generator: torch.Generator | int | None = None,
    ) -> None:
        self.chain = ChainState()
        defaults = {"lr": lr, "num_examples": num_examples, "temperature": temperature}
        super().__init__(params, defaults, generator)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor | None:  # type: ignore[override]
        """One Langevin step of every parameter that has a gradient.

        Args:
            closure: Optional; re-evaluates the loss (zeroing grads and calling backward).

        Returns:
            The closure's loss, or ``None`` without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, temp = group["lr"], group["temperature"]
            scale = group["num_examples"] or 1
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.add_(p.grad, alpha=-lr * scale)
                if temp > 0:
                    p.add_(self._noise(p), alpha=math.sqrt(2.0 * lr * temp))
        self.chain.step += 1
        return loss


class MALA(_Langevin):
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
        with torch.enable_grad():
            u = closure()
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


class UnderdampedLangevin(_Langevin):
    r"""Underdamped (kinetic) Langevin dynamics, discretised with BAOAB.

    The SDE, with a velocity ``v`` per parameter, friction ``gamma``, mass ``m`` and
    temperature ``T``::

        d theta = v dt,    dv = -grad U(theta) / m dt - gamma v dt + sqrt(2 gamma T / m) dW,

    has the stationary density ``∝ exp(-U(theta) / T) * exp(-m |v|^2 / (2 T))``: ``theta``
    follows the target and ``v ~ N(0, T / m)`` independently. One step of size ``h = lr`` is the
    BAOAB splitting (Leimkuhler & Matthews, 2013)::

        B: v <- v - (h / 2) grad U(theta) / m
        A: theta <- theta + (h / 2) v
        O: v <- c v + sqrt((1 - c^2) T / m) xi,   c = exp(-gamma h),  xi ~ N(0, I)
        A: theta <- theta + (h / 2) v
        B: v <- v - (h / 2) grad U(theta) / m

    The last B needs the gradient at the new point, which is also what the next step's first
    B needs; so each :meth:`step` applies the previous step's last half-kick together with its
    own first one, from the same ``p.grad``: one gradient per step, and the ``theta`` sequence
    is exactly BAOAB's. Consequently ``state[p]["velocity"]`` is BAOAB's velocity *before* the
    final half-kick ``-(h / 2) grad U(theta) / m`` (``state[p]["pending_kick"]`` holds the
    ``h / 2`` still owed). Velocities start from ``N(0, T / m)`` drawn with the sampler's
    generator. BAOAB's configurational averages have ``O(h^2)`` bias in general, and for a
    Gaussian target its ``theta``-marginal is exact for every stable ``h``
    (``h^2 lambda_max(A) / m < 4``).

    ``lr``, ``friction``, ``mass``, ``temperature`` are per parameter group; ``lr`` is read
    at every step (schedules work). As with :class:`SGLD`, a mini-batch gradient must be that of
    ``U_hat = (N / B) sum f_i + prior`` (see the module docstring).

    Args:
        params: Parameters or parameter groups.
        lr: Time step ``h > 0``.
        friction: ``gamma > 0``. Small: nearly Hamiltonian, long but rarely randomised
            moves; large: diffusive, overdamped-like, slow. For a Gaussian target a ``gamma``
            of the order of ``sqrt(lambda_min(A) / m)`` mixes well.
        mass: ``m > 0``.
        temperature: ``T >= 0`` (``0``: damped deterministic dynamics, no noise is drawn).
        generator: A ``torch.Generator``, an int seed, or ``None`` for a private generator
            seeded once from the global RNG.

    Raises:
        ValueError: A hyper-parameter out of range.
        TypeError: Non-numeric hyper-parameters or a bad ``generator``.

    Example:
        >>> import torch
        >>> theta = torch.zeros(2, requires_grad=True)
        >>> opt = UnderdampedLangevin([theta], lr=0.2, friction=1.0, generator=0)
        >>> for _ in range(10):
        ...     opt.zero_grad()
        ...     (0.5 * theta.pow(2).sum()).backward()
        ...     opt.step()
        >>> opt.state[theta]["velocity"].shape
        torch.Size([2])
    """

    rules: ClassVar[dict[str, str]] = {
        "lr": "positive", "friction": "positive", "mass": "positive", "temperature": "nonnegative"}

    def __init__(
        self, params: Iterable[Any], lr: float, *, friction: float = 1.0, mass: float = 1.0,
        temperature: float = 1.0, generator: torch.Generator | int | None = None,
    ) -> None:
        self.chain = ChainState()
        defaults = {"lr": lr, "friction": friction, "mass": mass, "temperature": temperature}
        super().__init__(params, defaults, generator)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor | None:  # type: ignore[override]
        """One BAOAB step of every parameter that has a gradient.

        Args:
            closure: Optional; re-evaluates the loss at the current point (zeroing grads and
                calling backward) before the step.

        Returns:
            The closure's loss, or ``None`` without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            h, gamma, m, temp = group["lr"], group["friction"], group["mass"], group["temperature"]
            c = math.exp(-gamma * h)
            noise_std = math.sqrt((1.0 - c * c) * temp / m)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    v0 = self._noise(p) if temp > 0 else torch.zeros_like(p)
                    state["velocity"] = v0.mul_(math.sqrt(temp / m))
                    state["pending_kick"] = 0.0
                v = state["velocity"]
                v.add_(p.grad, alpha=-(state["pending_kick"] + h / 2) / m)  # (last) B + B
                p.add_(v, alpha=h / 2)  # A
                v.mul_(c)  # O
                if noise_std > 0:
                    v.add_(self._noise(p), alpha=noise_std)
                p.add_(v, alpha=h / 2)  # A
                state["pending_kick"] = h / 2
        self.chain.step += 1
        return loss
