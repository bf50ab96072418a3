"""Acoustic wave modelling with low-memory imaging strategies (time probing, DFT, ...).

``model(v, dx, dt, wavelet, src_pos, rec_pos, imaging=...)`` returns receiver data and is
differentiable with respect to velocity and wavelet; the imaging strategy decides what
forward keeps and how backward forms the velocity gradient.
"""

from backprobe.wave.checkpoint import Checkpoint
from backprobe.wave.dft import DFT
from backprobe.wave.exact import Exact
from backprobe.wave.imaging import Imaging, ModellingInfo
from backprobe.wave.modelling import model
from backprobe.wave.time_probe import TimeProbe
from backprobe.wave.wavelets import ricker

__all__ = [
    "DFT",
    "Checkpoint",
    "Exact",
    "Imaging",
    "ModellingInfo",
    "TimeProbe",
    "model",
    "ricker",
]
