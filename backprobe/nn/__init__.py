"""Drop-in modules: estimated affine layers, compact activations and lean BatchNorm.

Every class subclasses its torch counterpart (same parameters, same ``state_dict``). The
affine ones (``Linear``, ``Conv2d``, ...) are generated for every registered affine op.
"""

from typing import Any

from backprobe.nn._affine import AFFINE_SWAPS, EstimatedLayer, dropin
from backprobe.nn._compact import (
    COMPACT_SWAPS,
    LeakyReLU,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
    ReLU,
    pack_bits,
    unpack_bits,
)
from backprobe.nn._norm import BatchNorm1d, BatchNorm2d, BatchNorm3d

#: The generated drop-ins by name (``Linear``, ``Conv1d``, ...).
DROPINS: dict[str, type[EstimatedLayer]] = {t.__name__: t for t in AFFINE_SWAPS.values()}
globals().update(DROPINS)


def __getattr__(name: str) -> Any:  # for type checkers: the drop-ins are generated
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AFFINE_SWAPS", "COMPACT_SWAPS", "DROPINS", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "EstimatedLayer", "LeakyReLU", "MaxPool1d", "MaxPool2d", "MaxPool3d", "ReLU", "dropin",
    "pack_bits", "unpack_bits", *DROPINS,
]
