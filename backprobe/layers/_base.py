"""The op protocol and the one registry of module types.

An *op* describes one module type once. Affine ops (Linear, ConvNd, ...) describe the layer
in the canonical form ``output[n, s] = W @ input[n, s] + b`` for examples ``n`` and
weight-sharing positions ``s`` (inputs ``[N, S, D_in]``, output gradients ``[N, S, D_out]``);
estimators and quantities talk to layers only through that form and the optional fast
paths declared here (each returns ``None`` where the op has none). Per-example ops
(Embedding, normalisation layers) give closed-form per-example parameter gradients.

``@register_op(nn.Conv1d, nn.Conv2d)`` on an op class is the only place a module type is
named; the drop-in modules, ``convert``'s swaps, the estimators' natural layers and the
quantities' sites are all derived from :data:`OPS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

#: Kinds of ops: ``"affine"`` (canonical form), ``"norm"``, ``"embedding"``.
KINDS = ("affine", "norm", "embedding")

#: Bytes of activation-sized temporaries the probed paths allow themselves at once (the
#: flipped input of a sketch, the reconstruction ``x_hat``, a correlation block): they run
#: over the batch in chunks of about this many bytes (at least one row per chunk).
CHUNK_BYTES = 8 * 2**20


def chunks(total: int, item_bytes: int, budget: int | None = None) -> list[slice]:
    """Split ``range(total)`` into consecutive slices of at most ``budget`` bytes each.

    Args:
        total: number of items (rows, examples, probes).
        item_bytes: bytes one item's temporaries take.
        budget: bytes per chunk (default :data:`CHUNK_BYTES`); a chunk holds at least one
            item whatever its size.

    Returns:
        Slices covering ``0 .. total`` in order (one empty slice for ``total == 0``, so a
        loop over them always runs). The split depends only on the arguments, so a
        forward and its backward chunk alike.
    """
    if total <= 0:
        return [slice(0, 0)]
    budget = CHUNK_BYTES if budget is None else budget
    per = max(1, budget // max(1, item_bytes))
    size = -(-total // -(-total // per))  # as few chunks as the budget allows, evened out
    return [slice(lo, min(total, lo + size)) for lo in range(0, total, size)]


class LayerOp:
    """Base class of every registered op: a frozen dataclass describing one module call."""

    #: What the op provides: ``"affine"`` (the canonical form), ``"norm"`` or ``"embedding"``.
    kind: ClassVar[str]

    @classmethod
    def bind(cls, module: nn.Module, x: Tensor) -> tuple[Tensor, Any]:
        """Return ``(context, op)`` for ``module`` applied to ``x``.

        ``context`` is the input as the op needs it (padded input, normalised input, indices).
        """
        raise NotImplementedError


class AffineOp(LayerOp):
    """A layer in canonical form: everything estimators and quantities ask of a layer.

    Shapes: ``x`` is the layer input as the op sees it (already padded where the module
    asked for a non-zero padding mode), ``g`` the gradient of the layer output. The
    canonical input has ``D_in`` features counting *all* input channels: for ``groups > 1``
    its columns are grouped contiguously and the weight matrix is block diagonal.
    """

    kind: ClassVar[str] = "affine"
    #: Whether the op has weight-sharing positions (``S > 1`` in general): convolutions.
    shares_weights: ClassVar[bool] = False
    #: Weight groups (the weight matrix is block diagonal with this many blocks).
    groups: int

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_module(cls, module: nn.Module) -> AffineOp:
        """The op of ``module`` (its geometry only; needs no input)."""
        raise NotImplementedError

    @classmethod
    def bind(cls, module: nn.Module, x: Tensor) -> tuple[Tensor, AffineOp]:
        """``(prepare(x), op)``: the input as the op sees it, and the op."""
        op = cls.from_module(module)
        return op.prepare(x), op

    def prepare(self, x: Tensor) -> Tensor:
        """The input as the op sees it (e.g. padded for non-zero padding modes)."""
        return x

    def with_output_size(self, module: nn.Module, x: Tensor, output_size: Any) -> AffineOp:
        """The op for a call with ``output_size=`` (transposed convolutions only).

        Raises:
            TypeError: for ops whose module takes no ``output_size``.
        """
        raise TypeError(f"{type(module).__name__} takes no output_size argument")

    # -- geometry ------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        """Canonical input features ``D_in`` (all input channels times kernel size)."""
        raise NotImplementedError

    @property
    def d_out(self) -> int:
        """Canonical output features ``D_out``."""
        raise NotImplementedError

    # -- exact math ----------------------------------------------------------------------
    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's forward pass."""
        raise NotImplementedError

    def backward(
        self, x: Tensor | None, g: Tensor, weight: Tensor, input_shape: tuple[int, ...],
        mask: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Exact (input, weight, bias) gradients for the entries of ``mask`` in one call.

        ``x`` may be ``None`` when the weight gradient is not requested.
        """
        raise NotImplementedError

    def weight_grad(self, x: Tensor, g: Tensor, groups: int | None = None) -> Tensor:
        """Exact weight gradient ``sum_{n,s} g[n,s] (outer) x[n,s]`` in the weight's layout.

        ``x`` and ``g`` may have other batch sizes and channel counts than the layer's own
        (the probed paths feed probe images here); ``groups`` overrides the layer's.
        """
        raise NotImplementedError

    def canonical_input(self, x: Tensor) -> Tensor:
        """The unfolded input ``[N, S, D_in]``."""
        raise NotImplementedError

    def canonical_output_grad(self, g: Tensor) -> Tensor:
        """The output gradient as ``[N, S, D_out]``."""
        raise NotImplementedError

    def weight_from_matrix(self, m: Tensor) -> Tensor:
        """Map ``[..., D_out, D_in]`` matrices back to ``[..., *weight.shape]``.

        For ``groups > 1`` only the block-diagonal part is read.
        """
        raise NotImplementedError

    def weight_from_blocks(self, blocks: Tensor) -> Tensor:
        """Map diagonal blocks ``[..., G, D_out/G, D_in/G]`` to ``[..., *weight.shape]``."""
        lead, grp = blocks.shape[:-3], blocks.shape[-3]
        if grp == 1:
            return self.weight_from_matrix(blocks.squeeze(-3))
        b = blocks.reshape(-1, *blocks.shape[-3:])
        full = torch.stack([torch.block_diag(*bi.unbind(0)) for bi in b])
        return self.weight_from_matrix(full.reshape(*lead, *full.shape[-2:]))

    def matrix_view(self, w: Tensor) -> Tensor | None:
        """``[..., *weight.shape]`` viewed as ``[..., D_out, D_in]`` matrices, or ``None``.

        Only where the weight's memory layout *is* the canonical matrix's (a free reshape):
        callers then write matrix results straight into weight-shaped buffers, and
        Kronecker factors and ``(delta, a)`` factors of the matrix apply to the weight as is.
        """
        return None

    # -- probing -------------------------------------------------------------------------
    def probe_view(self, x: Tensor, mode: str) -> Tensor:
        """View ``x`` as ``[B, C, Q]``: ``B`` rows probed independently, ``C`` sketches each.

        ``Q`` is the probe domain (positions per channel for ``mode="channel"``, or
        channels and positions jointly for ``"joint"``).
        """
        if mode == "channel":
            return x.flatten(2)
        return x.reshape(x.shape[0], 1, -1)

    def rows(self, t: Tensor) -> Tensor:
        """Reshape an input or output gradient so its first dim is ``probe_view``'s ``B``."""
        return t

    # -- optional fast paths (``None`` where absent) -------------------------------------
    def per_example_weight_grad(self, x: Tensor, g: Tensor) -> Tensor | None:
        """Per-example weight gradients ``[N, *weight.shape]`` without unfolding, or ``None``."""
        return None

    def input_second_moment(self, x: Tensor, out_sizes: tuple[int, ...]) -> Tensor | None:
        """``sum_{n,s} a[n,s] a[n,s]^T`` (``[D_in, D_in]``) without unfolding, or ``None``."""
        return None

    def row_scores(self, x: Tensor, g: Tensor) -> Tensor | None:
        """Frobenius norms ``[N * S]`` of every canonical row's product, or ``None``.

        For ``groups > 1``, of the block-diagonal part the weight uses.
        """
        return None

    def gather_rows(self, x: Tensor, g: Tensor, idx: Tensor) -> tuple[Tensor, Tensor] | None:
        """Rows ``idx`` (flat ``n * S + s``) of the canonical input and output gradient."""
        return None

    def shared_probe_weight_grad(
        self, sketch: Tensor, z: Tensor, row_shape: tuple[int, ...], g: Tensor
    ) -> Tensor | None:
        """Channel-mode probed weight gradient for probes shared by the batch, or ``None``.

        ``sketch`` ``[N, C, r]`` holds ``<x[n, c], z_j>``, ``z`` ``[r, Q]`` the probes;
        returns ``(1/r) sum_{n,j} sketch[n, :, j] corr(g[n], z_j)`` in the weight's layout.
        """
        return None


    def per_example_probe_weight_grad(
        self, sketch: Tensor, probes: Callable[[slice], Tensor], row_shape: tuple[int, ...],
        g: Tensor,
    ) -> Tensor | None:
        """Channel-mode probed weight gradient for per-example probes, or ``None``.

        ``sketch`` ``[N, C, r]`` holds ``<x[n, c], z_nj>``, ``probes(slice)`` gives the
        probes ``[len, r, Q]`` of those examples; returns
        ``(1/r) sum_{n,j} sketch[n, :, j] corr(g[n], z_nj)`` in the weight's layout.
        """
        return None


@dataclass(frozen=True)
class OpSpec:
    """One registration: an op class and the module types it describes.

    Attributes:
        op: the op class (a :class:`LayerOp` subclass).
        module_types: the module types named in its ``register_op``.
        linear_in_input: whether the module's output is affine in its input for fixed
            parameters (so the network's Hessian in the parameters is its GGN wherever the
            other modules are piecewise linear).
        origin: the module that registered it (one op file).
    """

    op: type[LayerOp]
    module_types: tuple[type[nn.Module], ...]
    linear_in_input: bool
    origin: str

    @property
    def kind(self) -> str:
        """The op's kind (see :data:`KINDS`)."""
        return self.op.kind


#: Module type -> its registration. Filled by ``register_op`` when ``backprobe.layers``
#: imports every op module of the package.
OPS: dict[type[nn.Module], OpSpec] = {}

T = TypeVar("T", bound=type[LayerOp])


def register_op(*module_types: type[nn.Module], linear_in_input: bool = True) -> Callable[[T], T]:
    """Class decorator: ``op_cls`` describes ``module_types`` (the only place they are named).

    Raises:
        ValueError: if a type is registered twice or the op's kind is unknown.
    """
    def deco(op_cls: T) -> T:
        if op_cls.kind not in KINDS:
            raise ValueError(f"register_op: {op_cls.__name__}.kind must be one of {KINDS}")
        for t in module_types:
            if t in OPS:
                raise ValueError(f"register_op: {t.__name__} is already registered")
            OPS[t] = OpSpec(op_cls, module_types, linear_in_input, op_cls.__module__)
        return op_cls

    return deco


def spec_for(module: nn.Module | type[nn.Module]) -> OpSpec | None:
    """The registration of ``module``'s type (its own or its nearest registered base)."""
    cls = module if isinstance(module, type) else type(module)
    for base in cls.__mro__:
        if base in OPS:
            return OPS[base]
    return None


def module_types(kind: str | None = None, *, shares_weights: bool | None = None
                 ) -> tuple[type[nn.Module], ...]:
    """Registered module types, in registration order, optionally of one kind.

    Args:
        kind: ``"affine"``, ``"norm"``, ``"embedding"``, or ``None`` for all.
        shares_weights: affine ops only: keep those with (``True``) or without (``False``)
            weight-sharing positions.
    """
    out = []
    for t, spec in OPS.items():
        if kind is not None and spec.kind != kind:
            continue
        if shares_weights is not None and (
            not issubclass(spec.op, AffineOp) or spec.op.shares_weights != shares_weights
        ):
            continue
        out.append(t)
    return tuple(out)


def bind(module: nn.Module, x: Tensor) -> tuple[Tensor, AffineOp]:
    """Describe an affine ``module`` applied to ``x`` in canonical form.

    Raises:
        TypeError: if no affine op is registered for the module's type.
    """
    spec = spec_for(module)
    if spec is None or not issubclass(spec.op, AffineOp):
        names = ", ".join(t.__name__ for t in module_types("affine"))
        raise TypeError(
            f"{type(module).__name__} is not a supported layer (supported: {names})"
        )
    return spec.op.bind(module, x)


def op_for(module: nn.Module) -> AffineOp:
    """The affine op of ``module`` without an input (its geometry: ``d_in``, ``d_out``, ...).

    Raises:
        TypeError: if no affine op is registered for the module's type.
    """
    spec = spec_for(module)
    if spec is None or not issubclass(spec.op, AffineOp):
        raise TypeError(f"{type(module).__name__} is not a supported affine layer")
    return spec.op.from_module(module)
