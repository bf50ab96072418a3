"""The estimator interface and the one autograd Function that serves every layer.

An estimator is a pair: ``pack`` (what forward keeps for the weight gradient) and
``weight_grad`` (what backward forms from it). Input and bias gradients are always exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from backprobe._random import SEED_HIGH, private_generator
from backprobe.layers import AffineOp, module_types


class Estimator:
    """Base class: decides what forward keeps and how backward forms the weight gradient.

    Subclasses implement ``pack``, ``weight_grad`` and ``saved_numbers``, and may narrow
    ``natural_layers`` (module types ``convert`` swaps by default; all registered affine
    layers unless an estimator says otherwise).
    """

    natural_layers: tuple[type[nn.Module], ...] = module_types("affine")
    #: Whether the weight gradient is the exact one (then it may be differentiated again).
    exact: bool = False
    #: Whether the estimator exists only to keep less memory (so where the layer's input is
    #: held by its owner anyway, the exact path costs nothing extra; see :func:`choose`).
    saves_memory: bool = False

    def pack(self, op: AffineOp, x: Tensor) -> tuple[tuple[Tensor, ...], Any]:
        """Return the tensors to save for the weight gradient and non-tensor metadata."""
        raise NotImplementedError

    def weight_grad(self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor) -> Tensor:
        """Form the weight gradient (in the weight's layout) from what ``pack`` kept."""
        raise NotImplementedError

    def saved_numbers(self, op: AffineOp, x: Tensor) -> int:
        """How many numbers ``pack`` keeps for input ``x`` (the memory cost, in elements)."""
        raise NotImplementedError

    def worthwhile(self, op: AffineOp, x: Tensor) -> bool:
        """Whether to use this estimator for input ``x`` rather than the exact path.

        Default ``True``; memory estimators say ``False`` where they would keep at least as
        many numbers as the input itself.
        """
        return True

    def backward(
        self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor, weight: Tensor,
        input_shape: tuple[int, ...], mask: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """All three gradients; input and bias exact, weight from ``weight_grad``."""
        gi, _, gb = op.backward(None, g, weight, input_shape, (mask[0], False, mask[2]))
        gw = self.weight_grad(op, saved, meta, g) if mask[1] else None
        return gi, gw, gb

    def for_module(self, module: nn.Module) -> Estimator:
        """The estimator to use for one call of ``module`` (default: ``self``).

        Estimators with per-layer state (e.g. memory buffers registered on the module)
        return an object bound to ``module`` here.
        """
        return self

    def attach(self, module: nn.Module) -> nn.Module:
        """Called when ``module`` starts using this estimator (e.g. to register buffers)."""
        return module

    def detach(self, module: nn.Module) -> nn.Module:
        """Called when ``module`` stops using this estimator (undo ``attach``)."""
        return module

    def state_dict(self) -> dict[str, Any]:
        """Estimator state (e.g. RNG) for checkpoints; empty for stateless estimators."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class RandomEstimator(Estimator):
    """An estimator owning a private ``torch.Generator``, its state in ``state_dict``.

    Seeded once at construction from the global RNG (or ``seed``), so ``torch.manual_seed``
    before building a model makes a run reproducible, and the global RNG is never used after.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._generator = private_generator(seed)

    def next_seed(self) -> int:
        """An integer seed drawn from the private generator."""
        return int(torch.randint(0, SEED_HIGH, (), generator=self._generator).item())

    def state_dict(self) -> dict[str, Any]:
        """The private generator's state."""
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the private generator's state."""
        self._generator.set_state(state["generator"])


def choose(
    estimator: Estimator, op: AffineOp, x: Tensor, module: nn.Module | None = None
) -> tuple[Estimator, str]:
    """The estimator to use for one call: ``estimator`` or the exact path, and why.

    The one place that decides. The exact path is taken

    * ``"exact"``: where the estimator would keep at least as many numbers as the input
      for ``x`` (``worthwhile`` is false);
    * ``"held"``: where ``module`` was converted with ``exact_held_inputs=True`` (the
      default of :func:`backprobe.convert`), the estimator only saves memory
      (``saves_memory``) and ``x`` has no autograd history and requires no gradient (the
      data batch: its owner, the training loop, holds it through the step anyway, so
      keeping it for the exact weight gradient costs no extra memory).

    Args:
        estimator: the layer's estimator.
        op: the layer's op.
        x: the layer input as the op sees it.
        module: the layer, to bind estimators with per-layer state (``for_module``).

    Returns:
        ``(chosen, path)``: the estimator to use and ``"estimator"``, ``"exact"`` or
        ``"held"``.
    """
    if (estimator.saves_memory and module is not None
            and getattr(module, "exact_held_inputs", False) and not x.requires_grad):
        path = "held"
    elif not estimator.worthwhile(op, x):
        path = "exact"
    else:
        return (estimator if module is None else estimator.for_module(module)), "estimator"
    from backprobe.estimators.exact import EXACT

    return EXACT, path


class EstimatedAffineFn(torch.autograd.Function):
    """``y = op(x, W, b)`` whose backward asks an estimator for the weight gradient.

    Written in the ``forward``/``setup_context`` form with a generated vmap rule, so
    ``torch.func`` transforms apply. Backward is differentiable where it is exact (input and
    bias gradients, and the weight gradient of :class:`Exact`): double backward (e.g. an
    input-gradient penalty) works. A weight gradient formed from a sketch is not a function
    of the input autograd can differentiate; differentiating it raises a ``RuntimeError``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # noqa: D102
        x: Tensor, weight: Tensor, bias: Tensor | None, op: AffineOp, estimator: Estimator,
    ) -> Tensor:
        return op.forward(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:  # noqa: D102
        x, weight, _, op, estimator = inputs
        ctx.op, ctx.estimator, ctx.input_shape = op, estimator, tuple(x.shape)
        saved: tuple[Tensor, ...] = ()
        ctx.meta = None
        ctx.replay = None
        # (a tensor with autograd history always requires grad; dynamo traces neither
        # grad_fn nor version counters, so under torch.compile there is no replay)
        if (estimator.exact and not x.requires_grad and not torch.compiler.is_compiling()
                and x.dim() >= 1 and output.dim() >= 1 and output.shape[0] == x.shape[0]):
            ctx.replay = _Replay(op, x, weight, inputs[2])
        if ctx.needs_input_grad[1]:
            with torch.no_grad():
                saved, ctx.meta = estimator.pack(op, x)
        ctx.save_for_backward(weight, *saved)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        weight, *saved = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        gi, gw, gb = ctx.estimator.backward(
            ctx.op, tuple(saved), ctx.meta, g, weight, ctx.input_shape, mask
        )
        if gw is not None:
            gw = gw.to(weight.dtype)
            if torch.is_grad_enabled() and not ctx.estimator.exact:
                gw = _FirstOrderOnly.apply(gw, repr(ctx.estimator))
        return gi, gw, gb, None, None


class _Replay:
    """Recomputes rows of an affine layer's output from an input its owner holds anyway."""

    def __init__(self, op: AffineOp, x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
        self.op, self.x, self.weight, self.bias = op, x, weight, bias
        self.versions = [t._version for t in (x, weight, bias) if t is not None]

    def __call__(self, start: int, stop: int, *, differentiable: bool = False) -> Tensor:
        """Rows ``start:stop`` of the output.

        With ``differentiable`` (and grad mode on) the result carries autograd history in
        the weight and bias, for double backward; otherwise it is computed under ``no_grad``.
        """
        if [t._version for t in (self.x, self.weight, self.bias) if t is not None
                ] != self.versions:
            raise RuntimeError(
                "backprobe: the input or parameters of a layer were modified in place between "
                "forward and backward, so its output cannot be recomputed for the next "
                "layer's backward (as autograd would refuse a modified saved tensor)"
            )
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            return self.op.forward(self.x[start:stop], self.weight, self.bias)


def replay_source(t: Tensor) -> Any:
    """A recipe recomputing ``t``, or ``None``; ``recipe(a, b)`` is ``t[a:b]`` (batch rows).

    Offered when ``t`` is the unmodified output of a backprobe affine layer that took the
    exact path on an input without autograd history (the data batch, held by its owner
    through the step): a following layer, e.g. BatchNorm, may then keep nothing of ``t`` and
    recompute it in backward. The recipe raises ``RuntimeError`` if the input, weight or
    bias was modified in place since.
    """
    node = t.grad_fn
    return getattr(node, "replay", None) if node is not None else None


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on an estimated weight gradient whose own backward raises (double backward)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gw: Tensor, name: str) -> Tensor:  # noqa: D102
        return gw.view_as(gw)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:  # noqa: D102
        ctx.name = inputs[1]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, None]:  # noqa: D102
        raise RuntimeError(
            f"backprobe: cannot differentiate the weight gradient formed by {ctx.name}: it is "
            "an estimate from a sketch of the layer input kept in forward, not a function of "
            "the input autograd could differentiate again. Double backward through input and "
            "bias gradients works; for second derivatives in the weights use "
            "backprobe.set_estimator(model, backprobe.Exact())."
        )


def estimated_affine(
    x: Tensor, weight: Tensor, bias: Tensor | None, op: AffineOp, estimator: Estimator
) -> Tensor:
    """Apply ``op`` with ``estimator`` forming the weight gradient."""
    return EstimatedAffineFn.apply(x, weight, bias, op, estimator)
