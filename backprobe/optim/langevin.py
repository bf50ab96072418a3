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
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from backprobe.optim._base import evaluate
from backprobe.optim._chain import ChainState, Closure, LangevinSampler, minibatch_potential
from backprobe.optim.mala import MALA, MALAState

__all__ = ["MALA", "SGLD", "ChainState", "MALAState", "UnderdampedLangevin", "minibatch_potential"]


class SGLD(LangevinSampler):
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
        loss = evaluate(closure)
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


class UnderdampedLangevin(LangevinSampler):
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
        loss = evaluate(closure)
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
