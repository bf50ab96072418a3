"""Drop-in modules: estimated affine layers and compact activations.

Every class subclasses its torch counterpart (same parameters, same ``state_dict``).
"""

from backprobe.nn._affine import (
    AFFINE_SWAPS,
    Conv1d,
    Conv2d,
    Conv3d,
    EstimatedLayer,
    Linear,
)
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

__all__ = [
    "AFFINE_SWAPS", "COMPACT_SWAPS", "Conv1d", "Conv2d", "Conv3d", "EstimatedLayer",
    "LeakyReLU", "Linear", "MaxPool1d", "MaxPool2d", "MaxPool3d", "ReLU", "pack_bits",
    "unpack_bits",
]
