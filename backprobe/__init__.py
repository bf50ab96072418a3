"""backprobe: backpropagation that keeps less and computes more.

Public API (see the README for examples):

* estimators: :class:`Exact`, :class:`Probe`
* :func:`convert`, :func:`revert`, :func:`report`, :func:`set_estimator`
* drop-in modules: :mod:`backprobe.nn`
* memory measurement: :func:`saved_activation_bytes`
"""

from backprobe import nn
from backprobe.convert import ConversionReport, convert, report, revert, set_estimator
from backprobe.estimators import Estimator, Exact, Probe
from backprobe.memory import saved_activation_bytes, saved_tensors

__version__ = "0.1.0"

__all__ = [
    "ConversionReport", "Estimator", "Exact", "Probe", "convert", "nn", "report", "revert",
    "saved_activation_bytes", "saved_tensors", "set_estimator",
]
