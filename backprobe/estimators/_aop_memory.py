"""AOP's per-layer state: memory buffers on the module, their reset, loading and binding.

The buffers live on the layer (``aop_memory_x``, ``aop_memory_g``: row memory;
``aop_memory_w``: error feedback), so they are in ``state_dict`` and follow ``.to()``.
Their widths come from the layer's op (``d_in``, ``d_out``), never from its weight layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from backprobe.estimators._base import Estimator
from backprobe.layers import AffineOp, op_for

if TYPE_CHECKING:
    from backprobe.estimators.aop import AOP

#: Names of the module buffers AOP registers (row memory and weight-shaped memory).
BUFFER_X = "aop_memory_x"
BUFFER_G = "aop_memory_g"
BUFFER_W = "aop_memory_w"
BUFFERS = (BUFFER_X, BUFFER_G, BUFFER_W)
_HOOK_FLAG = "_aop_load_hook"

LearningRate = float | Callable[[], float] | torch.optim.Optimizer | None


def _empty_like(name: str, buf: Tensor) -> Tensor:
    """An emptied buffer: zero rows of row memory, zeros of the weight-shaped memory."""
    return torch.zeros_like(buf) if name == BUFFER_W else buf.new_zeros(0, buf.shape[1])


def reset_memory(model: nn.Module) -> nn.Module:
    """Empty the AOP memory of every layer of ``model`` (row memory to 0 rows, error to 0).

    Call it e.g. when the data distribution changes or between independent runs.

    Returns:
        ``model``.
    """
    for m in model.modules():
        for name in BUFFERS:
            buf = m._buffers.get(name)
            if buf is not None:
                m._buffers[name] = _empty_like(name, buf)
    return model


def remove_memory(model: nn.Module) -> nn.Module:
    """Delete AOP's buffers from every layer of ``model`` (e.g. before ``backprobe.revert``).

    Returns:
        ``model``.
    """
    for m in model.modules():
        for name in BUFFERS:
            m._buffers.pop(name, None)
            m._non_persistent_buffers_set.discard(name)
    return model


def _load_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """Let row memory of any number of rows load; a checkpoint without memory empties it."""
    for name in BUFFERS:
        buf = module._buffers.get(name)
        if buf is None:
            continue
        key = prefix + name
        if key not in state_dict:  # e.g. a checkpoint of the plain torch model
            state_dict[key] = _empty_like(name, buf)
        incoming = state_dict[key]
        if name != BUFFER_W and isinstance(incoming, Tensor) and incoming.shape != buf.shape:
            module._buffers[name] = buf.new_zeros(incoming.shape)


def register_buffers(module: nn.Module, memory: bool | str) -> None:
    """Register (empty) memory buffers for ``memory`` on ``module`` if it has none yet."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    if memory == "error_feedback":
        if BUFFER_W not in module._buffers:
            module.register_buffer(BUFFER_W, torch.zeros_like(weight))
    else:
        op = op_for(module)
        for name, width in ((BUFFER_X, op.d_in), (BUFFER_G, op.d_out)):
            if name not in module._buffers:
                module.register_buffer(name, weight.new_zeros(0, width))
    if not getattr(module, _HOOK_FLAG, False):
        module.register_load_state_dict_pre_hook(_load_hook)
        object.__setattr__(module, _HOOK_FLAG, True)


def learning_rate(lr: LearningRate, module: nn.Module | None) -> float:
    """The current learning rate (1 when ``lr`` is ``None``).

    Raises:
        ValueError: if the rate is not positive.
    """
    if lr is None:
        return 1.0
    if isinstance(lr, torch.optim.Optimizer):
        weight = getattr(module, "weight", None)
        group = next(
            (g for g in lr.param_groups if any(p is weight for p in g["params"])),
            lr.param_groups[0],
        )
        value = float(group["lr"])
    elif callable(lr):
        value = float(lr())
    else:
        value = float(lr)
    if not value > 0:
        raise ValueError(f"AOP: the learning rate must be > 0 for the memory, got {value}")
    return value


def with_rows(aop: AOP, op: AffineOp, xr: Tensor, gr: Tensor, module: nn.Module) -> Tensor:
    """The paper's row memory step (see :class:`AOP` for the batch-size rule).

    ``xr`` ``[M, D_in]``, ``gr`` ``[M, D_out]``: this batch's canonical rows.
    """
    m = xr.shape[0]
    mem_x, mem_g = module._buffers[BUFFER_X], module._buffers[BUFFER_G]
    assert mem_x is not None and mem_g is not None
    scale = math.sqrt(learning_rate(aop.lr, module))
    rows = min(m, mem_x.shape[0])
    if rows == m:  # the usual case: one add forms the new (owned) tensors
        x_hat = torch.add(xr, mem_x[:m].to(xr.dtype), alpha=1.0 / scale)
        g_hat = torch.add(gr, mem_g[:m].to(gr.dtype), alpha=1.0 / scale)
    else:
        x_hat, g_hat = xr.clone(), gr.clone()
        x_hat[:rows].add_(mem_x[:rows].to(xr.dtype), alpha=1.0 / scale)
        g_hat[:rows].add_(mem_g[:rows].to(gr.dtype), alpha=1.0 / scale)
    idx, w = aop.select(scores(x_hat, g_hat, op.groups), aop.num_rows(m))
    out = aop.product(op, x_hat.index_select(0, idx), g_hat.index_select(0, idx), w)
    # New memory: the unselected rows (paper units), then the rows this batch did not reach.
    new_x, new_g = x_hat.index_fill_(0, idx, 0), g_hat.index_fill_(0, idx, 0)
    if scale != 1.0:
        new_x, new_g = new_x.mul_(scale), new_g.mul_(scale)
    new_x, new_g = new_x.to(mem_x.dtype), new_g.to(mem_g.dtype)
    if mem_x.shape[0] > m:
        new_x = torch.cat([new_x, mem_x[m:]])
        new_g = torch.cat([new_g, mem_g[m:]])
    module._buffers[BUFFER_X], module._buffers[BUFFER_G] = new_x, new_g
    return out


def error_feedback(
    est: Tensor, exact: Tensor, module: nn.Module, lr: LearningRate
) -> Tensor:
    """Add the carried error to ``est`` and keep ``eta * (exact - est)`` (Stich et al.)."""
    eta = learning_rate(lr, module)
    mem = module._buffers[BUFFER_W]
    assert mem is not None
    out = est + mem.to(est.dtype) / eta
    module._buffers[BUFFER_W] = ((exact.to(est.dtype) - est) * eta).to(mem.dtype)
    return out


def scores(xr: Tensor, gr: Tensor, groups: int) -> Tensor:
    """Frobenius norm of each row's product (its block-diagonal part for grouped layers)."""
    if groups == 1:
        return torch.linalg.vector_norm(xr, dim=1) * torch.linalg.vector_norm(gr, dim=1)
    m = xr.shape[0]
    nx = xr.reshape(m, groups, -1).square().sum(-1)
    ng = gr.reshape(m, groups, -1).square().sum(-1)
    return (nx * ng).sum(-1).sqrt()


class BoundAOP(Estimator):
    """An :class:`AOP` bound to one module, whose buffers hold that layer's memory."""

    def __init__(self, parent: AOP, module: nn.Module) -> None:
        self.parent = parent
        self.module = module
        self.natural_layers = parent.natural_layers

    def pack(self, op: AffineOp, x: Tensor) -> tuple[tuple[Tensor, ...], Any]:
        return self.parent.pack(op, x)

    def saved_numbers(self, op: AffineOp, x: Tensor) -> int:
        return self.parent.saved_numbers(op, x)

    def weight_grad(self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor) -> Tensor:
        return self.parent.estimate(op, saved[0], g, self.module)

    def state_dict(self) -> dict[str, Any]:
        return self.parent.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parent.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{self.parent!r} bound to {type(self.module).__name__}"
