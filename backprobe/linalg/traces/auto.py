"""Automatic choice between Hutchinson and deflation (XTrace / XNysTrace).

The rule compares the two methods' predicted variances after a pilot that is never wasted.

1. Pilot: ``s = m/2`` probes ``W``, one block ``Y = A W``. These are ``s`` Hutchinson samples
   *and* the first half of an XTrace/XNysTrace sketch.
2. Measure how much of ``A`` the sketch misses. For each probe, the part of ``y_i`` outside
   the span of the other ``s - 1`` products, ``||(I - P_{-i}) y_i||^2 = 1 / (G^{-1})_ii``
   (``G = Y^T Y``), has expectation ``||(I - P_{-i}) A||_F^2`` because ``w_i`` is independent
   of ``P_{-i}``; likewise ``E ||y_i||^2 = ||A||_F^2``. Their ratio of means,

       rho = mean_i ||(I - P_{-i}) y_i||^2 / mean_i ||y_i||^2,

   estimates the fraction of ``||A||_F^2`` left after deflating by a rank-``(s-1)`` sketch.
3. Predicted variances at ``m`` matvecs: Hutchinson ``~ 2 ||A||_F^2 / m``; XTrace deflates
   with the same ``s``-probe sketch and averages ``s = m/2`` residual samples,
   ``~ 2 rho ||A||_F^2 / (m/2)``. Deflation pays iff ``rho < 1/2``.
4. Then: ``rho >= 1/2`` (flat spectrum) - Hutchinson, spending the remaining ``m - s`` on new
   probes; ``rho < 1/2`` and the operator known PSD (``op.psd``, e.g. a GGN) or its sketch
   ``W^T A W`` positive definite for a symmetric operator - XNysTrace, the remaining ``m - s``
   probes join the Nystrom sketch (on PSD matrices it beats XTrace, whose second block only
   re-multiplies the basis); otherwise XTrace (the second block is ``A Q``).

Every branch is unbiased (each is an unbiased method fed independent probes; the choice
only depends on the pilot's products, which all branches then use as their own). The
standard error is the chosen method's.
"""

from __future__ import annotations

from typing import Any

import torch

from backprobe.linalg._operator import square_operator
from backprobe.linalg._probes import as_generator, check_distribution, draw_block
from backprobe.linalg._results import Estimate, Stopping, check_matvecs
from backprobe.linalg.traces.hutchinson import HutchinsonTrace
from backprobe.linalg.traces.xnystrace import XNysTrace
from backprobe.linalg.traces.xtrace import XTrace, loo_directions

#: deflate when the sketch leaves less than this fraction of ``||A||_F^2``
DEFLATION_THRESHOLD = 0.5


def missed_fraction(y: torch.Tensor) -> float:
    """``rho`` of step 2: the leave-one-out fraction of ``||A||_F^2`` outside the sketch ``Y``."""
    y = y.double()
    r = torch.linalg.qr(y).R
    s = loo_directions(r)
    # 1 / (G^{-1})_ii = ||(I - P_{-i}) y_i||^2 = (r_i^T s_i)^2 with s_i the normalised R^{-T} e_i
    resid = ((r * s).sum(0)) ** 2
    total = (y * y).sum(0)
    return float(resid.mean() / total.mean().clamp_min(torch.finfo(y.dtype).tiny))


def _sketch_is_pd(w: torch.Tensor, y: torch.Tensor) -> bool:
    h = w.double().mT @ y.double()
    if not torch.allclose(h, h.mT, rtol=1e-4, atol=1e-6 * float(h.abs().max())):
        return False
    return int(torch.linalg.cholesky_ex((h + h.mT) / 2).info) == 0


def auto_trace(
    A: Any, num_matvecs: int, *, distribution: str = "rademacher",
    generator: torch.Generator | int | None = None, rtol: float | None = None,
    atol: float | None = None, max_matvecs: int | None = None,
) -> Estimate:
    """Trace estimate by the method the pilot predicts best (see the module docstring).

    Args:
        A: square operator.
        num_matvecs: even, ``>= 4``; at most ``2n``.
        distribution: probe distribution.
        generator: private generator or seed.
        rtol: adaptive stopping, as the chosen method's.
        atol: see ``rtol``.
        max_matvecs: budget with tolerances.

    Returns:
        :class:`~backprobe.linalg.Estimate` whose ``method`` names the choice.

    Raises:
        ValueError: non-square ``A``, ``num_matvecs`` odd or ``< 4``.
    """
    op = square_operator(A)
    check_matvecs(num_matvecs, 4, "auto", multiple=2)
    check_distribution(distribution)
    n = op.shape[0]
    if num_matvecs // 2 > n:
        raise ValueError(f"auto: num_matvecs/2 = {num_matvecs // 2} exceeds the dimension {n}")
    gen = as_generator(generator)
    s = num_matvecs // 2
    w = draw_block(n, s, distribution, gen, op.dtype, op.device)
    y = op.matmat(w)
    rho = missed_fraction(y)
    est: HutchinsonTrace | XTrace | XNysTrace
    if rho >= DEFLATION_THRESHOLD:
        method, est, cap = "hutchinson", HutchinsonTrace(op, distribution, gen), 100 * s
    elif (op.psd or (op.symmetric and _sketch_is_pd(w, y))) and num_matvecs <= n:
        method, est, cap = "xnystrace", XNysTrace(op, distribution, gen), n
    else:
        method, est, cap = "xtrace", XTrace(op, distribution, gen), 2 * n
    stop = Stopping.make(num_matvecs, rtol, atol, max_matvecs, cap)
    est.add_block(w, y)  # XTrace: spends s matvecs on A Q for the pilot's basis
    if method == "xtrace":
        est.spent += s
    else:
        est.spent = s
        est.add(s)  # s new probes
    while True:
        value, err = est.estimate()
        room = not isinstance(est, XTrace) or est.q.shape[1] + s <= n
        if stop.done(value, err, est.spent, num_matvecs) or not room:
            return Estimate(value, err, est.spent, f"auto:{method}")
        est.add(s)
