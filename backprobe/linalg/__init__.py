"""Randomized numerical linear algebra on matrix-free operators (``backprobe.linalg``)."""

from backprobe.linalg._operator import LinearOperator, MatrixFree, TensorOperator, as_operator
from backprobe.linalg._results import DiagonalEstimate, Estimate
from backprobe.linalg.traces import (
    TRACE_METHODS,
    hutchinson_trace,
    hutchpp_trace,
    na_hutchpp_trace,
    trace,
    xnystrace,
    xtrace,
)
