"""SVRG and SVRG-LD: variance reduction by snapshots, without a table.

Every ``snapshot_every`` steps, a snapshot ``theta~`` and the full gradient
``mu = grad F(theta~)`` (Johnson & Zhang 2013); then ``d = grad f_B(theta) - grad f_B(theta~)
+ mu``, one extra closure call per step. SVRG-LD (Dubey et al. 2016) is the Langevin version.
See :mod:`backprobe.optim.variance_reduced` for the objective's conventions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from backprobe.optim._base import DirectionStepper, check, evaluate

__all__ = ["SVRG", "SVRGLD", "full_gradient"]


class SVRG(DirectionStepper):
    """SVRG: ``d = grad f_B(theta) - grad f_B(theta~) + grad F(theta~)``, no table.

    Args:
        params: parameters or parameter groups.
        lr: step size.
        full_gradient: called with gradients zeroed; must accumulate ``grad F`` (the mean
            over the data set) into ``.grad``, in batches (see :func:`full_gradient`).
        snapshot_every: steps between snapshots (e.g. the batches per epoch); the first step
            takes one.
        momentum: SGD momentum on the direction.
        nesterov: Nesterov momentum.
        weight_decay: L2 term added to the direction.
        generator: the private generator (``SVRGLD``'s noise): a ``torch.Generator``, an int
            seed, or ``None`` (seeded once from the global RNG).
        seed: deprecated int ``generator``.

    ``step(closure)``: ``closure`` zeroes the gradients, computes the batch loss (mean over
    the batch), calls ``backward`` and returns the loss (or ``(loss, indices)``, the form
    :class:`~backprobe.optim.SAGA` reads; SVRG needs no indices and ignores them); it is
    evaluated at ``theta`` and at the snapshot. Afterwards ``.grad`` holds the gradient at
    ``theta``.
    """

    def __init__(
        self, params: Iterable[Any], lr: float, *, full_gradient: Callable[[], Any],
        snapshot_every: int, momentum: float = 0.0, nesterov: bool = False,
        weight_decay: float = 0.0, generator: torch.Generator | int | None = None,
        seed: int | None = None, extra_defaults: dict[str, Any] | None = None,
    ) -> None:
        if not callable(full_gradient):
            raise TypeError("full_gradient must be a callable that accumulates grad F in .grad")
        check("snapshot_every", snapshot_every, "count")
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, generator=generator, seed=seed,
                         extra_defaults=extra_defaults)
        self.full_gradient = full_gradient
        self.snapshot_every = snapshot_every
        self.steps = 0

    @torch.no_grad()
    def snapshot(self) -> None:
        """Take ``theta~ = theta`` and ``mu = grad F(theta~)`` now."""
        params = self._flat()
        for p in params:
            p.grad = None
        evaluate(self.full_gradient)
        for p in params:
            st = self.state[p]
            st["snapshot"] = p.detach().clone()
            st["full_grad"] = torch.zeros_like(p) if p.grad is None else p.grad.clone()
            p.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """One SVRG step on the batch ``closure`` evaluates; returns its loss at ``theta``."""
        if closure is None:
            raise ValueError("SVRG.step needs a closure (it evaluates the batch twice)")
        if self.steps % self.snapshot_every == 0:
            self.snapshot()
        self.steps += 1
        params = self._flat()
        loss = evaluate(closure)
        if isinstance(loss, tuple) and len(loss) == 2:  # (loss, indices): SAGA's closure form
            loss = loss[0]
        grads = [None if p.grad is None else p.grad.clone() for p in params]
        current = [p.detach().clone() for p in params]
        for p in params:
            p.copy_(self.state[p]["snapshot"])
        evaluate(closure)
        directions = {}
        for p, g, x in zip(params, grads, current):
            p.copy_(x)
            if g is None:
                p.grad = None
                continue
            g_snap = torch.zeros_like(p) if p.grad is None else p.grad
            directions[id(p)] = g - g_snap + self.state[p]["full_grad"]
            p.grad = g
        self._update(directions)
        return loss

    def _extra_state(self) -> dict[str, Any]:
        extra = super()._extra_state()
        extra["steps"] = self.steps
        return extra

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        super()._load_extra_state(extra)
        self.steps = int(extra["steps"])


class SVRGLD(SVRG):
    """SVRG-LD: Langevin dynamics with SVRG's gradient estimate (Dubey et al. 2016).

    ``theta <- theta - lr * N * d + sqrt(2 * lr * temperature) * xi``; arguments as
    :class:`SVRG` plus ``num_examples`` (``N``) and ``temperature``. The closure's loss is
    ``F``'s batch estimate (see :class:`SAGALD`).
    """

    langevin = True

    def __init__(
        self, params: Iterable[Any], lr: float, num_examples: int, *,
        full_gradient: Callable[[], Any], snapshot_every: int, temperature: float = 1.0,
        generator: torch.Generator | int | None = None, seed: int | None = None,
    ) -> None:
        check("num_examples", num_examples, "count")
        super().__init__(params, lr, full_gradient=full_gradient, snapshot_every=snapshot_every,
                         generator=generator, seed=seed,
                         extra_defaults={"temperature": temperature, "num_examples": num_examples})


def full_gradient(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]], num_examples: int,
) -> Callable[[], None]:
    """A ``full_gradient`` callable for :class:`SVRG`: ``grad F`` accumulated batch by batch.

    Args:
        model: the model.
        loss_fn: mean-reduced loss ``loss_fn(output, target)``.
        batches: re-iterable ``(x, y)`` batches covering the data set once (a list or a
            ``DataLoader``).
        num_examples: ``N``; each batch's mean loss is weighted by ``len(x) / N``.
    """

    def run() -> None:
        for x, y in batches:
            (loss_fn(model(x), y) * (len(x) / num_examples)).backward()

    return run
