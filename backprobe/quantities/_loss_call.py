"""What ``record`` does at a ``loss_fn`` call, and the objective check at backward.

With curvature quantities, ``record`` computes their results when ``loss_fn`` is called
(:func:`loss_curvature`, unscaled) together with the gradients that ``loss_fn``'s output
alone sends to the model output and to each recorded layer output
(:func:`expected_gradients`); both are kept on a :class:`LossCall`. At the end of the
backward, :func:`objective_scale` reads ``c`` from the gradient reaching the loss output and
checks that the gradients which actually reached the model output and the layer outputs are
``c`` times those, so that the results can be stored scaled by ``c``; any other objective (a
second loss term, a penalty on outputs or activations, several ``loss_fn`` calls, a loss
computed without the ``loss_fn`` module) raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from backprobe.quantities._base import CurvatureQuantity
from backprobe.quantities._kfra import backprop_columns, kfra
from backprobe.quantities._sites import CHUNK_ELEMENTS, BoundSite
from backprobe.quantities.hessian import DiagHessian
from backprobe.quantities.kronecker import KFRA
from backprobe.quantities.loss_hessian import loss_hessian_sqrt

if TYPE_CHECKING:
    from backprobe.quantities._record import _Call, _Site


@dataclass(eq=False)
class LossCall:
    """One ``loss_fn`` call: its curvature results and what backward must deliver.

    ``expected``: the gradients ``loss_fn``'s output alone sends to the model output
    (key ``None``) and to each recorded layer output (key: ``id`` of its call in ``calls``),
    ``None`` where it
    sends none; ``results``: ``(quantity, site or params, {name: value})``.
    """

    expected: dict[int | None, Tensor | None] = field(default_factory=dict)
    calls: dict[int, _Call] = field(default_factory=dict)
    results: list[tuple[Any, Any, dict[Any, Any]]] = field(default_factory=list)
    scale: Tensor | None = None
    output_grad: Tensor | None = None


def _tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance when comparing two evaluations of one gradient."""
    return {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 2e-2)


def _proportional(actual: Tensor | None, expected: Tensor | None, c: float) -> bool:
    """Whether ``actual == c * expected`` up to round-off (``None`` meaning zero)."""
    if actual is None and expected is None:
        return True
    if actual is None or expected is None:
        other: Tensor = expected if actual is None else actual  # type: ignore[assignment]
        return other.numel() == 0 or c == 0 and actual is None or bool(other.abs().max() == 0)
    ref = expected.to(actual) * c
    if actual.shape != ref.shape:
        return False
    if actual.numel() == 0:
        return True
    err = torch.linalg.vector_norm((actual - ref).double())
    size = torch.linalg.vector_norm(actual.double()) + torch.linalg.vector_norm(ref.double())
    return bool(err <= _tolerance(actual.dtype) * size + torch.finfo(actual.dtype).tiny)


def expected_gradients(
    output: Tensor, f: Any, calls: list[tuple[_Call, Any]], entry: LossCall
) -> None:
    """Set ``entry.expected``: the gradients ``loss_fn``'s output alone sends.

    Args:
        output: ``loss_fn``'s output (a scalar).
        f: ``loss_fn``'s first argument, the model output.
        calls: the recorded layer calls of this model call with their gradient edges
            (empty without curvature quantities).
        entry: the ``loss_fn`` call; its ``expected`` and ``calls`` are filled in.
    """
    if not (isinstance(f, Tensor) and f.requires_grad):
        return
    (df,) = torch.autograd.grad(output, f, retain_graph=True, allow_unused=True)
    entry.expected[None] = df
    if calls and df is not None:
        cols = backprop_columns(f, [e for _, e in calls], df.unsqueeze(0))
        for (call, _), g in zip(calls, cols):
            entry.expected[id(call)] = None if g is None else g[0]
            entry.calls[id(call)] = call


def objective_scale(
    fired: list[LossCall], arrived: dict[int, tuple[_Call, Tensor]], wanted: str
) -> float | None:
    """``c`` such that this backward's objective is ``c`` times its one ``loss_fn`` call.

    Args:
        fired: the ``loss_fn`` calls this backward went through.
        arrived: the gradients that reached recorded layer outputs, by ``id`` of their call.
        wanted: the requested quantities, for the messages.

    Returns:
        ``c``, or ``None`` when the backward touched neither ``loss_fn`` nor a recorded layer.

    Raises:
        ValueError: where the objective backpropagated is not a multiple of one ``loss_fn``
            call (no ``loss_fn`` call, several, or gradients that are not ``c`` times its own).
    """
    if not fired:
        if arrived:
            raise ValueError(
                f"record: {wanted} need the loss computed by the loss_fn module passed to "
                "record, inside the context, and backward through its output; this "
                "backward reached the model's layers without passing through a loss_fn "
                "call (e.g. F.cross_entropy instead of nn.CrossEntropyLoss, or backward "
                "of another quantity). No curvature was stored."
            )
        return None
    if len(fired) > 1:
        raise ValueError(
            f"record: this backward went through {len(fired)} loss_fn calls; {wanted} "
            "support one loss_fn call per backward (concatenate the batches and call "
            "loss_fn once, or backpropagate each loss in its own backward with "
            "record(..., accumulate=True)). No curvature was stored."
        )
    entry = fired[0]
    if entry.scale is None or entry.scale.numel() != 1:
        raise ValueError(
            f"record: {wanted}: the backward reached the model output but not loss_fn's "
            "output (the objective is not loss_fn(output, target) times a number). "
            "No curvature was stored."
        )
    c = float(entry.scale)
    where = []
    if not _proportional(entry.output_grad, entry.expected.get(None), c):
        where.append("the model output")
    for key, (call, g) in arrived.items():
        if key not in entry.expected or not _proportional(g, entry.expected[key], c):
            where.append(f"module '{call.site.name}'")
    for ident, e in entry.expected.items():
        if ident is not None and ident not in arrived and not _proportional(None, e, c):
            where.append(f"module '{entry.calls[ident].site.name}'")
    if where:
        raise ValueError(
            f"record: {wanted} are the curvature of c * loss_fn(output, target) (c = "
            f"{c:g} here), but the gradient reaching {', '.join(sorted(set(where)))} is "
            "not c times loss_fn's own: the objective has other terms (a second loss "
            "term, a penalty on outputs or activations, or the output used elsewhere). "
            "Record the curvature of loss_fn alone (backpropagate it by itself, or use "
            "torch.func for the whole objective). No curvature was stored."
        )
    return c


def loss_curvature(
    curvature: list[CurvatureQuantity], loss_fn: nn.Module, f: Tensor, target: Tensor,
    calls: list[tuple[_Call, Any]], bind: Callable[[_Site, list[_Call]], BoundSite],
    entry: LossCall,
) -> None:
    """Append the curvature of one ``loss_fn`` call to ``entry.results`` (unscaled).

    Args:
        curvature: the requested curvature quantities.
        loss_fn: the loss module.
        f: its first argument, the model output.
        target: its second argument.
        calls: the recorded layer calls of this model call with their gradient edges.
        bind: binds a site's calls to its layer op (checking the inputs are unchanged).
        entry: the ``loss_fn`` call the results are kept on.

    Raises:
        ValueError: ``DiagHessian`` with a module used more than once.
    """
    calls = list(calls)
    if not calls or not f.requires_grad:
        return
    groups: dict[Any, list[CurvatureQuantity]] = {}
    for q in curvature:
        if isinstance(q, KFRA):
            continue
        key = "exact" if q.mc_samples is None else id(q)
        groups.setdefault(key, []).append(q)
    if any(isinstance(q, DiagHessian) for q in curvature):
        names = [c.site.name for c, _ in calls]
        twice = {n for n in names if names.count(n) > 1}
        if twice:
            raise ValueError(
                f"DiagHessian: modules {sorted(twice)} are used more than once, so the "
                "network is not linear in their parameters; use HutchinsonDiagHessian"
            )
    for qs in groups.values():
        q0 = qs[0]
        s = loss_hessian_sqrt(loss_fn, f, target, q0.mc_samples, q0.generator)
        bounds: dict[int, BoundSite] = {}
        acc: dict[tuple[int, int], tuple[_Site, dict[str, Any]]] = {}
        # Columns in chunks (vmapped backward within a chunk): every quantity is a sum
        # or a stack over columns, so memory stays at about CHUNK_ELEMENTS numbers.
        per_column = max(1, sum(c.out_numel for c, _ in calls))
        step = max(1, min(s.shape[0], CHUNK_ELEMENTS // per_column))
        for m in range(0, s.shape[0], step):
            cols = backprop_columns(f, [e for _, e in calls], s[m:m + step])
            pending = [(c, g) for (c, _), g in zip(calls, cols) if g is not None]
            for site, site_calls, gs in group_by_site(pending):
                bound = bounds.get(id(site))
                if bound is None:
                    bound = bounds[id(site)] = bind(site, site_calls)
                for i, q in enumerate(qs):
                    r = q.compute(bound, gs)  # type: ignore[attr-defined]
                    slot = (i, id(site))
                    if slot in acc:
                        r = q.combine(acc[slot][1], r)  # type: ignore[attr-defined]
                    acc[slot] = (site, r)
        for (i, _), (site, r) in acc.items():
            entry.results.append((qs[i], site.params, r))
    for kq in [q for q in curvature if isinstance(q, KFRA)]:
        def keep(site: _Site, results: dict[str, Any], kq: KFRA = kq) -> None:
            entry.results.append((kq, site.params, results[kq.savefield]))

        kfra(kq, loss_fn, f, target, calls, bind, keep)


def group_by_site(
    pending: list[tuple[_Call, Tensor]],
) -> list[tuple[_Site, list[_Call], list[Tensor]]]:
    """Group (call, gradient) pairs by site, keeping the order sites were first seen."""
    by_site: dict[int, tuple[_Site, list[_Call], list[Tensor]]] = {}
    for call, g in pending:
        entry = by_site.setdefault(id(call.site), (call.site, [], []))
        entry[1].append(call)
        entry[2].append(g)
    return list(by_site.values())
