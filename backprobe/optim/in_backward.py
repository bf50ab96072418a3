"""The optimizer step inside backward: each gradient is used and freed as soon as it exists.

A plain training step holds every weight gradient at once at the end of backward (as many
bytes as the weights), on top of the activation gradients still alive. Stepping each
parameter from a ``Tensor.register_post_accumulate_grad_hook`` as soon as its gradient is
accumulated, then dropping the gradient, bounds the weight-gradient memory by the largest
single parameter's gradient instead of the sum of all of them.

The steps are the plain optimizer's exactly for optimizers whose update of a parameter
depends only on that parameter's own gradient and state (SGD with or without momentum and
weight decay, Adam, AdamW, RMSprop, Adagrad, ...): each parameter gets its own optimizer
instance built with the same hyper-parameters. Not possible this way: anything that needs
all gradients before stepping (global gradient-norm clipping, LBFGS, closures, gradient
accumulation over several backward passes, optimizers coupling parameters such as
backprobe's variance-reduced ones).

Reference: the PyTorch tutorial "How to save memory by fusing the optimizer step into the
backward pass" (Jane Xu), which introduced ``register_post_accumulate_grad_hook`` for this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["InBackwardOptimizer", "step_in_backward"]


class InBackwardOptimizer:
    """Per-parameter optimizers stepped from post-accumulate-grad hooks (see module doc).

    ``step()`` and ``zero_grad()`` exist so training loops written for a plain optimizer run
    unchanged; they do nothing, since each parameter stepped during ``backward()`` and its
    ``.grad`` is already ``None`` afterwards.

    Args:
        params: the parameters (those with ``requires_grad``).
        optimizer_cls: a ``torch.optim.Optimizer`` class, e.g. ``torch.optim.SGD``.
        **kwargs: its hyper-parameters (``lr=``, ``momentum=``, ...), shared by all.

    Attributes:
        optimizers: parameter -> its own optimizer instance.
        lr_schedulable: the per-parameter optimizers, to drive with one scheduler each.

    Raises:
        TypeError: if ``optimizer_cls`` is not an optimizer class.
        ValueError: if there are no trainable parameters, or a parameter is not a leaf.
    """

    def __init__(self, params: Iterable[Tensor], optimizer_cls: type[torch.optim.Optimizer],
                 **kwargs: Any) -> None:
        if not (isinstance(optimizer_cls, type)
                and issubclass(optimizer_cls, torch.optim.Optimizer)):
            raise TypeError(
                "step_in_backward: optimizer_cls must be a torch.optim.Optimizer class, "
                f"got {optimizer_cls!r}"
            )
        if optimizer_cls is torch.optim.LBFGS:
            raise TypeError("step_in_backward: LBFGS needs a closure over all parameters")
        plist = [p for p in params if p.requires_grad]
        if not plist:
            raise ValueError("step_in_backward: no parameter requires a gradient")
        self.optimizers: dict[Tensor, torch.optim.Optimizer] = {}
        self._handles: list[Any] = []
        for p in plist:
            if not p.is_leaf:
                raise ValueError("step_in_backward: every parameter must be a leaf tensor")
            if p in self.optimizers:
                continue
            self.optimizers[p] = optimizer_cls([p], **kwargs)
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook))

    def _hook(self, p: Tensor) -> None:
        opt = self.optimizers[p]
        opt.step()
        opt.zero_grad(set_to_none=True)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """All per-parameter groups (e.g. to set ``lr`` on every one at once)."""
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        """Nothing to do (the parameters stepped during backward).

        Raises:
            ValueError: if a ``closure`` is given (not supported).
        """
        if closure is not None:
            raise ValueError("InBackwardOptimizer.step: closures are not supported")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop any gradient left (none after a normal backward)."""
        for p in self.optimizers:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        """The per-parameter optimizers' states, in parameter order."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (same parameters, same order).

        Raises:
            ValueError: if the number of optimizers differs.
        """
        states = state["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError(
                f"InBackwardOptimizer.load_state_dict: {len(states)} states for "
                f"{len(self.optimizers)} parameters"
            )
        for opt, s in zip(self.optimizers.values(), states, strict=True):
            opt.load_state_dict(s)

    def remove(self) -> None:
        """Unregister the hooks (the parameters go back to plain gradient accumulation)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def step_in_backward(model: nn.Module | Iterable[Tensor],
                     optimizer_cls: type[torch.optim.Optimizer],
                     **kwargs: Any) -> InBackwardOptimizer:
    """Make ``optimizer_cls(**kwargs)`` step each parameter during backward.

    Args:
        model: a module (its parameters) or an iterable of parameters.
        optimizer_cls: e.g. ``torch.optim.SGD`` or ``torch.optim.Adam``.
        **kwargs: the optimizer's hyper-parameters.

    Returns:
        An :class:`InBackwardOptimizer`; ``loss.backward()`` alone now trains.

    Raises:
        TypeError: if ``optimizer_cls`` is not a usable optimizer class.
        ValueError: if there are no trainable parameters.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = step_in_backward(model, torch.optim.SGD, lr=0.1, momentum=0.9)
        >>> model(torch.randn(8, 4)).square().sum().backward()  # stepped; grads are None
        >>> model.weight.grad is None
        True
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    return InBackwardOptimizer(params, optimizer_cls, **kwargs)
