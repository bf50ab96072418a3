"""What every backprobe optimizer shares: checks, randomness, update pieces, state round-trip.

* :func:`check`: the one argument validator (a rule per hyper-parameter).
* :func:`make_generator`: the one randomness convention, ``generator=`` (a ``torch.Generator``
  used as is, an int seed, or ``None`` for a private generator seeded once from the global
  RNG); ``seed=`` is still accepted, with a ``DeprecationWarning``.
* :func:`gaussian_like`, :func:`apply_momentum`, :func:`add_weight_decay`: Langevin noise,
  ``torch.optim.SGD``'s momentum rule and L2 weight decay, written once.
* :class:`Optimizer`: a ``torch.optim.Optimizer`` that checks every parameter group against
  its :attr:`~Optimizer.rules` and round-trips its extra state (the generator, chain
  counters, tables) under the ``"backprobe"`` key of ``state_dict()``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from backprobe._random import private_generator

__all__ = ["DirectionStepper", "Optimizer", "add_weight_decay", "apply_momentum", "check",
           "gaussian_like", "make_generator"]

_RULES = {
    "positive": ("> 0", lambda v: v > 0),
    "nonnegative": (">= 0", lambda v: v >= 0),
    "fraction": ("in [0, 1)", lambda v: 0 <= v < 1),
}


def check(name: str, value: Any, rule: str) -> None:
    """Check one hyper-parameter against a rule.

    Args:
        name: the argument's name, for the message.
        value: its value.
        rule: ``"positive"``, ``"nonnegative"``, ``"fraction"`` (a finite real number
            ``> 0``, ``>= 0``, in ``[0, 1)``) or ``"count"`` (an int ``>= 1``).

    Raises:
        TypeError: ``value`` is not a real number (a bool is not one), or not an int for
            ``"count"``.
        ValueError: ``value`` breaks the rule.
    """
    if rule == "count":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    what, ok = _RULES[rule]
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be a finite number {what}, got {value}")


def make_generator(generator: torch.Generator | int | None, seed: int | None = None, *,
                   owner: str = "optimizer") -> torch.Generator:
    """The generator an optimizer draws from.

    Args:
        generator: a ``torch.Generator`` (used as is), an int seed, or ``None`` (a private
            generator seeded once from the global RNG, so ``torch.manual_seed`` before
            construction makes a run reproducible).
        seed: deprecated spelling of an int ``generator``.
        owner: the class name, for messages.

    Returns:
        The generator.

    Raises:
        TypeError: ``generator`` is none of the above.
        ValueError: both ``generator`` and ``seed`` are given.
    """
    if seed is not None:
        warnings.warn(f"{owner}(seed=...) is deprecated; pass generator= (an int seed or a "
                      "torch.Generator)", DeprecationWarning, stacklevel=3)
        if generator is not None:
            raise ValueError(f"{owner}: pass generator= or seed=, not both")
        generator = seed
    if generator is None or (isinstance(generator, int) and not isinstance(generator, bool)):
        return private_generator(generator)
    if isinstance(generator, torch.Generator):
        return generator
    raise TypeError(f"{owner}: generator must be a torch.Generator, an int seed or None, got "
                    f"{type(generator).__name__}")


def gaussian_like(p: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like ``p`` (drawn on the generator's device, moved to p's)."""
    xi = torch.randn(p.shape, generator=generator, dtype=p.dtype, device=generator.device)
    return xi.to(p.device)


def apply_momentum(state: dict[str, Any], d: Tensor, momentum: float,
                   nesterov: bool = False) -> Tensor:
    """``torch.optim.SGD``'s momentum (dampening 0) applied to the direction ``d``.

    ``buf <- momentum * buf + d`` (``buf = d`` at first), then ``d + momentum * buf`` with
    Nesterov, else ``buf``. The buffer lives in ``state["momentum_buffer"]``.

    Args:
        state: the parameter's optimizer state.
        d: the direction.
        momentum: the coefficient; ``0`` returns ``d`` unchanged.
        nesterov: Nesterov momentum.

    Returns:
        The direction to step along.
    """
    if not momentum:
        return d
    buf = state.get("momentum_buffer")
    if buf is None:
        buf = state["momentum_buffer"] = d.clone()
    else:
        buf.mul_(momentum).add_(d)
    return d + momentum * buf if nesterov else buf


def add_weight_decay(d: Tensor, p: Tensor, weight_decay: float) -> Tensor:
    """``d + weight_decay * p`` (L2 regularisation's gradient); ``d`` itself when 0."""
    return d.add(p, alpha=weight_decay) if weight_decay else d


class Optimizer(torch.optim.Optimizer):
    """Base of backprobe's optimizers: checked parameter groups, one state round-trip.

    Subclasses list their hyper-parameters' rules in :attr:`rules` (checked for every
    parameter group; ``None`` values are skipped) and extend :meth:`_extra_state` /
    :meth:`_load_extra_state` with what ``torch.optim`` does not keep.

    Args:
        params: parameters or parameter groups.
        defaults: the groups' default hyper-parameters.
        generator: the optimizer's random generator, or ``None`` if it draws nothing.
    """

    rules: ClassVar[dict[str, str]] = {}

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any],
                 generator: torch.Generator | None = None) -> None:
        self.generator = generator
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group after checking its hyper-parameters."""
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    def _check_group(self, group: dict[str, Any]) -> None:
        for key, rule in self.rules.items():
            if group.get(key) is not None:
                check(key, group[key], rule)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s state plus backprobe's extras under ``"backprobe"``."""
        sd = super().state_dict()
        sd["backprobe"] = self._extra_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the generator's state included).

        Raises:
            ValueError: ``state_dict`` lacks the ``"backprobe"`` entry (it comes from
                another optimizer).
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop("backprobe", None)
        if extra is None:
            raise ValueError(f"not a {type(self).__name__} state dict: it lacks the 'backprobe' "
                             "entry that state_dict() writes")
        super().load_state_dict(state_dict)
        self._load_extra_state(extra)

    def _extra_state(self) -> dict[str, Any]:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        if self.generator is not None and "generator" in extra:
            self.generator.set_state(extra["generator"])


class DirectionStepper(Optimizer):
    """``theta <- theta - lr * v`` along given directions, with SGD's momentum and weight decay.

    ``v`` is the direction ``d`` (plus ``weight_decay * theta``) through
    :func:`apply_momentum`. With ``langevin = True`` the step is Langevin dynamics on
    ``U = N * F`` instead: ``theta <- theta - lr * N * v + sqrt(2 * lr * T) * xi`` with the
    group's ``num_examples`` ``N`` and ``temperature`` ``T`` (Dubey et al. 2016).

    Args:
        params: parameters or parameter groups.
        lr: step size ``>= 0``.
        momentum: in ``[0, 1)``.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: ``>= 0``.
        generator: as :func:`make_generator`.
        seed: deprecated int ``generator``.
        extra_defaults: further group defaults (``num_examples``, ``temperature``).
    """

    langevin = False
    generator: torch.Generator
    rules: ClassVar[dict[str, str]] = {
        "lr": "nonnegative", "momentum": "fraction", "weight_decay": "nonnegative",
        "temperature": "nonnegative", "num_examples": "count"}

    def __init__(
        self, params: Iterable[Any], *, lr: float, momentum: float, nesterov: bool,
        weight_decay: float, generator: torch.Generator | int | None, seed: int | None,
        extra_defaults: dict[str, Any] | None,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                    "weight_decay": weight_decay, **(extra_defaults or {})}
        gen = make_generator(generator, seed, owner=type(self).__name__)
        super().__init__(params, defaults, gen)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        if group.get("nesterov") and group.get("momentum", 0) <= 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def _flat(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _update(self, directions: dict[int, Tensor]) -> None:
        """Step every parameter ``p`` with a direction ``directions[id(p)]``."""
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                d = directions.get(id(p))
                if d is None:
                    continue
                d = add_weight_decay(d, p, group["weight_decay"])
                d = apply_momentum(self.state[p], d, group["momentum"], group["nesterov"])
                if self.langevin:
                    p.add_(d, alpha=-lr * group["num_examples"])
                    p.add_(gaussian_like(p, self.generator),
                           alpha=math.sqrt(2 * lr * group["temperature"]))
                else:
                    p.add_(d, alpha=-lr)


def evaluate(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` under grad mode (optimizer steps run under ``no_grad``); ``None`` without."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
