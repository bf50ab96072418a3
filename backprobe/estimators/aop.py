"""Approximate outer-product weight gradients with memory (Mem-AOP-GD).

The weight gradient of a Linear or ConvNd layer is a sum of ``M`` outer products, one per
canonical row ``m`` (an example, or an example and an output position for a convolution):

    dW = G^T X = sum_{m=1}^{M} g_m (outer) x_m,      X: [M, D_in],  G: [M, D_out].

AOP forms only ``K`` of them, chosen by a policy, and (optionally) keeps the rows it did not
use in a memory that is added to the next step's rows. Reference: Hernandez, Rini, Duman,
"Speeding-up back-propagation in DNN: approximate outer product with memory" (2021); the
sampling and importance weights follow Drineas, Kannan, Mahoney, "Fast Monte Carlo
algorithms for matrices I" (2006); error feedback follows Stich, Cordonnier, Jaggi,
"Sparsified SGD with memory" (2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from backprobe.estimators._base import Estimator, RandomEstimator
from backprobe.layers import AffineOp, ConvOp

POLICIES = ("topk", "randk", "weightedk")
MEMORIES = (False, True, "error_feedback")

#: Names of the module buffers AOP registers (row memory and weight-shaped memory).
BUFFER_X = "aop_memory_x"
BUFFER_G = "aop_memory_g"
BUFFER_W = "aop_memory_w"
_BUFFERS = (BUFFER_X, BUFFER_G, BUFFER_W)
_HOOK_FLAG = "_aop_load_hook"

LearningRate = float | Callable[[], float] | torch.optim.Optimizer | None


def _dims(module: nn.Module) -> tuple[int, int]:
    """Canonical ``(D_in, D_out)`` of a Linear or ConvNd module (all input channels)."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    if isinstance(module, nn.modules.conv._ConvNd):
        return weight.shape[1] * module.groups * math.prod(module.kernel_size), weight.shape[0]
    return weight.shape[1], weight.shape[0]


def _reset_buffers(module: nn.Module) -> None:
    for name in (BUFFER_X, BUFFER_G):
        buf = module._buffers.get(name)
        if buf is not None:
            module._buffers[name] = buf.new_zeros(0, buf.shape[1])
    buf = module._buffers.get(BUFFER_W)
    if buf is not None:
        module._buffers[BUFFER_W] = torch.zeros_like(buf)


def reset_memory(model: nn.Module) -> nn.Module:
    """Empty the AOP memory of every layer of ``model`` (row memory to 0 rows, error to 0).

    Call it e.g. when the data distribution changes or between independent runs.

    Returns:
        ``model``.
    """
    for m in model.modules():
        _reset_buffers(m)
    return model


def remove_memory(model: nn.Module) -> nn.Module:
    """Delete AOP's buffers from every layer of ``model`` (e.g. before ``backprobe.revert``).

    Returns:
        ``model``.
    """
    for m in model.modules():
        for name in _BUFFERS:
            m._buffers.pop(name, None)
            m._non_persistent_buffers_set.discard(name)
    return model


def _load_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """Let row memory of any number of rows load; a checkpoint without memory empties it."""
    for name in _BUFFERS:
        buf = module._buffers.get(name)
        if buf is None:
            continue
        key = prefix + name
        if key not in state_dict:  # e.g. a checkpoint of the plain torch model
            state_dict[key] = torch.zeros_like(buf) if name == BUFFER_W else buf.new_zeros(
                0, buf.shape[1]
            )
        incoming = state_dict[key]
        if name != BUFFER_W and isinstance(incoming, Tensor) and incoming.shape != buf.shape:
            module._buffers[name] = buf.new_zeros(incoming.shape)


class AOP(RandomEstimator):
    r"""Weight gradient from ``K`` of the ``M`` row outer products, with optional memory.

    Shapes: for ``nn.Linear`` on input ``[N, *, D_in]`` the rows are all ``M = N * prod(*)``
    input rows ``X: [M, D_in]`` and output-gradient rows ``G: [M, D_out]``; for ``ConvNd``
    the rows are the ``M = N * S`` (example, output position) pairs of the unfolded input
    ``op.canonical_input(x)`` (``D_in = C_in * prod(kernel)``) and of
    ``op.canonical_output_grad(g)`` (``D_out = C_out``). The score of row ``m`` is the
    Frobenius norm of its product, ``||x_m|| ||g_m||`` (for grouped convolutions, of the
    block-diagonal part the weight actually uses).

    Estimate (without memory): ``dW ~ sum_{m in S} w_m g_m (outer) x_m`` over ``K`` selected
    rows ``S``, formed with one gather and one matmul (``K * D_in * D_out`` multiply-adds
    instead of ``M * D_in * D_out``). Policies:

    * ``"topk"``: the ``K`` rows with the largest scores (deterministic; biased).
    * ``"randk"``: ``K`` rows uniformly at random.
    * ``"weightedk"``: rows drawn with probabilities ``p_m = score_m / sum(score)``.

    Rows are drawn without replacement unless ``replacement=True``. Weights are ``w_m = 1``
    (biased) unless ``unbiased=True``: then ``w_m = 1 / (K p_m)`` for draws with replacement
    (Drineas-Kannan-Mahoney), so ``E[estimate] = G^T X`` exactly; for ``randk`` without
    replacement ``w_m = M / K`` (each row is included with probability ``K / M``), also
    unbiased. ``unbiased=True`` with ``weightedk`` therefore needs ``replacement=True``
    (the default when ``unbiased=True``); ``topk`` cannot be unbiased. With ``K >= M`` and no
    replacement every row is used and the estimate is exact.

    Memory (``memory=True``, the paper's Mem-AOP-GD): per layer, row buffers ``m_X``
    ``[M, D_in]`` and ``m_G`` ``[M, D_out]`` hold the rows not used last step. Each step
    forms ``X_hat = m_X + X`` and ``G_hat = m_G + G``, scores and selects rows of the hats,
    returns ``dW = G_hat[S]^T X_hat[S]`` and keeps ``m_X = X_hat``, ``m_G = G_hat`` with the
    selected rows zeroed. The paper scales the fresh rows by ``sqrt(eta)``:
    ``X'_hat = m'_X + sqrt(eta) X`` (same for ``G``) and steps ``W -= sum_S g'_hat x'_hat^T``.
    Writing ``m'_X = sqrt(eta) m_X`` gives ``X'_hat = sqrt(eta) X_hat``, so
    ``sum_S g'_hat x'_hat^T = eta * sum_S g_hat x_hat^T``: with a constant learning rate
    ``eta`` the paper's algorithm is exactly unscaled memory plus an SGD step of size
    ``eta`` on the estimate returned here, and the kept rows agree up to the same factor.
    With a changing rate, pass ``lr`` (a number, a zero-argument callable such as
    ``lambda: opt.param_groups[0]["lr"]``, or the optimizer itself, in which case the rate
    of the parameter group holding the layer's weight is used): the buffers then hold the
    paper's rows ``m'`` (scaled by ``sqrt(eta)`` of the step that stored them) and each
    step uses ``X_hat = m'_X / sqrt(eta_t) + X``; this reproduces the paper's updates for
    plain SGD whatever the schedule (with momentum or Adam it is a heuristic).

    Error feedback (``memory="error_feedback"``, Stich et al. at the level of the product):
    a weight-shaped buffer ``m`` (in update units ``eta * gradient``, ``eta = 1`` when
    ``lr`` is ``None``). With ``E_t = G_t^T X_t`` the exact gradient and ``A_t`` the AOP
    estimate of the fresh rows, step ``t`` compresses ``p_t = m_{t-1} + eta_t E_t`` to
    ``C(p_t) = m_{t-1} + eta_t A_t`` (the carried error plus the ``K`` selected products),
    returns ``C(p_t) / eta_t`` and keeps ``m_t = p_t - C(p_t) = eta_t (E_t - A_t)``. So for
    every run, ``sum_t eta_t * returned_t + m_T = sum_t eta_t E_t`` (nothing is lost, only
    delayed). This needs ``E_t``, so it costs an exact weight gradient *plus* the AOP one:
    it is a statistical variant, not a speed-up.

    Batch-size rule: rows are paired by index. A batch with fewer rows than the memory uses
    and updates its first ``M`` rows; the rows beyond ``M`` are carried over untouched to
    the next step (nothing is dropped). A batch with more rows extends the memory with zero
    rows. So the buffers have as many rows as the largest batch seen since the last
    :func:`reset_memory`.

    Compute: scores ``O(M (D_in + D_out))``, selection, gather ``K`` rows, one matmul. For
    convolutions without row memory the scores come from a convolution of ``x^2`` with a
    ones kernel and only the ``K`` selected patches are gathered (no unfolding); the row
    memory holds unfolded rows, so ``memory=True`` unfolds the whole input in backward.

    Memory cost: ``pack`` keeps the layer input, like exact autograd (``x.numel()`` numbers).
    AOP saves compute, not memory. ``memory=True``
    adds persistent buffers of ``M * (D_in + D_out)`` numbers per layer (for a convolution
    ``M = N * S`` with the unfolded ``D_in``: often larger than the input);
    ``"error_feedback"`` adds one weight-sized buffer. Buffers are registered on the module
    (``aop_memory_x``, ``aop_memory_g``, ``aop_memory_w``) by the first training forward or by
    :meth:`attach`, so they are in ``state_dict``, follow ``.to()``, and are emptied by
    :func:`reset_memory` (deleted by :func:`remove_memory`). Input and bias gradients stay
    exact.

    Randomness: a private ``torch.Generator`` seeded at construction from the global RNG
    (or ``seed``); its state is in :meth:`state_dict`. The global RNG is never used after
    construction, so ``torch.manual_seed`` still makes a run reproducible.

    Args:
        k: rows per step: an ``int >= 1``, or a ``float`` in ``(0, 1]`` meaning the fraction
            ``round(k * M)`` (at least 1) of each layer's rows.
        policy: ``"topk"``, ``"randk"`` or ``"weightedk"``.
        memory: ``True`` (row memory, the paper), ``False``, or ``"error_feedback"``.
        unbiased: importance weights that make the estimate unbiased (see above).
        replacement: draw rows with replacement; default ``unbiased``.
        lr: learning rate for the memory scaling (number, callable or optimizer); ``None``
            means a constant rate (the scaling cancels). Ignored when ``memory=False``.
        seed: seed of the private generator (default: drawn from the global RNG).

    Raises:
        ValueError: on ``k < 1`` (or a fraction outside ``(0, 1]``), an unknown policy or
            memory, ``unbiased=True`` with ``topk`` or with ``memory=True``, ``topk`` with
            replacement, or ``weightedk`` unbiased without replacement.

    Example:
        >>> import torch, backprobe
        >>> from backprobe.estimators.aop import AOP
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 10))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> _ = backprobe.convert(model, AOP(16, policy="topk", memory=True, seed=0))
        >>> x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
        >>> torch.nn.functional.cross_entropy(model(x), y).backward()  # 16 of 64 products
        >>> opt.step()
    """

    natural_layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def __init__(
        self, k: int | float, *, policy: str = "topk", memory: bool | str = True,
        unbiased: bool = False, replacement: bool | None = None, lr: LearningRate = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise ValueError(f"AOP: k must be an int >= 1 or a float in (0, 1], got {k!r}")
        if isinstance(k, int) and k < 1:
            raise ValueError(f"AOP: k must be >= 1 rows, got {k}")
        if isinstance(k, float) and not 0.0 < k <= 1.0:
            raise ValueError(f"AOP: a fractional k must lie in (0, 1], got {k}")
        if policy not in POLICIES:
            raise ValueError(f"AOP: unknown policy {policy!r}; choose one of {POLICIES}")
        if not any(memory is m or (isinstance(m, str) and memory == m) for m in MEMORIES):
            raise ValueError(f"AOP: memory must be True, False or 'error_feedback', got {memory!r}")
        unbiased = bool(unbiased)
        replacement = unbiased if replacement is None else bool(replacement)
        if policy == "topk" and unbiased:
            raise ValueError("AOP: topk is deterministic and cannot be unbiased; "
                             "use policy='randk' or 'weightedk' with unbiased=True")
        if policy == "topk" and replacement:
            raise ValueError("AOP: topk selects distinct rows; replacement=True needs "
                             "policy='randk' or 'weightedk'")
        if unbiased and memory is True:
            raise ValueError("AOP: the row memory makes the estimate depend on past selections, "
                             "so it cannot be unbiased; use memory=False or 'error_feedback'")
        if unbiased and policy == "weightedk" and not replacement:
            raise ValueError("AOP: unbiased weightedk needs replacement=True (inclusion "
                             "probabilities without replacement are not p_m * K)")
        known = (int, float, torch.optim.Optimizer)
        if lr is not None and not (callable(lr) or isinstance(lr, known)):
            raise ValueError(f"AOP: lr must be a number, a callable or an optimizer, got {lr!r}")
        if isinstance(lr, (int, float)) and not lr > 0:
            raise ValueError(f"AOP: lr must be > 0, got {lr}")
        self.k = k
        self.policy = policy
        self.memory: bool | str = memory
        self.unbiased = unbiased
        self.replacement = replacement
        self.lr = lr
        super().__init__(seed)

    # -- binding to modules ----------------------------------------------------------------
    def for_module(self, module: nn.Module) -> Estimator:
        """``self`` without memory; otherwise an estimator bound to ``module``'s buffers."""
        if self.memory is False:
            return self
        self._register(module)
        return _BoundAOP(self, module)

    def attach(self, model: nn.Module) -> nn.Module:
        """Register (empty) memory buffers on every layer of ``model`` that uses ``self``.

        Training forwards do this by themselves; call it before loading a checkpoint with
        memory into a freshly converted model (``strict`` loading needs the keys).

        Returns:
            ``model``.
        """
        if self.memory is False:
            return model
        for m in model.modules():
            if getattr(m, "estimator", None) is self and hasattr(m, "weight"):
                self._register(m)
        return model

    def detach(self, module: nn.Module) -> nn.Module:
        """Delete the memory buffers of ``module`` (it no longer uses this estimator)."""
        return remove_memory(module)

    def _register(self, module: nn.Module) -> None:
        weight = module.weight
        assert isinstance(weight, Tensor)
        d_in, d_out = _dims(module)
        if self.memory == "error_feedback":
            if BUFFER_W not in module._buffers:
                module.register_buffer(BUFFER_W, torch.zeros_like(weight))
        else:
            if BUFFER_X not in module._buffers:
                module.register_buffer(BUFFER_X, weight.new_zeros(0, d_in))
            if BUFFER_G not in module._buffers:
                module.register_buffer(BUFFER_G, weight.new_zeros(0, d_out))
        if not getattr(module, _HOOK_FLAG, False):
            module.register_load_state_dict_pre_hook(_load_hook)
            object.__setattr__(module, _HOOK_FLAG, True)

    def _eta(self, module: nn.Module | None) -> float:
        """The current learning rate (1 when ``lr`` is ``None``)."""
        lr = self.lr
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

    # -- selection -------------------------------------------------------------------------
    def num_rows(self, m: int) -> int:
        """``K`` for a layer with ``m`` rows (never more than ``m`` without replacement)."""
        k = max(1, round(self.k * m)) if isinstance(self.k, float) else self.k
        return k if self.replacement else min(k, m)

    def _device_generator(self, device: torch.device) -> torch.Generator:
        if device.type == "cpu":
            return self._generator
        gen = torch.Generator(device=device)
        gen.manual_seed(self.next_seed())
        return gen

    def select(self, scores: Tensor, k: int) -> tuple[Tensor, Tensor | float | None]:
        """Choose ``k`` rows given their scores ``[M]``.

        Returns:
            ``(index [k], weight)``: ``weight`` is ``None`` (all ones), a float (one weight
            for every row) or a tensor ``[k]`` of importance weights.
        """
        m = scores.shape[0]
        if self.policy == "topk":
            return torch.topk(scores, k, sorted=False).indices, None
        gen = self._device_generator(scores.device)
        if self.policy == "randk":
            if self.replacement:
                idx = torch.randint(m, (k,), generator=gen, device=scores.device)
            else:
                idx = torch.randperm(m, generator=gen, device=scores.device)[:k]
            return idx, (m / k if self.unbiased else None)
        s = scores.double()
        total = s.sum()
        if self.replacement:
            probs = s + (total == 0).to(s.dtype)  # all-zero scores: uniform
        else:  # every row must keep a (tiny) chance so that k distinct rows exist
            probs = s + (total * 1e-12 + 1e-200) / m
        idx = torch.multinomial(probs, k, replacement=self.replacement, generator=gen)
        if not self.unbiased:
            return idx, None
        p = probs[idx] / probs.sum()
        return idx, (1.0 / (k * p))

    # -- estimator interface ---------------------------------------------------------------
    def pack(self, op: AffineOp, x: Tensor) -> tuple[tuple[Tensor, ...], Any]:
        """Keep the layer input (AOP saves compute, not memory)."""
        return (x,), None

    def saved_numbers(self, op: AffineOp, x: Tensor) -> int:
        """``x.numel()``: the input, as exact autograd keeps it."""
        return x.numel()

    def weight_grad(self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor) -> Tensor:
        """The AOP estimate (only without memory: memory needs ``for_module``)."""
        return self._weight_grad(op, saved[0], g, None)

    def _weight_grad(self, op: AffineOp, x: Tensor, g: Tensor, module: nn.Module | None) -> Tensor:
        if self.memory is not False and module is None:
            raise ValueError("AOP with memory must be bound to a module (estimator.for_module)")
        if g.numel() == 0:  # empty batch: nothing to select, memory untouched
            return op.weight_grad(x, g)
        dtype = g.dtype
        groups = int(getattr(op, "groups", 1))
        if isinstance(op, ConvOp) and self.memory is not True:
            # Scores without unfolding; only the K selected patches are gathered.
            scores = _conv_scores(op, x.to(dtype), g)
            idx, w = self.select(scores, self.num_rows(scores.shape[0]))
            xs, gs = _conv_gather(op, x.to(dtype), g, idx)
        else:
            xr = op.canonical_input(x.to(dtype))
            xr = xr.reshape(-1, xr.shape[-1])
            gr = op.canonical_output_grad(g)
            gr = gr.reshape(-1, gr.shape[-1])
            if self.memory is True:
                assert module is not None
                return self._with_rows(op, xr, gr, module, groups)
            idx, w = self.select(_scores(xr, gr, groups), self.num_rows(xr.shape[0]))
            xs, gs = xr.index_select(0, idx), gr.index_select(0, idx)
        est = self._product(op, xs, gs, w, groups)
        if self.memory == "error_feedback":
            assert module is not None
            eta = self._eta(module)
            exact = op.weight_grad(x, g).to(dtype)
            mem = module._buffers[BUFFER_W]
            assert mem is not None
            out = est + mem.to(dtype) / eta
            module._buffers[BUFFER_W] = ((exact - est) * eta).to(mem.dtype)
            return out
        return est

    def _with_rows(
        self, op: AffineOp, xr: Tensor, gr: Tensor, module: nn.Module, groups: int
    ) -> Tensor:
        """The paper's row memory (see the class docstring for the batch-size rule)."""
        m = xr.shape[0]
        mem_x, mem_g = module._buffers[BUFFER_X], module._buffers[BUFFER_G]
        assert mem_x is not None and mem_g is not None
        scale = math.sqrt(self._eta(module))
        rows = min(m, mem_x.shape[0])
        if rows == m:  # the usual case: one add forms the new (owned) tensors
            x_hat = torch.add(xr, mem_x[:m].to(xr.dtype), alpha=1.0 / scale)
            g_hat = torch.add(gr, mem_g[:m].to(gr.dtype), alpha=1.0 / scale)
        else:
            x_hat, g_hat = xr.clone(), gr.clone()
            x_hat[:rows].add_(mem_x[:rows].to(xr.dtype), alpha=1.0 / scale)
            g_hat[:rows].add_(mem_g[:rows].to(gr.dtype), alpha=1.0 / scale)
        idx, w = self.select(_scores(x_hat, g_hat, groups), self.num_rows(m))
        out = self._product(op, x_hat.index_select(0, idx), g_hat.index_select(0, idx), w, groups)
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

    def _product(self, op: AffineOp, xs: Tensor, gs: Tensor, w: Tensor | float | None,
                 groups: int) -> Tensor:
        """``sum_j w_j gs_j (outer) xs_j`` in the weight's layout (one matmul)."""
        if isinstance(w, Tensor):
            gs = gs * w.to(gs.dtype).unsqueeze(1)
        if groups == 1:
            mat = gs.mT @ xs
        else:  # block-diagonal part only: [groups, D_out/g, K] @ [groups, K, D_in/g]
            k = xs.shape[0]
            gs_g = gs.reshape(k, groups, -1).permute(1, 2, 0)
            mat = gs_g @ xs.reshape(k, groups, -1).transpose(0, 1)
            mat = mat.reshape(gs.shape[1], -1)
            if isinstance(w, float):
                mat = mat.mul_(w)
            return mat.reshape(mat.shape[0], -1, *op.kernel_size)  # type: ignore[attr-defined]
        if isinstance(w, float):
            mat = mat.mul_(w)
        return op.weight_from_matrix(mat)

    def __repr__(self) -> str:
        return (
            f"AOP({self.k}, policy={self.policy!r}, memory={self.memory!r}, "
            f"unbiased={self.unbiased}, replacement={self.replacement})"
        )


def _scores(xr: Tensor, gr: Tensor, groups: int) -> Tensor:
    """Frobenius norm of each row's product (its block-diagonal part for grouped convs)."""
    if groups == 1:
        return torch.linalg.vector_norm(xr, dim=1) * torch.linalg.vector_norm(gr, dim=1)
    m = xr.shape[0]
    nx = xr.reshape(m, groups, -1).square().sum(-1)
    ng = gr.reshape(m, groups, -1).square().sum(-1)
    return (nx * ng).sum(-1).sqrt()


def _conv_scores(op: ConvOp, x: Tensor, g: Tensor) -> Tensor:
    """``_scores`` of the unfolded rows, computed without unfolding: ``[N * S]``.

    ``||x_patch||^2`` per group is a convolution of ``x^2`` with a ones kernel.
    """
    n, c_in, grp = x.shape[0], x.shape[1], op.groups
    ones = x.new_ones(grp, c_in // grp, *op.kernel_size)
    nx = op.forward(x.square(), ones, None).flatten(2)  # [N, groups, S]
    ng = g.flatten(2).square().reshape(n, grp, -1, nx.shape[-1]).sum(2)
    return (nx * ng).sum(1).clamp_min(0).sqrt().reshape(-1)


def _conv_gather(op: ConvOp, x: Tensor, g: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``idx`` (flat ``n * S + s``) of ``canonical_input(x)`` and the output gradient."""
    out_shape = g.shape[2:]
    s_total = math.prod(out_shape)
    n_idx, s_idx = idx // s_total, idx % s_total
    pad: list[int] = []
    for p in reversed(op.padding):
        pad += [p, p]
    xp = torch.nn.functional.pad(x, pad).movedim(1, -1)  # [N, *spatial, C]
    d = op.dim
    index: list[Tensor] = [n_idx.reshape(-1, *([1] * d))]
    rem = s_idx
    coords = []
    for size in reversed(out_shape):
        coords.append(rem % size)
        rem = rem // size
    coords.reverse()
    for j in range(d):
        shape = [1] * d
        shape[j] = op.kernel_size[j]
        offs = torch.arange(op.kernel_size[j], device=x.device) * op.dilation[j]
        pos = coords[j].reshape(-1, 1) * op.stride[j] + offs
        index.append(pos.reshape(-1, *shape))
    patches = xp[tuple(index)]  # [K, *kernel, C]
    xs = patches.movedim(-1, 1).reshape(idx.shape[0], -1)
    gs = g.flatten(2)[n_idx, :, s_idx]
    return xs, gs


class _BoundAOP(Estimator):
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
        return self.parent._weight_grad(op, saved[0], g, self.module)

    def state_dict(self) -> dict[str, Any]:
        return self.parent.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parent.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{self.parent!r} bound to {type(self.module).__name__}"


__all__ = ["AOP", "POLICIES", "remove_memory", "reset_memory"]
