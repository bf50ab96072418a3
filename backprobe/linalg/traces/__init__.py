"""Trace estimators, one method per file: ``trace(A, num_matvecs, method=...)`` dispatches."""

from __future__ import annotations

from typing import Any

import torch

from backprobe.linalg._results import Estimate
from backprobe.linalg.traces.auto import auto_trace
from backprobe.linalg.traces.hutchinson import hutchinson_trace
from backprobe.linalg.traces.hutchpp import hutchpp_trace, na_hutchpp_trace
from backprobe.linalg.traces.xnystrace import xnystrace
from backprobe.linalg.traces.xtrace import xtrace

TRACE_METHODS = ("hutchinson", "hutchpp", "na_hutchpp", "xtrace", "xnystrace", "auto")

__all__ = ["TRACE_METHODS", "auto_trace", "hutchinson_trace", "hutchpp_trace",
           "na_hutchpp_trace", "trace", "xnystrace", "xtrace"]


def trace(
    A: Any, num_matvecs: int, *, method: str = "hutchinson", distribution: str = "rademacher",
    generator: torch.Generator | int | None = None, rtol: float | None = None,
    atol: float | None = None, max_matvecs: int | None = None,
) -> Estimate:
    """Estimate ``tr(A)`` from matrix-vector products.

    ============== ====================================================== ================
    method         estimator                                              unbiased / error
    ============== ====================================================== ================
    hutchinson     mean of ``z^T A z``                                    yes / std error
    hutchpp        Hutch++: sketch + Hutchinson on the remainder          yes / of the rest
    na_hutchpp     NA-Hutch++: one block, ``A^T`` products                yes / of the rest
    xtrace         XTrace: leave-one-out Hutch++ (exchangeable)           yes / LOO spread
    xnystrace      XNysTrace: leave-one-out Nystrom (PSD ``A``)           yes / LOO spread
    auto           pilot block, then Hutchinson or XTrace/XNysTrace       yes / chosen one
    ============== ====================================================== ================

    See each method's module for its formula and reference, and
    :mod:`backprobe.linalg.traces.auto` for the rule ``"auto"`` follows.

    Args:
        A: square operator: tensor ``[n, n]``, :class:`~backprobe.linalg.LinearOperator`
            (e.g. :class:`~backprobe.linalg.HessianOperator`), callable with a ``shape``
            (``f(X [n, k]) -> [n, k]``), or scipy ``LinearOperator``.
        num_matvecs: matvecs of the first block(s).
        method: one of :data:`TRACE_METHODS`.
        distribution: ``"rademacher"``, ``"gaussian"``, ``"sphere"`` or ``"uniform"``.
        generator: ``torch.Generator`` or int seed (``None``: a private generator seeded
            from the global RNG; draws never touch the global RNG).
        rtol: stop adaptively once ``std_error <= max(atol, rtol * |value|)`` ...
        atol: ... spending further blocks (not for ``na_hutchpp``).
        max_matvecs: the adaptive budget.

    Returns:
        :class:`~backprobe.linalg.Estimate` (value, standard error, matvecs spent, method).

    Raises:
        ValueError: unknown method, non-square ``A``, ``num_matvecs`` too small for the
            method, tolerances with ``na_hutchpp``.

    Example:
        >>> a = torch.diag(torch.linspace(1, 2, 100, dtype=torch.float64))
        >>> est = trace(a, 20, method="auto", generator=0)
        >>> round(est.value, 6), est.num_matvecs, est.method  # flat: Hutchinson, exact here
        (150.0, 20, 'auto:hutchinson')
    """
    kw: dict[str, Any] = {"distribution": distribution, "generator": generator}
    adaptive: dict[str, Any] = {"rtol": rtol, "atol": atol, "max_matvecs": max_matvecs}
    if method == "na_hutchpp":
        if rtol is not None or atol is not None:
            raise ValueError("na_hutchpp is non-adaptive: rtol/atol are not supported")
        return na_hutchpp_trace(A, num_matvecs, **kw)
    fns = {"hutchinson": hutchinson_trace, "hutchpp": hutchpp_trace, "xtrace": xtrace,
           "xnystrace": xnystrace, "auto": auto_trace}
    if method not in fns:
        raise ValueError(f"method must be one of {TRACE_METHODS}, got {method!r}")
    return fns[method](A, num_matvecs, **kw, **adaptive)
