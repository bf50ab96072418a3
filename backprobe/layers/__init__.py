"""Layer registry: the only code that knows module types.

``bind(module, x)`` returns the input as the layer's op sees it and the op (see
:class:`~backprobe.layers._base.AffineOp`). Adding a layer type = one file + one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from backprobe.layers._base import AffineOp
from backprobe.layers.conv import ConvOp, bind_conv
from backprobe.layers.linear import LinearOp, bind_linear

Binder = Callable[[nn.Module, Tensor], tuple[Tensor, AffineOp]]

#: Module type -> function describing it in canonical form.
REGISTRY: dict[type[nn.Module], Binder] = {
    nn.Linear: bind_linear,
    nn.Conv1d: bind_conv,
    nn.Conv2d: bind_conv,
    nn.Conv3d: bind_conv,
}


def binder_for(module: nn.Module) -> Binder | None:
    """The registered binder for ``module`` (its own type or nearest registered base)."""
    for cls in type(module).__mro__:
        if cls in REGISTRY:
            return REGISTRY[cls]
    return None


def bind(module: nn.Module, x: Tensor) -> tuple[Tensor, AffineOp]:
    """Describe ``module`` applied to ``x`` in canonical form.

    Raises:
        TypeError: if no layer description is registered for the module's type.
    """
    binder = binder_for(module)
    if binder is None:
        names = ", ".join(t.__name__ for t in REGISTRY)
        raise TypeError(
            f"{type(module).__name__} is not a supported layer (supported: {names})"
        )
    return binder(module, x)


__all__ = ["REGISTRY", "AffineOp", "ConvOp", "LinearOp", "bind", "binder_for"]

# Layers with parameters that are not in the canonical affine form ``W @ x + b`` but whose
# per-example parameter gradients have a closed form (used by ``backprobe.quantities``).
from backprobe.layers.embedding import EmbeddingOp, bind_embedding  # noqa: E402
from backprobe.layers.norm import NORM_TYPES, NormOp, bind_norm  # noqa: E402

#: Module type -> ``bind(module, x) -> (context, op)`` for non-affine parametrised layers.
PerExampleBinder = Callable[[nn.Module, Tensor], tuple[Tensor, object]]
PER_EXAMPLE_REGISTRY: dict[type[nn.Module], PerExampleBinder] = {
    nn.Embedding: bind_embedding,
    **{t: bind_norm for t in NORM_TYPES},
}

__all__ += [
    "NORM_TYPES", "PER_EXAMPLE_REGISTRY", "EmbeddingOp", "NormOp", "bind_embedding", "bind_norm",
]
