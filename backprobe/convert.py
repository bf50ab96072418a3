"""Swap a model's layers for estimated / compact ones in place, and back.

Conversion changes each module's class in place (``module.__class__``), so parameters,
buffers, hooks and optimizer references are untouched and ``state_dict`` keys stay torch's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from backprobe.estimators._base import Estimator
from backprobe.layers import bind
from backprobe.nn import AFFINE_SWAPS, COMPACT_SWAPS, EstimatedLayer

_UNDO: dict[type[nn.Module], type[nn.Module]] = {
    new: old for old, new in {**AFFINE_SWAPS, **COMPACT_SWAPS}.items()
}


@dataclass
class LayerEntry:
    """One row of a conversion report."""

    name: str
    kind: str
    action: str  # "converted", "compact", "skipped", "exact (fallback)", "exact (held input)"
    reason: str = ""
    exact_numbers: int | None = None
    estimator_numbers: int | None = None


@dataclass
class ConversionReport:
    """What ``convert`` did to each candidate module; ``print(report)`` shows a table."""

    estimator: str
    entries: list[LayerEntry] = field(default_factory=list)

    @property
    def converted(self) -> list[str]:
        return [e.name for e in self.entries if e.action in ("converted", "compact")]

    @property
    def skipped(self) -> list[str]:
        return [e.name for e in self.entries if e.action not in ("converted", "compact")]

    def __str__(self) -> str:
        rows = [("layer", "type", "action", "kept numbers (exact -> est.)", "why")]
        for e in self.entries:
            nums = "" if e.exact_numbers is None else f"{e.exact_numbers} -> {e.estimator_numbers}"
            rows.append((e.name or "<model>", e.kind, e.action, nums, e.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"convert with {self.estimator}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)


def convert(
    model: nn.Module,
    estimator: Estimator,
    *,
    layers: tuple[type[nn.Module], ...] | None = None,
    skip_first: bool = False,
    compact_activations: bool = True,
    exact_held_inputs: bool = True,
    example_input: Tensor | None = None,
) -> nn.Module:
    """Make ``estimator`` form the weight gradients of a model's layers, in place.

    Args:
        model: any module; matching submodules (and the model itself) are converted.
        estimator: e.g. ``Probe(16)``; one instance may serve every layer.
        layers: torch module types to convert; default ``estimator.natural_layers``
            (convolutions for ``Probe``). Only exact type matches are converted: a
            user subclass is skipped and reported, since its forward may differ.
        skip_first: keep the first matching layer exact (a common choice for the input layer).
        compact_activations: also swap ``nn.ReLU``/``LeakyReLU`` (1-bit masks),
            ``nn.MaxPool1d/2d/3d`` (int8 window offsets) and ``nn.BatchNorm1d/2d/3d``
            (backward without a second activation-sized block; after a layer on the data
            batch it recomputes its input instead of keeping it). Functional ``F.relu``
            inside a user's ``forward`` cannot be swapped and keeps its full activation.
        exact_held_inputs: a converted layer whose input has no autograd history and needs
            no gradient (the data batch, e.g. the first convolution) keeps the exact path
            when the estimator only saves memory (``Probe``): the training loop holds that
            batch through the step anyway, so keeping it costs no extra memory and the
            weight gradient is exact for free. ``False`` probes such layers too. Layers
            built directly (``backprobe.nn.Conv2d(..., estimator=...)``) always estimate.
            Caveat: the output of a frozen part of the model (parameters with
            ``requires_grad=False``, or computed under ``no_grad``) has no history either,
            but nobody else holds it; when fine-tuning behind a frozen backbone pass
            ``exact_held_inputs=False`` to probe the first trainable layer (the report made
            with ``example_input`` shows such layers as ``"exact (held input)"``).
        example_input: if given, one forward decides and reports per layer whether the
            estimator keeps fewer numbers than the exact path (it falls back to exact where
            it would not, e.g. probing a 4x4 feature map with 16 probes).

    Converting a converted model again is defined: the layers it selects get the new
    estimator (the old one is detached from them first, e.g. AOP's memory buffers are
    removed), layers it does not select keep theirs, ``skip_first`` turns a converted
    first layer back into its torch module, and the report is replaced.

    Returns:
        The same ``model``; ``backprobe.report(model)`` returns a :class:`ConversionReport`.

    Raises:
        TypeError: if ``estimator`` is not an estimator, or a flag is not a bool.
        ValueError: if ``layers`` names a module type no layer description supports, or if
            no layer would be converted (e.g. ``Probe`` on an MLP: its default layers are
            the convolutions, and the message says to pass ``layers=(nn.Linear,)``); the
            model is then left unchanged.

    Example:
        >>> model = backprobe.convert(model, backprobe.Probe(16), example_input=x)
        >>> print(backprobe.report(model))
    """
    if not isinstance(estimator, Estimator):
        raise TypeError(f"convert: estimator must be an Estimator, got {type(estimator).__name__}")
    for flag, value in (("skip_first", skip_first), ("compact_activations", compact_activations),
                        ("exact_held_inputs", exact_held_inputs)):
        if not isinstance(value, bool):
            raise TypeError(f"convert: {flag} must be True or False, got {value!r}")
    layers_arg = layers
    layers = tuple(estimator.natural_layers if layers is None else layers)
    for t in layers:
        if t not in AFFINE_SWAPS:
            names = ", ".join(k.__name__ for k in AFFINE_SWAPS)
            raise ValueError(
                f"convert: {getattr(t, '__name__', t)} is not supported (supported: {names})"
            )
    report = ConversionReport(repr(estimator))
    plan: list[tuple[nn.Module, type[nn.Module], str]] = []  # (module, new class, action)
    first_seen = False
    missed: set[str] = set()

    def add(name: str, kind: type, action: str, reason: str = "") -> None:
        report.entries.append(LayerEntry(name, kind.__name__, action, reason))

    for name, module in model.named_modules():
        torch_type = _UNDO.get(type(module), type(module))
        if torch_type in AFFINE_SWAPS and issubclass(torch_type, layers):
            if not first_seen and skip_first:
                first_seen = True
                add(name, torch_type, "skipped", "skip_first")
                if torch_type is not type(module):  # converted before: back to plain
                    plan.append((module, torch_type, "revert"))
                continue
            first_seen = True
            plan.append((module, AFFINE_SWAPS[torch_type], "converted"))
            add(name, torch_type, "converted")
        elif compact_activations and torch_type in COMPACT_SWAPS:
            if getattr(module, "return_indices", False):
                add(name, torch_type, "skipped", "return_indices=True")
                continue
            plan.append((module, COMPACT_SWAPS[torch_type], "compact"))
            add(name, torch_type, "compact")
        elif isinstance(module, layers) or isinstance(module, tuple(COMPACT_SWAPS)):
            add(name, type(module), "skipped", "subclass of a torch type")
        elif torch_type in AFFINE_SWAPS:
            missed.add(torch_type.__name__)
    if not any(action == "converted" for _, _, action in plan) and not (
        skip_first and first_seen
    ):
        wanted = ", ".join(t.__name__ for t in layers)
        hint = (
            f" The model's {', '.join(sorted(missed))} layers are not among them: pass "
            f"layers=({', '.join(f'nn.{m}' for m in sorted(missed))},) to convert them."
            if missed else " The model has no layer of a supported type."
        )
        raise ValueError(
            f"convert: no layer of the model was converted: {estimator!r} converts "
            f"({wanted}) {'by default' if layers_arg is None else 'as asked'}.{hint}"
        )
    for module, new_type, action in plan:
        if action == "compact":
            module.__class__ = new_type
            continue
        if isinstance(module, EstimatedLayer):  # converted before: the old estimator leaves
            module.estimator.detach(module)
        if action == "revert":
            _revert_module(module)
            continue
        module.__class__ = new_type
        module.estimator = estimator  # type: ignore[assignment]
        module.last_path = None  # type: ignore[assignment]
        module.exact_held_inputs = exact_held_inputs  # type: ignore[assignment]
        estimator.attach(module)
    model._backprobe_report = report  # type: ignore[assignment]
    if example_input is not None:
        _decide(model, example_input, report)
    return model


def _decide(model: nn.Module, x: Tensor, report: ConversionReport) -> None:
    """Run one forward and record, per converted layer, which path it takes and its cost."""
    shapes: dict[str, Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, EstimatedLayer):
            handles.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: shapes.__setitem__(name, inp[0].detach())
            ))
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    for e in report.entries:
        if e.name not in shapes:
            continue
        m = modules[e.name]
        xin, op = bind(m, shapes[e.name])
        est = m.estimator  # type: ignore[union-attr]
        e.exact_numbers = xin.numel()
        e.estimator_numbers = est.saved_numbers(op, xin)
        if m.last_path == "exact":
            e.action = "exact (fallback)"
            e.reason = "estimator would keep at least as many numbers as the input"
        elif m.last_path == "held":
            e.action = "exact (held input)"
            e.reason = "its input is the batch the caller holds anyway: exact costs nothing"


def report(model: nn.Module) -> ConversionReport:
    """The report of the last ``convert`` of ``model``.

    Raises:
        ValueError: if the model was never converted.
    """
    rep = getattr(model, "_backprobe_report", None)
    if rep is None:
        raise ValueError("report: this model was not converted with backprobe.convert")
    return rep


def set_estimator(model: nn.Module, estimator: Estimator) -> nn.Module:
    """Give every converted layer of ``model`` a new estimator (e.g. to anneal ``r``).

    Raises:
        TypeError: if ``estimator`` is not an estimator.
        ValueError: if ``model`` has no converted layer (call :func:`convert` first).
    """
    if not isinstance(estimator, Estimator):
        raise TypeError(f"set_estimator: expected an Estimator, got {type(estimator).__name__}")
    if not any(isinstance(m, EstimatedLayer) for m in model.modules()):
        raise ValueError(
            "set_estimator: the model has no converted layer; call backprobe.convert(model, "
            "estimator) first"
        )
    for m in model.modules():
        if isinstance(m, EstimatedLayer) and m.estimator is not estimator:
            m.estimator.detach(m)
            m.estimator = estimator
            estimator.attach(m)
    return model


def _revert_module(m: nn.Module) -> None:
    """``m`` back to its torch class (its estimator already detached)."""
    m.__class__ = _UNDO[type(m)]
    for attr in ("estimator", "last_path", "exact_held_inputs"):
        m.__dict__.pop(attr, None)


def revert(model: nn.Module) -> nn.Module:
    """Turn every backprobe module of ``model`` back into its plain torch module, in place.

    Raises:
        ValueError: if ``model`` holds no backprobe module (it was never converted).
    """
    found = [m for m in model.modules() if type(m) in _UNDO]
    if not found:
        raise ValueError(
            "revert: the model holds no backprobe module (was it converted with "
            "backprobe.convert?)"
        )
    for m in found:
        if isinstance(m, EstimatedLayer):
            m.estimator.detach(m)
        _revert_module(m)
    model.__dict__.pop("_backprobe_report", None)
    return model
