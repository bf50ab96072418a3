"""SGD preconditioned by curvature or second moments from one backward pass.

Building blocks (optax's split): a *preconditioner* turns a gradient into a direction from
quantities ``record`` stored on the parameter, keeping explicit, typed state (running
averages, cached inverses); :class:`PreconditionedSGD` is the stepping rule

    theta <- theta - lr * (P^{-1} (grad + weight_decay * theta))     (optionally with momentum)

Preconditioners (running averages ``avg <- beta * avg + (1 - beta) * new``, the first step
taking ``new``; constant damping ``lambda``, as in BackPACK's optimizer examples):

* :class:`DiagonalPreconditioner` (``source="diag_ggn_mc"``, ``"diag_ggn_exact"``):
  ``direction = grad / (avg + lambda)``;
  with ``source="sum_grad_squared"`` and ``exponent=0.5`` it is the second-moment
  (RMSprop-like) preconditioner ``grad / (sqrt(avg) + lambda)``.
* :class:`KroneckerPreconditioner` (``source="kfac"`` or ``"kflr"``): for a weight with factors
  ``[G, A]``, ``direction = (G + sqrt(lambda) I)^{-1} grad_mat (A + sqrt(lambda) I)^{-1}``
  with ``grad_mat`` the ``[D_out, D_in]`` view of the gradient; ``[G]`` for biases. The damped
  inverses are recomputed every ``update_every`` steps from the running averages.

Training loop::

    opt = diag_ggn_sgd(model.parameters(), lr=0.1)
    for x, y in batches:
        opt.zero_grad()
        with record(model, *opt.quantities(), loss_fn=loss_fn):
            loss = loss_fn(model(x), y)
            loss.backward()
        opt.step()

``state_dict()``/``load_state_dict()`` round-trip everything, including the Monte-Carlo
quantity's private random generator (``generator=``, as every backprobe optimizer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from backprobe.optim._base import (
    Optimizer,
    add_weight_decay,
    apply_momentum,
    evaluate,
    make_generator,
)
from backprobe.quantities import (
    KFAC,
    KFLR,
    DiagGGNExact,
    DiagGGNMC,
    Quantity,
    SumGradSquared,
)


@dataclass
class DiagonalState:
    """Per-parameter state of :class:`DiagonalPreconditioner`."""

    avg: Tensor | None = None


@dataclass
class KroneckerState:
    """Per-parameter state of :class:`KroneckerPreconditioner`.

    ``factors``: running averages of the Kronecker factors; ``inverses``: their damped
    inverses as of the last refresh.
    """

    factors: list[Tensor] | None = None
    inverses: list[Tensor] | None = None


def _to_dict(state: Any) -> dict[str, Any]:
    return {f.name: getattr(state, f.name) for f in fields(state)}


def _monte_carlo(make: Callable[[int], Quantity], generator: torch.Generator | int | None,
                 seed: int | None, owner: str) -> Quantity:
    """A Monte-Carlo quantity drawing from the generator ``generator``/``seed`` describe."""
    quantity = make(0)
    quantity.generator = make_generator(generator, seed, owner=owner)  # type: ignore[attr-defined]
    return quantity


def _missing(p: Tensor, source: str) -> RuntimeError:
    return RuntimeError(
        f"parameter of shape {tuple(p.shape)} has no '{source}': run the backward pass "
        "inside backprobe.quantities.record(model, *optimizer.quantities(), loss_fn=...)"
    )


class DiagonalPreconditioner:
    """``direction = grad / (avg**exponent + damping)`` from a diagonal quantity.

    Args:
        source: attribute to read: ``"diag_ggn_mc"``, ``"diag_ggn_exact"`` or
            ``"sum_grad_squared"``.
        damping: ``lambda`` added to the (powered) running average.
        beta: running-average coefficient (``0`` uses the current batch only).
        exponent: ``1`` for curvature, ``0.5`` for the second moment.
        mc_samples: Monte-Carlo samples for ``diag_ggn_mc``.
        generator: the MC quantity's generator: a ``torch.Generator``, an int seed, or
            ``None`` (seeded once from the global RNG).
        seed: deprecated int ``generator``.
    """

    state_type = DiagonalState

    def __init__(
        self, source: str = "diag_ggn_mc", damping: float = 1e-3, beta: float = 0.95,
        exponent: float = 1.0, mc_samples: int = 1,
        generator: torch.Generator | int | None = None, seed: int | None = None,
    ) -> None:
        makers: dict[str, Callable[[], Quantity]] = {
            "diag_ggn_mc": lambda: _monte_carlo(lambda s: DiagGGNMC(mc_samples, seed=s),
                                                generator, seed, type(self).__name__),
            "diag_ggn_exact": DiagGGNExact,
            "sum_grad_squared": SumGradSquared,
        }
        if source not in makers:
            raise ValueError(f"source must be one of {sorted(makers)}, got {source!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.source, self.damping, self.beta, self.exponent = source, damping, beta, exponent
        self.quantity = makers[source]()

    def update(self, p: Tensor, state: DiagonalState, step: int) -> None:
        """Fold the quantity on ``p`` into the running average."""
        new = getattr(p, self.source, None)
        if new is None:
            raise _missing(p, self.source)
        new = new.detach()
        if state.avg is None:
            state.avg = new.clone()
        else:
            state.avg.mul_(self.beta).add_(new, alpha=1 - self.beta)

    def direction(self, p: Tensor, state: DiagonalState, grad: Tensor) -> Tensor:
        """``grad / (avg**exponent + damping)``."""
        assert state.avg is not None
        return grad / (state.avg.clamp_min(0).pow(self.exponent) + self.damping)


class KroneckerPreconditioner:
    """Damped Kronecker-factored inverse from ``kfac`` or ``kflr`` factors.

    Args:
        source: ``"kfac"`` (Monte Carlo) or ``"kflr"`` (exact factor).
        damping: ``lambda``; each factor gets ``sqrt(lambda)`` on its diagonal.
        beta: running-average coefficient of the factors.
        update_every: refresh the inverses every this many steps.
        mc_samples: Monte-Carlo samples for ``kfac``.
        generator: the MC quantity's generator, as :class:`DiagonalPreconditioner`.
        seed: deprecated int ``generator``.
    """

    state_type = KroneckerState

    def __init__(
        self, source: str = "kfac", damping: float = 1e-3, beta: float = 0.95,
        update_every: int = 1, mc_samples: int = 1,
        generator: torch.Generator | int | None = None, seed: int | None = None,
    ) -> None:
        if source not in ("kfac", "kflr"):
            raise ValueError(f"source must be 'kfac' or 'kflr', got {source!r}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.source, self.damping, self.beta = source, damping, beta
        self.update_every = update_every
        self.quantity: Quantity = KFLR() if source == "kflr" else _monte_carlo(
            lambda s: KFAC(mc_samples, seed=s), generator, seed, type(self).__name__)

    def update(self, p: Tensor, state: KroneckerState, step: int) -> None:
        """Fold the factors on ``p`` into the running averages; refresh inverses if due."""
        new = getattr(p, self.source, None)
        if new is None:
            raise _missing(p, self.source)
        if state.factors is None:
            state.factors = [f.detach().clone() for f in new]
        else:
            for avg, f in zip(state.factors, new):
                avg.mul_(self.beta).add_(f.detach(), alpha=1 - self.beta)
        if state.inverses is None or step % self.update_every == 0:
            root = math.sqrt(self.damping)
            state.inverses = [
                torch.linalg.inv(f + root * torch.eye(f.shape[0], dtype=f.dtype, device=f.device))
                for f in state.factors
            ]

    def direction(self, p: Tensor, state: KroneckerState, grad: Tensor) -> Tensor:
        """``G^{-1} grad_mat A^{-1}`` (weights) or ``G^{-1} grad`` (one factor)."""
        assert state.inverses is not None
        if len(state.inverses) == 1:
            return (state.inverses[0] @ grad.reshape(-1)).reshape(grad.shape)
        g_inv, a_inv = state.inverses
        return (g_inv @ grad.reshape(grad.shape[0], -1) @ a_inv).reshape(grad.shape)


Preconditioner = DiagonalPreconditioner | KroneckerPreconditioner


class PreconditionedSGD(Optimizer):
    """SGD on a preconditioned gradient (see the module docstring for the update).

    Args:
        params: parameters (or parameter groups).
        lr: step size.
        preconditioner: a :class:`DiagonalPreconditioner` or :class:`KroneckerPreconditioner`.
        momentum: heavy-ball momentum on the preconditioned direction.
        weight_decay: L2 coefficient added to the gradient before preconditioning.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backprobe.quantities import record
        >>> model, loss_fn = nn.Linear(4, 3), nn.CrossEntropyLoss()
        >>> opt = PreconditionedSGD(model.parameters(), 0.1, DiagonalPreconditioner(seed=0))
        >>> with record(model, *opt.quantities(), loss_fn=loss_fn):
        ...     loss_fn(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
        >>> opt.step()
    """

    rules: ClassVar[dict[str, str]] = {
        "lr": "positive", "momentum": "fraction", "weight_decay": "nonnegative"}

    def __init__(
        self, params: Iterable[Any], lr: float, preconditioner: Preconditioner,
        momentum: float = 0.0, weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        # the only randomness is the Monte-Carlo quantity's: its generator is checkpointed
        super().__init__(params, defaults, getattr(preconditioner.quantity, "generator", None))
        self.preconditioner = preconditioner

    def quantities(self) -> list[Quantity]:
        """What to pass to :func:`~backprobe.quantities.record` for the next step."""
        return [self.preconditioner.quantity]

    def typed_state(self, p: Tensor) -> Any:
        """The preconditioner's state of ``p`` as its dataclass (a view of ``self.state``)."""
        raw = self.state[p]
        return self.preconditioner.state_type(
            **{f.name: raw.get(f.name) for f in fields(self.preconditioner.state_type)}
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = evaluate(closure)
        pre = self.preconditioner
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                raw = self.state[p]
                step = int(raw.get("step", 0))
                typed = self.typed_state(p)
                pre.update(p, typed, step)  # type: ignore[arg-type]
                raw.update(_to_dict(typed))
                grad = add_weight_decay(p.grad, p, group["weight_decay"])
                d = pre.direction(p, typed, grad)  # type: ignore[arg-type]
                d = apply_momentum(raw, d, group["momentum"])
                p.add_(d, alpha=-group["lr"])
                raw["step"] = step + 1
        return loss


def diag_ggn_sgd(
    params: Iterable[Any], lr: float, exact: bool = False, damping: float = 1e-3,
    beta: float = 0.95, momentum: float = 0.0, generator: torch.Generator | int | None = None,
    seed: int | None = None,
) -> PreconditionedSGD:
    """SGD preconditioned by the (MC or exact) GGN diagonal (``seed``: deprecated ``generator``)."""
    source = "diag_ggn_exact" if exact else "diag_ggn_mc"
    pre = DiagonalPreconditioner(source, damping=damping, beta=beta, generator=generator,
                                 seed=seed)
    return PreconditionedSGD(params, lr, pre, momentum=momentum)


def kfac_sgd(
    params: Iterable[Any], lr: float, exact: bool = False, damping: float = 1e-3,
    beta: float = 0.95, update_every: int = 1, momentum: float = 0.0,
    generator: torch.Generator | int | None = None, seed: int | None = None,
) -> PreconditionedSGD:
    """SGD preconditioned by KFAC (or KFLR with ``exact=True``; ``seed``: deprecated)."""
    pre = KroneckerPreconditioner(
        "kflr" if exact else "kfac", damping=damping, beta=beta, update_every=update_every,
        generator=generator, seed=seed,
    )
    return PreconditionedSGD(params, lr, pre, momentum=momentum)


def second_moment_sgd(
    params: Iterable[Any], lr: float, damping: float = 1e-8, beta: float = 0.99,
    momentum: float = 0.0,
) -> PreconditionedSGD:
    """SGD preconditioned by the square root of the gradients' second moment (RMSprop-like).

    The second moment is ``sum_n b_n**2`` of the per-example terms (``p.sum_grad_squared``).
    """
    pre = DiagonalPreconditioner("sum_grad_squared", damping=damping, beta=beta, exponent=0.5)
    return PreconditionedSGD(params, lr, pre, momentum=momentum)
