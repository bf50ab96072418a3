"""Acoustic wave modelling with low-memory imaging strategies (time probing, DFT, ...).

``model(v, dx, dt, wavelet, src_pos, rec_pos, imaging=...)`` returns receiver data and is
differentiable with respect to velocity and wavelet; the imaging strategy decides what
forward keeps and how backward forms the velocity gradient.
"""

from backprobe.wave.exact import Exact
from backprobe.wave.imaging import Imaging, ModellingInfo
from backprobe.wave.modelling import model
from backprobe.wave.wavelets import ricker

__all__ = ["Exact", "Imaging", "ModellingInfo", "model", "ricker"]
