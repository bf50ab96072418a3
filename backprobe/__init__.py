"""backprobe: backpropagation that keeps less and computes more.

Public API (see the README for examples):

* estimators: :class:`Exact`, :class:`Probe` (XConv), :class:`AOP` (Mem-AOP-GD)
* :func:`convert`, :func:`revert`, :func:`report`, :func:`set_estimator`
* drop-in modules: :mod:`backprobe.nn`
* memory measurement: :func:`saved_activation_bytes`, :func:`peak_memory` (a step's true peak)
* per-example quantities, curvature: :func:`record` with :class:`BatchGrad`, ... (BackPACK's names)
* optimizers: :mod:`backprobe.optim`
"""

from backprobe import nn, optim, quantities
from backprobe.convert import ConversionReport, convert, report, revert, set_estimator
from backprobe.estimators import AOP, Estimator, Exact, Probe, reset_memory
from backprobe.memory import saved_activation_bytes, saved_tensors
from backprobe.peak import PeakMemory, peak_memory
from backprobe.quantities import (
    KFAC,
    KFLR,
    KFRA,
    BatchDiagGGNExact,
    BatchDiagGGNMC,
    BatchGrad,
    BatchGradFactors,
    BatchL2Grad,
    DiagGGNExact,
    DiagGGNMC,
    DiagHessian,
    HutchinsonDiagHessian,
    SqrtGGNExact,
    SqrtGGNMC,
    SumGradSquared,
    Variance,
    record,
)

__version__ = "0.1.0"

__all__ = [
    "KFAC", "KFLR", "KFRA", "BatchDiagGGNExact", "BatchDiagGGNMC", "BatchGrad", "BatchGradFactors",
    "BatchL2Grad", "DiagGGNExact", "DiagGGNMC", "DiagHessian", "HutchinsonDiagHessian",
    "SqrtGGNExact", "SqrtGGNMC", "SumGradSquared", "Variance",
    "AOP", "ConversionReport", "Estimator", "Exact", "PeakMemory", "Probe", "convert", "nn",
    "optim", "peak_memory",
    "quantities", "record", "report", "reset_memory", "revert", "saved_activation_bytes",
    "saved_tensors", "set_estimator",
]
