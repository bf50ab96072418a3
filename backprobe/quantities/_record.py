"""``record``: the context manager that computes quantities during backward.

How it works, on any graph autograd handles (residual connections, a module used several
times, functional ops, in-place activations):

* a forward hook on every parametrised module keeps its input (in the form its layer op
  needs) and registers a tensor hook on its output; that hook receives the output gradient
  during ``loss.backward()`` and queues one callback that runs when backward finishes;
* the callback groups the gradients by module (a module used twice contributes both calls,
  summed per example) and computes every requested first-order quantity from one
  per-example contraction per module;
* with curvature quantities, a forward hook on ``loss_fn`` sees the model output and target,
  builds the loss Hessian's square-root columns and backpropagates them in chunks (one
  vmapped ``torch.autograd.grad(..., is_grads_batched=True, retain_graph=True)`` per chunk,
  sized to bound memory) to the recorded layer outputs (their gradient edges, taken before
  any in-place op), then contracts them per layer and sums (or stacks) over columns.
  Curvature results are therefore stored when ``loss_fn`` is called, before
  ``loss.backward()``;
* KFRA instead backpropagates a batch-averaged GGN matrix from one recorded layer output to
  the previous one (a chain is required, checked on the autograd graph): its factor columns,
  broadcast over the batch, are pulled back with the same batched vector-Jacobian products
  between gradient edges, which gives every example's block Jacobian applied to them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from backprobe.layers import OPS, spec_for
from backprobe.quantities._base import CurvatureQuantity, FirstOrderQuantity, Quantity
from backprobe.quantities._loss_call import (
    LossCall,
    expected_gradients,
    group_by_site,
    loss_curvature,
    objective_scale,
)
from backprobe.quantities._sites import SITES, BoundSite
from backprobe.quantities.first_order import BatchGrad, first_order
from backprobe.quantities.hessian import DiagHessian, HutchinsonDiagHessian
from backprobe.quantities.loss_hessian import check_loss


def _registry_lookup(module: nn.Module) -> tuple[str, Callable[..., Any]] | None:
    """``(kind, bind)`` of ``module``'s registered op, or ``None``."""
    spec = spec_for(module)
    return None if spec is None else (spec.kind, spec.op.bind)


def _bind_func(module: nn.Module, x: Tensor) -> tuple[Tensor, nn.Module]:
    return x.detach(), module


def supported_modules() -> list[str]:
    """Names of the module types whose parameters the per-layer quantities support."""
    return [t.__name__ for t in OPS]


def _check_estimator(name: str, module: nn.Module, quantities: Sequence[Quantity]) -> None:
    from backprobe.estimators import Exact
    from backprobe.nn import EstimatedLayer

    if not isinstance(module, EstimatedLayer) or isinstance(module.estimator, Exact):
        return
    needy = [repr(q) for q in quantities if q.needs_input]
    if needy:
        raise ValueError(
            f"module '{name}' ({type(module).__name__}) uses estimator {module.estimator!r}, "
            f"which keeps only a sketch of the layer input; {', '.join(needy)} need the full "
            "input of every example. Use backprobe.set_estimator(model, backprobe.Exact()) "
            "while recording, or backprobe.revert(model)."
        )


@dataclass
class _Site:
    name: str
    module: nn.Module
    kind: str
    binder: Callable[..., Any]
    params: dict[str, nn.Parameter]


@dataclass(eq=False)
class _Call:
    site: _Site
    ctx: tuple[Tensor, Any]
    version: int
    out_numel: int = 0
    out_shape: tuple[int, ...] = ()


@dataclass
class _State:
    pending: list[tuple[_Call, Tensor]] = field(default_factory=list)
    queued: bool = False
    calls: list[tuple[_Call, Any]] = field(default_factory=list)
    busy: bool = False
    losses: list[LossCall] = field(default_factory=list)
    arrived: dict[int, tuple[_Call, Tensor]] = field(default_factory=dict)
    check_queued: bool = False
    stored: set[tuple[int, str]] = field(default_factory=set)
    first_order_passes: int = 0
    curvature_passes: int = 0


class record:  # noqa: N801 - a context manager used like a function, as torch.no_grad
    """Compute quantities during ``loss.backward()`` on a plain torch model.

    Results are stored on the parameters under BackPACK's attribute names (``p.grad_batch``,
    ``p.diag_ggn_exact``, ...; see each quantity's docstring for its shape and scaling);
    ``.grad`` is produced as usual.

    Contract over several backward passes: one context holds one backward by default; a
    second backward inside the same context raises a ``ValueError`` (rather than keep only
    the last micro-batch, so that ``grad_batch.sum(0)`` would no longer match ``.grad``).
    With ``accumulate=True`` results of successive backward passes combine like ``.grad``:
    per-example results (``grad_batch``, ``batch_l2``, ``diag_ggn_*_batch``, ``sqrt_ggn_*``)
    are concatenated along the example axis, sums (``sum_grad_squared``, ``diag_ggn_*``,
    ``diag_h``, ``diag_h_hutchinson``) add; quantities that do not combine that way
    (``Variance``, ``BatchGradFactors``, Kronecker factors) are refused at construction.
    Results stay on the parameters after the context exits (as ``.grad`` does); a new
    context overwrites them at its first backward, and :func:`clear` deletes them.

    Curvature quantities are computed for the objective actually backpropagated when it is
    ``c * loss_fn(output, target)`` for a single ``loss_fn`` call (``c`` read from the
    gradient reaching the loss output: ``2 * loss`` or ``loss / steps`` are handled);
    anything else (a second loss term, a penalty on outputs, several ``loss_fn`` calls in
    one backward, or a loss computed without the ``loss_fn`` module, e.g. with
    ``F.cross_entropy``) raises a ``ValueError`` at backward. Penalties on the parameters
    themselves (an L2 term on the weights) do not pass through the model and are not
    included: add their Hessian (e.g. ``2 * lambda`` on the diagonal) yourself.

    Args:
        model: any ``nn.Module``; every submodule with trainable parameters must be a
            supported layer (Linear, Conv1d/2d/3d, BatchNorm in eval mode, LayerNorm,
            GroupNorm, Embedding) unless only ``HutchinsonDiagHessian`` is requested.
        *quantities: instances of quantity classes, e.g. ``BatchGrad()``, ``DiagGGNMC()``.
        loss_fn: the loss module the model output is fed to (``CrossEntropyLoss``,
            ``MSELoss``, ``BCEWithLogitsLoss``); required by curvature quantities. The model
            must be called once per ``loss_fn`` call, inside the context.
        fallback: ``"torch.func"`` to handle modules no layer describes (with a single
            tensor input and examples treated independently) by ``vmap`` of ``vjp``;
            ``None`` (default) raises for them instead.
        reuse_buffers: write ``p.grad_batch`` into the previous backward's tensor where
            shapes match instead of allocating (on CPU, first-touch page faults of a fresh
            ``[N, *p.shape]`` tensor can cost more than computing it). Off by default:
            references kept to an earlier ``grad_batch`` would then change.
        accumulate: combine the results of several backward passes in this context
            (gradient accumulation over micro-batches) instead of raising at the second.

    Raises:
        ValueError: unsupported module (named), a non-exact estimator on a converted layer,
            BatchNorm in train mode (at forward), a missing or unsupported ``loss_fn``,
            ``accumulate=True`` with a quantity that cannot accumulate; at backward: a second
            backward without ``accumulate=True``, or an objective that is not a multiple of
            one ``loss_fn`` call while curvature is requested.
        TypeError: something that is not a quantity.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from backprobe.quantities import record, BatchGrad, Variance, DiagGGNMC
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> loss_fn = nn.CrossEntropyLoss()
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> with record(model, BatchGrad(), Variance(), DiagGGNMC(), loss_fn=loss_fn):
        ...     loss = loss_fn(model(x), y)
        ...     loss.backward()
        >>> model[0].weight.grad_batch.shape
        torch.Size([16, 8, 4])
    """

    def __init__(
        self, model: nn.Module, *quantities: Quantity, loss_fn: nn.Module | None = None,
        fallback: str | None = None, reuse_buffers: bool = False, accumulate: bool = False,
    ) -> None:
        if fallback not in (None, "torch.func"):
            raise ValueError(f"fallback must be None or 'torch.func', got {fallback!r}")
        self.fallback = fallback
        self.reuse_buffers = reuse_buffers
        for q in quantities:
            if not isinstance(q, Quantity):
                raise TypeError(f"expected quantity instances (e.g. BatchGrad()), got {q!r}")
        fields = [q.savefield for q in quantities]
        if len(set(fields)) != len(fields):
            raise ValueError(f"each quantity may be requested once, got {list(quantities)}")
        self.accumulate = bool(accumulate)
        if self.accumulate:
            fixed = [repr(q) for q in quantities if q.accumulates is None]
            if fixed:
                raise ValueError(
                    f"record(accumulate=True): {', '.join(fixed)} cannot be combined over "
                    "several backward passes; use one record context per backward for them"
                )
        self.model = model
        self.quantities = quantities
        self._by_field: dict[str, Quantity] = {q.savefield: q for q in quantities}
        self._by_field.setdefault("grad_batch", BatchGrad())  # BatchGradFactors' fallback
        self.loss_fn = loss_fn
        self.first = {type(q) for q in quantities if isinstance(q, FirstOrderQuantity)}
        self.curvature = [q for q in quantities if isinstance(q, CurvatureQuantity)]
        self.hutchinson = [q for q in quantities if isinstance(q, HutchinsonDiagHessian)]
        if (self.curvature or self.hutchinson) and loss_fn is None:
            raise ValueError(
                f"{[*self.curvature, *self.hutchinson]} need loss_fn= (the loss module the "
                "model output is fed to)"
            )
        if self.curvature:
            assert loss_fn is not None
            check_loss(loss_fn)
        if any(isinstance(q, DiagHessian) for q in quantities):
            DiagHessian.check_model(model)
        self._handles: list[Any] = []
        self._state = _State()
        self._sites: list[_Site] = []

    # -- setup -------------------------------------------------------------------------
    def _find_sites(self) -> list[_Site]:
        needy = [q for q in self.quantities if q.needs_input]
        sites = []
        for name, module in self.model.named_modules():
            params = {k: p for k, p in module.named_parameters(recurse=False) if p.requires_grad}
            if not params:
                continue
            found = _registry_lookup(module)
            if found is None and self.fallback == "torch.func":
                found = ("func", _bind_func)
            if found is None:
                raise ValueError(
                    f"module '{name}' ({type(module).__name__}) has trainable parameters "
                    f"{sorted(params)} that no backprobe layer describes, so "
                    f"{', '.join(map(repr, needy))} cannot be computed for it. Supported: "
                    f"{', '.join(supported_modules())}. Freeze it "
                    "(requires_grad_(False)), replace it with supported layers, or pass "
                    "fallback='torch.func'."
                )
            extra = set(params) - {"weight", "bias"}
            if extra and found[0] != "func":
                raise ValueError(
                    f"module '{name}' ({type(module).__name__}) has unexpected parameters "
                    f"{sorted(extra)}"
                )
            _check_estimator(name, module, self.quantities)
            sites.append(_Site(name, module, found[0], found[1], params))
        return sites

    def __enter__(self) -> record:
        per_layer = bool(self.first or self.curvature)
        self._sites = self._find_sites() if per_layer else []
        for site in self._sites:
            hook = functools.partial(self._on_forward, site)
            self._handles.append(site.module.register_forward_hook(hook, with_kwargs=True))
        if self.curvature:
            self._handles.append(self.model.register_forward_pre_hook(self._on_model_call))
        if self.curvature or self.hutchinson:
            assert self.loss_fn is not None
            self._handles.append(self.loss_fn.register_forward_hook(self._on_loss))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._state = _State()

    # -- forward -----------------------------------------------------------------------
    def _on_model_call(self, module: nn.Module, args: Any) -> None:
        self._state.calls = []

    def _on_forward(
        self, site: _Site, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any
    ) -> None:
        st = self._state
        if st.busy or not torch.is_grad_enabled() or not isinstance(output, Tensor):
            return
        if not output.requires_grad:
            return
        _check_estimator(site.name, module, self.quantities)
        try:
            ctx = site.binder(module, args[0])
            extra = {**dict(zip(("output_size",), args[1:])), **kwargs}
            if site.kind != "affine" and (len(args) > 1 or kwargs):
                raise ValueError("arguments beyond the input are not supported")
            if set(extra) - {"output_size"} or len(args) > 2:
                raise ValueError(f"arguments beyond the input are not supported: {sorted(extra)}")
            if extra.get("output_size") is not None:
                ctx = (ctx[0], ctx[1].with_output_size(module, args[0], extra["output_size"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"module '{site.name}': {e}") from None
        # values only: contractions with a tensor that requires grad would record a graph
        # (and results stored on the parameters would keep it alive)
        ctx = (ctx[0].detach(), *ctx[1:])
        call = _Call(site, ctx, ctx[0]._version, output.numel(), tuple(output.shape))
        if self.first:
            output.register_hook(functools.partial(self._on_grad, call))
        if self.curvature:
            st.calls.append((call, torch.autograd.graph.get_gradient_edge(output)))
            output.register_hook(functools.partial(self._on_site_grad, call))

    # -- first order: during backward --------------------------------------------------
    def _on_grad(self, call: _Call, g: Tensor) -> None:
        st = self._state
        if st.busy:
            return
        st.pending.append((call, g))
        if not st.queued:
            st.queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._finalize)

    def _finalize(self) -> None:
        st = self._state
        pending, st.pending, st.queued = st.pending, [], False
        self._new_pass("first_order_passes")
        st.busy = True  # the torch.func fallback runs modules again: do not record that
        try:
            for site, calls, gs in group_by_site(pending):
                bound = self._bind(site, calls)
                results = first_order(
                    bound, [g.unsqueeze(0) for g in gs], self.first,
                    self.reuse_buffers and not self.accumulate,
                )
                for savefield, per_param in results.items():
                    self._store(self._by_field[savefield], site.params, per_param)
        finally:
            st.busy = False

    def _bind(self, site: _Site, calls: list[_Call]) -> BoundSite:
        for c in calls:
            if c.ctx[0]._version != c.version:
                raise RuntimeError(
                    f"module '{site.name}': its input was modified in place after the forward "
                    "pass; per-example quantities need the input as the layer saw it"
                )
        ns = {c.ctx[0].shape[0] for c in calls}
        if len(ns) > 1:
            raise ValueError(f"module '{site.name}' was called with different batch sizes {ns}")
        return SITES[site.kind](site.params, [c.ctx for c in calls])

    # -- curvature: when the loss is computed ------------------------------------------
    def _on_loss(self, module: nn.Module, args: Any, output: Tensor) -> None:
        st = self._state
        if st.busy or not torch.is_grad_enabled() or not output.requires_grad:
            return
        f = args[0]
        entry = LossCall()
        st.busy = True
        try:
            if self.curvature:
                loss_curvature(self.curvature, module, f, args[1], st.calls, self._bind, entry)
            for q in self.hutchinson:
                params = [p for p in self.model.parameters() if p.requires_grad]
                values = q.compute(output, params)
                entry.results.append((q, dict(enumerate(params)), dict(enumerate(values))))
            expected_gradients(output, f, st.calls if self.curvature else [], entry)
        finally:
            st.busy = False
        st.losses.append(entry)
        output.register_hook(functools.partial(self._on_loss_grad, entry, "scale"))
        if isinstance(f, Tensor) and f.requires_grad:
            f.register_hook(functools.partial(self._on_loss_grad, entry, "output_grad"))

    # -- the objective check, at the end of each backward ------------------------------
    def _queue_check(self) -> None:
        st = self._state
        if not st.check_queued:
            st.check_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._check_objective)

    def _on_loss_grad(self, entry: LossCall, slot: str, g: Tensor) -> None:
        if self._state.busy:
            return
        setattr(entry, slot, g.detach())
        self._queue_check()

    def _on_site_grad(self, call: _Call, g: Tensor) -> None:
        st = self._state
        if st.busy:
            return
        st.arrived[id(call)] = (call, g.detach())
        self._queue_check()

    def _check_objective(self) -> None:
        """Store the rescaled curvature of this backward's ``loss_fn`` call, or raise.

        Raises where the objective backpropagated is not a multiple of that one call.
        """
        st = self._state
        arrived, st.arrived, st.check_queued = st.arrived, {}, False
        fired = [e for e in st.losses if e.scale is not None or e.output_grad is not None]
        st.losses = [e for e in st.losses if e not in fired]
        wanted = ", ".join(map(repr, [*self.curvature, *self.hutchinson]))
        c = objective_scale(fired, arrived, wanted)
        if c is None:
            return
        (entry,) = fired
        self._new_pass("curvature_passes")
        for q, target, result in entry.results:
            scaled = q.scaled(result, c) if isinstance(q, CurvatureQuantity) else \
                {k: v * c for k, v in result.items()}
            self._store(q, target, scaled)

    # -- storing -----------------------------------------------------------------------
    def _new_pass(self, counter: str) -> None:
        """Count one backward that stores results; a second one needs ``accumulate``."""
        st = self._state
        done = getattr(st, counter)
        if done and not self.accumulate:
            raise ValueError(
                "record: a second backward inside one record context would overwrite the "
                "first's results (e.g. grad_batch would then hold only the last micro-batch "
                "and not sum to .grad). Use one record context per backward, or "
                "record(..., accumulate=True) to combine them like .grad."
            )
        setattr(st, counter, done + 1)

    def _store(self, q: Quantity, params: dict[Any, Any], per_param: dict[Any, Any]) -> None:
        """Set ``q``'s results on ``params``, combining with this context's earlier ones."""
        st = self._state
        for k, v in per_param.items():
            p = params[k]
            key = (id(p), q.savefield)
            if self.accumulate and key in st.stored:
                v = q.accumulate(getattr(p, q.savefield), v)
            st.stored.add(key)
            setattr(p, q.savefield, v)


def clear(model: nn.Module) -> nn.Module:
    """Delete every quantity result (``p.grad_batch``, ``p.diag_ggn_exact``, ...) of ``model``.

    Results otherwise stay on the parameters after the ``record`` context exits.

    Returns:
        ``model``.
    """
    from backprobe.quantities import curvature, first_order, hessian, kronecker

    fields = {
        cls.savefield for mod in (curvature, first_order, hessian, kronecker)
        for cls in vars(mod).values()
        if isinstance(cls, type) and issubclass(cls, Quantity) and cls.savefield
    }
    for p in model.parameters():
        for name in fields:
            p.__dict__.pop(name, None)
    return model
