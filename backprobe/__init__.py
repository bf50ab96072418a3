"""backprobe: backpropagation that keeps less and computes more.

Public API (see the README for examples):

* estimators: :class:`Exact`, :class:`Probe` (XConv), :class:`AOP` (Mem-AOP-GD)
* :func:`convert`, :func:`revert`, :func:`report`, :func:`set_estimator`
* drop-in modules: :mod:`backprobe.nn`
* memory measurement: :func:`saved_activation_bytes`
"""

from backprobe import nn
from backprobe.convert import ConversionReport, convert, report, revert, set_estimator
from backprobe.estimators import AOP, Estimator, Exact, Probe, reset_memory
from backprobe.memory import saved_activation_bytes, saved_tensors

__version__ = "0.1.0"

__all__ = [
    "AOP", "ConversionReport", "Estimator", "Exact", "Probe", "convert", "nn", "report",
    "reset_memory", "revert", "saved_activation_bytes", "saved_tensors", "set_estimator",
]
