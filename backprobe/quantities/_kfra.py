"""KFRA: a batch-averaged GGN backpropagated along the chain of recorded layers.

Its factor columns, broadcast over the batch, are pulled back between the recorded layer
outputs' gradient edges with batched vector-Jacobian products (:func:`backprop_columns`),
which gives every example's block Jacobian applied to them; a chain is required and
checked on the autograd graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from backprobe.quantities._sites import CHUNK_ELEMENTS, AffineSite, BoundSite
from backprobe.quantities.kronecker import KFRA
from backprobe.quantities.loss_hessian import loss_hessian_sqrt


def kfra(
    q: KFRA, loss_fn: nn.Module, f: Tensor, target: Tensor, calls: list[tuple[Any, Any]],
    bind: Callable[[Any, list[Any]], BoundSite], store: Callable[[Any, dict[str, Any]], None],
) -> None:
    """Compute and store KFRA's factors for the recorded ``calls`` ``(call, edge)``.

    ``bind(site, calls)`` gives a call's bound site, ``store(site, results)`` stores.

    Raises:
        ValueError: empty batch, a module used twice, not batch-first, too many features,
            or layers that do not form a chain.
    """
    n = int(f.shape[0])
    if n == 0:
        raise ValueError("KFRA: empty batch (its factors average over the examples)")
    names = [c.site.name for c, _ in calls]
    twice = sorted({x for x in names if names.count(x) > 1})
    if twice:
        raise ValueError(
            f"KFRA: modules {twice} are used more than once in the forward pass; KFRA "
            "backpropagates through a chain of distinct layers. Use KFLR or KFAC."
        )
    for c, _ in calls:
        if len(c.out_shape) < 1 or c.out_shape[0] != n:
            raise ValueError(
                f"KFRA: module '{c.site.name}' has output shape {c.out_shape}, not "
                f"batch-first with the model output's batch size {n}"
            )
        _check_features(q, f"the output of module '{c.site.name}' "
                        f"({type(c.site.module).__name__})", c.out_numel // n)
    _check_features(q, "the model output", f[0].numel())
    f_edge = torch.autograd.graph.get_gradient_edge(f)
    _check_chain(f_edge, [(c.site.name, e) for c, e in calls])
    s = loss_hessian_sqrt(loss_fn, f, target).to(f.dtype).flatten(2)  # [M, N, D_f]
    cols = _psd_factor(torch.einsum("mni,mnj->ij", s, s))  # sum_n H_n = cols^T cols
    later, later_shape = f_edge, tuple(f.shape)
    for call, edge in reversed(calls):
        if not (edge.node is later.node and edge.output_nr == later.output_nr):
            cols = _pull_back(cols, later, later_shape, edge, call.out_numel // n, n)
        _store_kfra(q, call, cols, n, bind, store)
        later, later_shape = edge, call.out_shape


def _store_kfra(
    q: KFRA, call: Any, cols: Tensor, n: int, bind: Callable[[Any, list[Any]], BoundSite],
    store: Callable[[Any, dict[str, Any]], None],
) -> None:
    """Factors of ``(1/N) sum_n B_n^T Gbar B_n`` from ``Gbar = cols^T cols``."""
    bound = bind(call.site, [call])
    shape = call.out_shape[1:]
    # Linear/Conv: G is Gbar summed over output positions, independent of the example,
    # so one broadcast "example" carries it (A still averages the whole batch). Other
    # sites contract per example: broadcast over the batch, scaled by 1/sqrt(N).
    reps = 1 if isinstance(bound, AffineSite) else n
    step = max(1, CHUNK_ELEMENTS // max(1, reps * cols.shape[1]))
    acc: dict[str, list[Tensor]] | None = None
    for i in range(0, cols.shape[0], step):
        c = cols[i:i + step].reshape(-1, 1, *shape)
        if reps > 1:
            c = (c / math.sqrt(n)).expand(-1, n, *shape)
        r = bound.kron([c], "KFRA")
        acc = r if acc is None else {k: [acc[k][0] + r[k][0], *acc[k][1:]] for k in acc}
    assert acc is not None
    store(call.site, {q.savefield: acc})


def _check_features(q: KFRA, what: str, d: int) -> None:
    if d > q.max_features:
        raise ValueError(
            f"KFRA: {what} has {d} numbers per example, more than max_features="
            f"{q.max_features}; KFRA backpropagates a dense [{d}, {d}] matrix through it. "
            "Use KFLR or KFAC (or raise KFRA(max_features=...))."
        )


def _reaches(start: Any, target: Any, stop: Any = None) -> bool:
    """Whether autograd node ``target`` is reachable from ``start`` without passing ``stop``."""
    seen: set[int] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        if node is target:
            return True
        if node is stop or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return False


def _check_chain(f_edge: Any, named_edges: list[tuple[str, Any]]) -> None:
    """Raise unless each recorded output reaches the loss only through the next one."""
    later_name, later = "the model output", f_edge
    for name, edge in reversed(named_edges):
        same = edge.node is later.node and edge.output_nr == later.output_nr
        if not same and not _reaches(later.node, edge.node):
            raise ValueError(
                f"KFRA: the output of module '{name}' does not feed {later_name}, so the "
                "recorded layers do not form a chain. Use KFLR or KFAC for this model."
            )
        if later is not f_edge and _reaches(f_edge.node, edge.node, stop=later.node):
            raise ValueError(
                f"KFRA: the output of module '{name}' reaches the loss without passing "
                f"through {later_name} (a residual/skip connection or a parallel branch), so "
                "the recorded layers do not form a chain. Use KFLR or KFAC for this model."
            )
        later_name, later = f"module '{name}'", edge


def _psd_factor(gbar: Tensor) -> Tensor:
    """Columns ``[r, D]`` with ``cols^T cols = gbar`` (eigenvalues below round-off dropped)."""
    gbar = (gbar + gbar.mT) / 2
    evals, evecs = torch.linalg.eigh(gbar)
    tol = evals.abs().max() * gbar.shape[0] * torch.finfo(gbar.dtype).eps
    keep = evals > tol
    if not bool(keep.any()):
        return gbar.new_zeros(1, gbar.shape[0])
    return (evecs[:, keep] * evals[keep].sqrt()).mT


def _pull_back(
    cols: Tensor, later: Any, later_shape: tuple[int, ...], earlier: Any, d_e: int, n: int
) -> Tensor:
    """Factor columns of ``(1/N) sum_n J_n^T cols^T cols J_n`` at the ``earlier`` edge.

    Each column, broadcast over the batch, is fed as the gradient at ``later``; the gradient
    at ``earlier`` then holds ``J_n^T col`` for every example ``n`` (examples independent).
    The ``r N`` resulting columns (scaled by ``1/sqrt(N)``) are kept as they are when there
    are at most ``D_e`` of them, else compressed to ``D_e`` by an eigendecomposition.
    """
    r, d_l = cols.shape
    keep_cols = r * n <= d_e
    parts: list[Tensor] = []
    acc = cols.new_zeros(d_e, d_e) if not keep_cols else None
    step = max(1, CHUNK_ELEMENTS // max(1, n * (d_l + d_e)))
    for i in range(0, r, step):
        c = cols[i:i + step]
        go = c.reshape(c.shape[0], 1, *later_shape[1:]).expand(-1, n, *later_shape[1:])
        (v,) = backprop_columns(later, [earlier], go.contiguous())
        if v is None:  # no path: Jacobian zero
            v = cols.new_zeros(c.shape[0] * n, d_e)
        v = v.reshape(-1, d_e)
        if acc is None:
            parts.append(v / math.sqrt(n))
        else:
            acc += v.mT @ v
    if acc is None:
        return torch.cat(parts)
    return _psd_factor(acc / n)


def backprop_columns(f: Any, edges: list[Any], s: Tensor) -> Sequence[Tensor | None]:
    """Gradients ``[M, *out]`` at each edge for every column ``s[m]`` fed in at ``f``.

    ``f`` is a tensor or a gradient edge (then ``s`` must already have its dtype).
    """
    if isinstance(f, Tensor):
        s = s.to(f.dtype)
    if s.shape[0] > 1:
        try:
            return torch.autograd.grad(
                f, edges, s, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
        except RuntimeError:  # an op without a batching rule (e.g. a custom Function)
            pass
    per_col = [
        torch.autograd.grad(f, edges, s[m], retain_graph=True, allow_unused=True)
        for m in range(s.shape[0])
    ]
    return [None if cs[0] is None else torch.stack(cs) for cs in zip(*per_col)]  # type: ignore[misc]
