"""Layer ops: the only code that knows module types, and the one registry of them.

Every module of this package is imported here, in name order (:data:`OP_MODULES`), and
registers its op classes with ``@register_op(...)`` (see :mod:`backprobe.layers._base`).
Adding a layer type is one new file in this folder; ``tests`` checks that every op module
registered something and runs every registered op against the float64 oracles.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from typing import Any

from torch import nn

from backprobe.layers._base import (
    KINDS,
    OPS,
    AffineOp,
    LayerOp,
    OpSpec,
    bind,
    module_types,
    op_for,
    register_op,
    spec_for,
)

#: The op modules of this package, imported in this order.
OP_MODULES: tuple[str, ...] = tuple(
    f"{__name__}.{m.name}"
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
    if not m.name.startswith("_")
)
for _name in OP_MODULES:
    importlib.import_module(_name)

from backprobe.layers.conv import ConvOp, bind_conv  # noqa: E402
from backprobe.layers.embedding import EmbeddingOp, bind_embedding  # noqa: E402
from backprobe.layers.linear import LinearOp, bind_linear  # noqa: E402
from backprobe.layers.norm import NormOp, bind_norm  # noqa: E402


def binder_for(module: nn.Module) -> Any:
    """The ``bind(module, x)`` of ``module``'s registered op, or ``None``."""
    spec = spec_for(module)
    return None if spec is None else spec.op.bind


def _deprecated_views() -> dict[str, Any]:
    return {
        "REGISTRY": {t: OPS[t].op.bind for t in module_types("affine")},
        "PER_EXAMPLE_REGISTRY": {
            t: OPS[t].op.bind for t in (*module_types("embedding"), *module_types("norm"))
        },
        "NORM_TYPES": module_types("norm"),
    }


def __getattr__(name: str) -> Any:
    views = _deprecated_views()
    if name in views:
        warnings.warn(
            f"backprobe.layers.{name} is deprecated; use backprobe.layers.OPS "
            "(or module_types(kind)), the one registry of module types",
            DeprecationWarning, stacklevel=2,
        )
        return views[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KINDS", "OPS", "OP_MODULES", "AffineOp", "ConvOp", "EmbeddingOp", "LayerOp", "LinearOp",
    "NormOp", "OpSpec", "bind", "bind_conv", "bind_embedding", "bind_linear", "bind_norm",
    "binder_for", "module_types", "op_for", "register_op", "spec_for",
]
