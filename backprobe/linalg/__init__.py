"""Randomized numerical linear algebra on matrix-free operators (``backprobe.linalg``).

Every estimator takes a square (or, where noted, rectangular) operator: a tensor, a
:class:`LinearOperator` (e.g. the curvature operators :class:`HessianOperator`,
:class:`GGNOperator`, :class:`EFOperator`, :class:`MCFisherOperator`,
:class:`KFACOperator`), a callable with a ``shape`` (wrap a bare function with
:class:`MatrixFree`), or a scipy ``LinearOperator``. Matvecs are batched (one call per block
of probes); randomness comes from ``generator=`` (a ``torch.Generator`` or an int seed),
never from the global RNG.

* trace: :func:`trace` (``hutchinson``, ``hutchpp``, ``na_hutchpp``, ``xtrace``,
  ``xnystrace``, ``auto``), diagonal: :func:`diagonal` (``hutchinson``, ``xdiag``),
  :func:`frobenius_norm_squared`: return :class:`Estimate` / :class:`DiagonalEstimate`
  with a standard error and the matvecs spent; ``rtol``/``atol``/``max_matvecs`` stop
  adaptively;
* low rank: :func:`low_rank` (randomized SVD), :func:`nystrom` (PSD);
* spectrum: :func:`top_eigenpairs` (Lanczos, subspace iteration),
  :func:`spectral_density` (stochastic Lanczos quadrature).
"""

from backprobe.linalg._operator import LinearOperator, MatrixFree, TensorOperator, as_operator
from backprobe.linalg._probes import draw_probes, orthonormalise
from backprobe.linalg._results import DiagonalEstimate, Estimate
from backprobe.linalg.curvature import (
    CurvatureOperator,
    EFOperator,
    GGNOperator,
    HessianOperator,
    KFACInverseOperator,
    KFACOperator,
    MCFisherOperator,
)
from backprobe.linalg.diagonals import DIAGONAL_METHODS, diagonal, hutchinson_diag, xdiag
from backprobe.linalg.factorizations import LowRank, low_rank, nystrom
from backprobe.linalg.norms import frobenius_norm_squared
from backprobe.linalg.spectra import (
    Eigenpairs,
    SpectralDensity,
    lanczos,
    spectral_density,
    top_eigenpairs,
)
from backprobe.linalg.traces import (
    TRACE_METHODS,
    auto_trace,
    hutchinson_trace,
    hutchpp_trace,
    na_hutchpp_trace,
    trace,
    xnystrace,
    xtrace,
)

__all__ = [
    "CurvatureOperator", "EFOperator", "GGNOperator", "HessianOperator", "KFACInverseOperator",
    "KFACOperator", "MCFisherOperator",
    "DIAGONAL_METHODS", "TRACE_METHODS", "DiagonalEstimate", "Eigenpairs", "Estimate",
    "LinearOperator", "LowRank", "MatrixFree", "SpectralDensity", "TensorOperator",
    "as_operator", "auto_trace", "diagonal", "draw_probes", "frobenius_norm_squared",
    "hutchinson_diag", "hutchinson_trace", "hutchpp_trace", "lanczos", "low_rank",
    "na_hutchpp_trace", "nystrom", "orthonormalise", "spectral_density", "top_eigenpairs",
    "trace", "xdiag", "xnystrace", "xtrace",
]
