"""Acoustic wave modelling with low-memory imaging strategies (time probing, DFT, ...).

``model(v, dx, dt, wavelet, src_pos, rec_pos, imaging=...)`` returns receiver data and is
differentiable with respect to velocity and wavelet; the imaging strategy decides what
forward keeps and how backward forms the velocity gradient.
"""

from backprobe.wave.checkpoint import Checkpoint
from backprobe.wave.dft import DFT
from backprobe.wave.exact import Exact
from backprobe.wave.fwi import (
    FWIResult,
    Misfit,
    Precondition,
    Survey,
    fwi,
    model_error,
    simulate,
    surface_survey,
)
from backprobe.wave.imaging import Imaging, ModellingInfo
from backprobe.wave.io import ShotGathers, read_raw, read_segy, write_raw, write_segy
from backprobe.wave.modelling import model
from backprobe.wave.optimize import SPG, SPGState, lbfgsb
from backprobe.wave.time_probe import TimeProbe
from backprobe.wave.velocity_models import layered, overthrust, smooth, water_rows
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
    # FWI, models and data
    "FWIResult",
    "Misfit",
    "Precondition",
    "SPG",
    "SPGState",
    "ShotGathers",
    "Survey",
    "fwi",
    "layered",
    "lbfgsb",
    "model_error",
    "overthrust",
    "read_raw",
    "read_segy",
    "simulate",
    "smooth",
    "surface_survey",
    "water_rows",
    "write_raw",
    "write_segy",
]
