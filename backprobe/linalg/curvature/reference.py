"""Slow dense references of the curvature matrices by ``torch.func`` (test oracles).

Each forms the full ``[P, P]`` matrix from per-batch Jacobians/Hessians, so use it on small
models only (in float64 for tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev

from backprobe.linalg.curvature._base import batches_of
from backprobe.linalg.curvature.fisher import output_gradients, reduction_factor


def _setup(model: nn.Module, params: Sequence[nn.Parameter] | None) -> tuple[list[str], Tensor]:
    named = {id(p): n for n, p in model.named_parameters()}
    plist = list(model.parameters()) if params is None else list(params)
    names = [named[id(p)] for p in plist]
    flat = torch.cat([p.detach().reshape(-1) for p in plist])
    return names, flat


def _unflatten(model: nn.Module, names: list[str], flat: Tensor) -> dict[str, Tensor]:
    shapes = dict(model.named_parameters())
    out, i = {}, 0
    for n in names:
        size = shapes[n].numel()
        out[n] = flat[i:i + size].reshape(shapes[n].shape)
        i += size
    return out


def dense_curvature(
    kind: str, model: nn.Module, loss_fn: nn.Module, data: Any,
    params: Sequence[nn.Parameter] | None = None,
) -> Tensor:
    """The dense ``"hessian"``, ``"ggn"`` or ``"ef"`` matrix over ``data``.

    Args:
        kind: which matrix.
        model: the network.
        loss_fn: loss module (reduction ``"mean"`` or ``"sum"``).
        data: one batch or a list of batches.
        params: parameter subset.

    Returns:
        ``[P, P]``.
    """
    names, flat = _setup(model, params)
    batches = list(batches_of(data))
    total = sum(len(y) for _, y in batches)
    out = torch.zeros(flat.numel(), flat.numel(), dtype=flat.dtype)
    for x, y in batches:
        w = len(y) / total if loss_fn.reduction == "mean" else 1.0

        def f(theta: Tensor, x: Any = x) -> Tensor:
            return functional_call(model, _unflatten(model, names, theta), (x,))

        if kind == "hessian":
            mat = hessian(lambda t, y=y, f=f: loss_fn(f(t), y))(flat)
        else:
            out_val = f(flat)
            jac = jacrev(f)(flat).reshape(out_val.numel(), -1)  # [O, P]
            if kind == "ggn":
                h = hessian(lambda o, y=y, s=out_val.shape: loss_fn(o.reshape(s), y))(
                    out_val.reshape(-1).detach())
                mat = jac.T @ h @ jac
            elif kind == "ef":
                g = output_gradients(loss_fn, out_val, y).reshape(len(y), -1)
                jn = jac.reshape(len(y), -1, flat.numel())
                per = torch.einsum("no,nop->np", g, jn)
                mat = reduction_factor(loss_fn, out_val) * per.T @ per
            else:
                raise ValueError(f"kind must be 'hessian', 'ggn' or 'ef', got {kind!r}")
        out += w * mat
    return out
