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

from typing import Any

import torch
from torch import Tensor, nn

from backprobe.estimators._aop_memory import (
    BUFFER_G,
    BUFFER_W,
    BUFFER_X,
    BoundAOP,
    LearningRate,
    error_feedback,
    register_buffers,
    remove_memory,
    reset_memory,
    scores,
    with_rows,
)
from backprobe.estimators._base import Estimator, RandomEstimator
from backprobe.layers import AffineOp, module_types

POLICIES = ("topk", "randk", "weightedk")
MEMORIES = (False, True, "error_feedback")
_scores = scores  # the name tests and benchmarks know


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

    natural_layers = module_types("affine")

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
        register_buffers(module, self.memory)
        return BoundAOP(self, module)

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
                register_buffers(m, self.memory)
        return model

    def detach(self, module: nn.Module) -> nn.Module:
        """Delete the memory buffers of ``module`` (it no longer uses this estimator)."""
        return remove_memory(module)

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
        return self.estimate(op, saved[0], g, None)

    def estimate(self, op: AffineOp, x: Tensor, g: Tensor, module: nn.Module | None) -> Tensor:
        """The weight gradient estimate for input ``x`` and output gradient ``g``.

        Raises:
            ValueError: with memory but no ``module`` to keep it on.
        """
        if self.memory is not False and module is None:
            raise ValueError("AOP with memory must be bound to a module (estimator.for_module)")
        if g.numel() == 0:  # empty batch: nothing to select, memory untouched
            return op.weight_grad(x, g)
        x = x.to(g.dtype)
        fast = op.row_scores(x, g) if self.memory is not True else None
        if fast is not None:  # scores without unfolding; only the K selected rows gathered
            idx, w = self.select(fast, self.num_rows(fast.shape[0]))
            rows = op.gather_rows(x, g, idx)
            assert rows is not None, f"{type(op).__name__}: row_scores without gather_rows"
            xs, gs = rows
        else:
            xr = op.canonical_input(x).flatten(0, 1)
            gr = op.canonical_output_grad(g).flatten(0, 1)
            if self.memory is True:
                assert module is not None
                return with_rows(self, op, xr, gr, module)
            idx, w = self.select(scores(xr, gr, op.groups), self.num_rows(xr.shape[0]))
            xs, gs = xr.index_select(0, idx), gr.index_select(0, idx)
        est = self.product(op, xs, gs, w)
        if self.memory == "error_feedback":
            assert module is not None
            return error_feedback(est, op.weight_grad(x, g), module, self.lr)
        return est

    def product(self, op: AffineOp, xs: Tensor, gs: Tensor, w: Tensor | float | None) -> Tensor:
        """``sum_j w_j gs_j (outer) xs_j`` in the weight's layout (one matmul per group)."""
        if isinstance(w, Tensor):
            gs = gs * w.to(gs.dtype).unsqueeze(1)
        k, grp = xs.shape[0], op.groups
        # block-diagonal part only: [groups, D_out/g, K] @ [groups, K, D_in/g]
        blocks = gs.reshape(k, grp, -1).permute(1, 2, 0) @ xs.reshape(k, grp, -1).transpose(0, 1)
        if isinstance(w, float):
            blocks = blocks.mul_(w)
        return op.weight_from_blocks(blocks)

    def __repr__(self) -> str:
        return (
            f"AOP({self.k}, policy={self.policy!r}, memory={self.memory!r}, "
            f"unbiased={self.unbiased}, replacement={self.replacement})"
        )



__all__ = [
    "AOP", "BUFFER_G", "BUFFER_W", "BUFFER_X", "LearningRate", "POLICIES", "remove_memory",
    "reset_memory",
]
