"""Drop-in affine layers whose weight gradient comes from an estimator, one per registered op.

Each is generated from the op registry (:data:`backprobe.layers.OPS`): for a registered
affine module type ``T`` (``nn.Conv2d``, ...), ``backprobe.nn.T`` subclasses it with the
same parameters and ``state_dict`` keys plus an ``estimator=`` keyword; the estimator is a
plain attribute that can be changed at any time (e.g. to anneal ``r``).

A randomized estimator's state (its private generator) is part of the layer's
``state_dict`` under ``<layer>.estimator.<key>`` (e.g. ``0.estimator.generator``), so a
checkpoint of ``model.state_dict()`` and the optimizer resumes a run bit for bit. Loading
a checkpoint without those keys (e.g. a plain torch model's) keeps the estimator's state;
loading a converted model's ``state_dict`` into a plain torch model needs ``strict=False``
(or :func:`backprobe.revert` before ``state_dict()``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from backprobe.estimators._base import Estimator, choose, estimated_affine
from backprobe.estimators.exact import EXACT, Exact
from backprobe.layers import bind, module_types


def plain_autograd() -> bool:
    """Whether a ``torch.func`` transform is active (plain torch ops differentiate there)."""
    return bool(torch._C._are_functorch_transforms_active())


def plain_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of a backprobe module as its torch class (same parameters)."""
    torch_type: type[nn.Module] = next(
        t for t in type(module).__mro__[1:]
        if t.__module__.startswith("torch.nn") and t is not nn.Module
    )
    out: nn.Module = object.__new__(torch_type)
    out.__dict__.update(module.__dict__)
    for attr in ("estimator", "last_path"):
        out.__dict__.pop(attr, None)
    return out


def _check_estimator(estimator: Any) -> Estimator:
    if estimator is None:
        return EXACT
    if not isinstance(estimator, Estimator):
        raise TypeError(
            "estimator must be a backprobe estimator (Exact, Probe, ...), "
            f"got {type(estimator).__name__}"
        )
    return estimator


#: Key infix of the estimator's state in a layer's ``state_dict`` (``0.estimator.generator``).
STATE_INFIX = "estimator."


class EstimatedLayer(nn.Module):
    """Mixin: the forward of a registered layer routed through its estimator.

    Args:
        *args, **kwargs: the torch module's own arguments.
        estimator: forms the weight gradient (default ``Exact``).

    Composability: ``torch.func`` transforms, ``torch.jit.trace``/``script`` and the meta
    device see plain torch ops on the exact path; ``torch.compile`` traces the exact and
    compact paths without graph breaks, while a randomized estimator (``Probe``, ``AOP``)
    breaks the graph once per call (its private ``torch.Generator``); ``torch.func.vmap``
    of a probed layer needs ``randomness="different"`` or ``"same"``.

    Attributes:
        estimator: forms the weight gradient.
        last_path: ``"estimator"``, ``"exact"`` or ``"held"``: what the last training
            forward used (probing falls back to exact for an input where it would keep at
            least as many numbers as the input itself, and, after ``convert``, for the data
            batch its owner holds anyway; see :func:`backprobe.estimators.choose`).
        exact_held_inputs: whether an input without autograd history (the data batch)
            takes the exact path (``convert`` sets it; ``False`` for a layer built directly).
    """

    estimator: Estimator
    last_path: str | None
    exact_held_inputs: bool = False

    def __init__(self, *args: Any, estimator: Estimator | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.estimator = _check_estimator(estimator)
        self.last_path = None
        self.estimator.attach(self)

    def forward(self, x: Tensor, output_size: Any = None) -> Tensor:
        """The layer's forward (``output_size``: transposed convolutions, as in torch)."""
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__}: expected a floating-point input, got {x.dtype}"
            )
        x, op = bind(self, x)
        if output_size is not None:
            op = op.with_output_size(self, x, output_size)
        weight: Tensor = self.weight  # type: ignore[assignment]
        bias: Tensor | None = self.bias  # type: ignore[assignment]
        if not (torch.is_grad_enabled() and weight.requires_grad) or x.is_meta:
            return op.forward(x, weight, bias)
        exact = isinstance(self.estimator, Exact)
        if torch.jit.is_tracing():
            if not exact:
                raise TypeError(
                    f"{type(self).__name__}: torch.jit.trace records no custom backward, so "
                    f"a traced graph cannot keep {self.estimator!r}'s weight gradient. Trace "
                    "under torch.no_grad() (inference), or backprobe.revert(model) first."
                )
            return op.forward(x, weight, bias)
        if exact and plain_autograd():  # torch.func: the same exact gradients, plain ops
            return op.forward(x, weight, bias)
        est, self.last_path = choose(self.estimator, op, x, self)
        return estimated_affine(x, weight, bias, op, est)

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, value in self.estimator.state_dict().items():
            destination[prefix + STATE_INFIX + key] = value

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        own = self.estimator.state_dict()
        head = prefix + STATE_INFIX
        incoming = {
            k[len(head):]: state_dict.pop(k) for k in list(state_dict)
            if k.startswith(head) and k[len(head):] in own
        }  # keys this estimator does not hold stay, and strict loading reports them
        if incoming:
            try:
                self.estimator.load_state_dict({**own, **incoming})
            except (RuntimeError, TypeError, ValueError, KeyError) as err:
                error_msgs.append(f"{head[:-1]}: cannot load the estimator's state: {err}")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __prepare_scriptable__(self) -> nn.Module:
        """For ``torch.jit.script``: the plain torch layer under :class:`Exact`, else raise.

        Raises:
            TypeError: for a non-exact estimator (TorchScript cannot call it).
        """
        if not isinstance(self.estimator, Exact):
            raise TypeError(
                f"{type(self).__name__}: torch.jit.script cannot compile {self.estimator!r} "
                "(Python estimators and autograd Functions). Use torch.compile, or "
                "backprobe.revert(model) for an exact scripted model."
            )
        return plain_copy(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, estimator={self.estimator!r}"


def dropin(torch_type: type[nn.Module]) -> type[EstimatedLayer]:
    """The drop-in class for a registered affine module type (named after it)."""
    name = torch_type.__name__
    return type(name, (EstimatedLayer, torch_type), {
        "__module__": "backprobe.nn",
        "__qualname__": name,
        "__doc__": f"``nn.{name}`` with ``estimator=`` (see :class:`backprobe.Probe`).",
    })


#: torch type -> drop-in type, for every registered affine op (derived, never edited).
AFFINE_SWAPS: dict[type[nn.Module], type[EstimatedLayer]] = {
    t: dropin(t) for t in module_types("affine")
}
