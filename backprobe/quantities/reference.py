"""Slow, obviously-correct ``torch.func`` references for every quantity (float64 oracles).

They differentiate the whole model functionally (``vmap``/``grad``, ``jacrev``, ``hessian``)
and know nothing about layers or hooks; tests and users check ``record`` against them.
Parameters are flattened in ``model.named_parameters()`` order (trainable ones only);
:func:`param_slices` gives each parameter's range.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}


def param_slices(model: nn.Module) -> dict[str, slice]:
    """Range of each trainable parameter in the flattened parameter vector."""
    out, start = {}, 0
    for k, p in _params(model).items():
        out[k] = slice(start, start + p.numel())
        start += p.numel()
    return out


def reduction_scale(loss_fn: nn.Module, output: Tensor, target: Tensor) -> float:
    """``L / sum_n l_n``: 1 for ``sum``, ``1/N`` (CrossEntropy, non-ignored) or ``1/numel``."""
    if loss_fn.reduction == "sum":
        return 1.0
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if target.is_floating_point():
            return 1.0 / output.shape[0]
        return 1.0 / float((target != loss_fn.ignore_index).sum())
    return 1.0 / output.numel()


def _summed(loss_fn: nn.Module) -> nn.Module:
    f = copy.copy(loss_fn)
    setattr(f, "reduction", "sum")  # noqa: B010 - a torch loss attribute
    return f


def reference_batch_grad(
    model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """Per-example gradient terms ``b_n`` (``{name: [N, *shape]}``), loss-reduction scaled."""
    params, buffers = _params(model), dict(model.named_buffers())
    scale = reduction_scale(loss_fn, model(x), y)
    loss_sum = _summed(loss_fn)

    def f(p: dict[str, Tensor], xn: Tensor, yn: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (xn.unsqueeze(0),))
        return loss_sum(out, yn.unsqueeze(0)) * scale

    return vmap(grad(f), in_dims=(None, 0, 0))(params, x, y)


def _flat_fn(model: nn.Module, x: Tensor):  # noqa: ANN202
    params, buffers = _params(model), dict(model.named_buffers())
    names = list(params)
    shapes = [params[k].shape for k in names]
    theta = torch.cat([params[k].flatten() for k in names])

    def out_fn(t: Tensor) -> Tensor:
        ps, start = {}, 0
        for k, s in zip(names, shapes):
            n = s.numel()
            ps[k] = t[start:start + n].reshape(s)
            start += n
        return functional_call(model, (ps, buffers), (x,))

    return theta, out_fn


def reference_ggn(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The full GGN ``J^T (d^2 L / d f^2) J`` as a ``[P, P]`` matrix."""
    theta, out_fn = _flat_fn(model, x)
    out = out_fn(theta)
    jac = jacrev(out_fn)(theta).reshape(out.numel(), -1)
    h = hessian(lambda f: loss_fn(f, y))(out.detach()).reshape(out.numel(), out.numel())
    return jac.T @ h @ jac


def reference_per_example_ggn(
    model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor
) -> Tensor:
    """Per-example GGN terms ``[N, P, P]`` (``sum_n`` gives :func:`reference_ggn`)."""
    theta, out_fn = _flat_fn(model, x)
    out = out_fn(theta)
    n = out.shape[0]
    jac = jacrev(out_fn)(theta).reshape(n, -1, theta.numel())
    h = hessian(lambda f: loss_fn(f, y))(out.detach()).reshape(n, out[0].numel(), n, -1)
    hn = torch.stack([h[i, :, i] for i in range(n)])
    return torch.einsum("nap,nab,nbq->npq", jac, hn, jac)


def reference_hessian(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The loss Hessian with respect to all trainable parameters, ``[P, P]``."""
    theta, out_fn = _flat_fn(model, x)
    return hessian(lambda t: loss_fn(out_fn(t), y))(theta)


def split(vector: Tensor, model: nn.Module) -> dict[str, Tensor]:
    """Cut a flat ``[..., P]`` tensor into ``{name: [..., *shape]}``."""
    params = _params(model)
    out = {}
    for k, sl in param_slices(model).items():
        out[k] = vector[..., sl].reshape(*vector.shape[:-1], *params[k].shape)
    return out
