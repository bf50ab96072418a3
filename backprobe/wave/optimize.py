"""Bound-constrained optimisers for FWI: spectral projected gradient and L-BFGS-B.

Both minimise ``f(x)`` subject to ``lower <= x <= upper`` (elementwise; scalars or tensors)
given ``fun(x) -> (f, g)`` that returns the value (a float) and the gradient (a tensor shaped
like ``x``). State is explicit: :class:`SPG` keeps a :class:`SPGState` dataclass that a caller
can inspect, log or checkpoint between steps::

    spg = SPG(lower=1400.0, upper=4500.0)
    state = spg.init(v0, fun)
    for _ in range(20):
        state = spg.step(state, fun)
    state.x, state.f, state.history

:func:`lbfgsb` hands the same problem to SciPy's L-BFGS-B (SciPy imported when called).

References:
    E. G. Birgin, J. M. Martinez, M. Raydan, "Nonmonotone spectral projected gradient
    methods on convex sets", SIAM J. Optim. 10 (2000) 1196-1211 (algorithm SPG2).
    R. H. Byrd, P. Lu, J. Nocedal, C. Zhu, "A limited memory algorithm for bound constrained
    optimization", SIAM J. Sci. Comput. 16 (1995) 1190-1208.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["SPG", "Bounds", "SPGState", "lbfgsb", "project"]

Bounds = float | torch.Tensor | None
Objective = Callable[[torch.Tensor], tuple[float, torch.Tensor]]


def project(x: torch.Tensor, lower: Bounds, upper: Bounds) -> torch.Tensor:
    """Projection onto the box ``lower <= x <= upper`` (``None`` = unbounded side)."""
    if lower is None and upper is None:
        return x
    if isinstance(lower, torch.Tensor) or isinstance(upper, torch.Tensor):
        lo = None if lower is None else torch.as_tensor(lower, dtype=x.dtype, device=x.device)
        hi = None if upper is None else torch.as_tensor(upper, dtype=x.dtype, device=x.device)
        return torch.clamp(x, min=lo, max=hi)
    return torch.clamp(x, min=lower, max=upper)


def _check_bounds(lower: Bounds, upper: Bounds) -> None:
    for name, b in (("lower", lower), ("upper", upper)):
        if isinstance(b, torch.Tensor):
            if torch.isnan(b).any():
                raise ValueError(f"{name} bound has NaN entries")
        elif b is not None and math.isnan(float(b)):
            raise ValueError(f"{name} bound is NaN")
    if lower is not None and upper is not None:
        lo = torch.as_tensor(lower, dtype=torch.float64)
        hi = torch.as_tensor(upper, dtype=torch.float64)
        if bool((lo > hi).any()):
            raise ValueError("lower bound exceeds upper bound")


@dataclass
class SPGState:
    """What :class:`SPG` carries between iterations (all inspectable).

    Attributes:
        x: the current iterate (feasible).
        f: the objective at ``x``.
        g: the gradient at ``x``.
        alpha: the spectral (Barzilai-Borwein) step length for the next iteration.
        recent: the last ``memory`` objective values (the non-monotone reference).
        iteration: completed iterations.
        evaluations: calls of ``fun`` so far (including the one at the start point).
        history: the objective after each iteration, starting with the start point's.
        steps: the accepted line-search fraction ``lambda`` of each iteration.
    """

    x: torch.Tensor
    f: float
    g: torch.Tensor
    alpha: float
    recent: list[float] = field(default_factory=list)
    iteration: int = 0
    evaluations: int = 1
    history: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)

    def projected_gradient_norm(self, lower: Bounds, upper: Bounds) -> float:
        """``||P(x - g) - x||_inf``: zero exactly at a stationary point of the box problem."""
        return float((project(self.x - self.g, lower, upper) - self.x).abs().max())


class SPG:
    """Spectral projected gradient with a non-monotone line search (Birgin et al.'s SPG2).

    Iteration: ``d = P(x - alpha g) - x``; backtrack ``x + lambda d`` until
    ``f(x + lambda d) <= max(last M values) + gamma lambda g.d`` (safeguarded quadratic
    interpolation); then ``alpha = s.s / s.y`` (clipped to ``[alpha_min, alpha_max]``, or
    ``alpha_max`` when ``s.y <= 0``) with ``s``, ``y`` the changes of ``x`` and ``g``. Every
    iterate is feasible: ``d`` points from a feasible ``x`` to a feasible point, so the box is
    convex-combination closed. The non-monotone test lets the objective rise for a while, which
    is what makes the spectral step effective.

    Args:
        lower: lower bound (scalar, tensor broadcastable to ``x``, or ``None``).
        upper: upper bound (same).
        memory: ``M``, the number of past values in the non-monotone test (1 = monotone).
        gamma: sufficient-decrease constant.
        first_step: the first iteration's step scales the gradient so that its largest
            entry moves ``x`` by this much (in the units of ``x``, e.g. m/s); ``None`` uses
            ``alpha = 1 / ||P(x - g) - x||_inf`` (Birgin et al.'s choice).
        alpha_min: smallest spectral step.
        alpha_max: largest spectral step.
        max_backtracks: the most function evaluations of one line search.

    Raises:
        ValueError: for inconsistent bounds or non-positive parameters.
    """

    def __init__(self, lower: Bounds = None, upper: Bounds = None, *, memory: int = 10,
                 gamma: float = 1e-4, first_step: float | None = None,
                 alpha_min: float = 1e-30, alpha_max: float = 1e30,
                 max_backtracks: int = 10) -> None:
        _check_bounds(lower, upper)
        if memory < 1:
            raise ValueError(f"memory must be >= 1, got {memory}")
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        if first_step is not None and not first_step > 0:
            raise ValueError(f"first_step must be positive, got {first_step}")
        if not 0 < alpha_min <= alpha_max:
            raise ValueError(f"need 0 < alpha_min <= alpha_max, got {alpha_min}, {alpha_max}")
        if max_backtracks < 1:
            raise ValueError(f"max_backtracks must be >= 1, got {max_backtracks}")
        self.lower, self.upper = lower, upper
        self.memory, self.gamma, self.first_step = memory, gamma, first_step
        self.alpha_min, self.alpha_max = alpha_min, alpha_max
        self.max_backtracks = max_backtracks

    def init(self, x0: torch.Tensor, fun: Objective) -> SPGState:
        """Project ``x0``, evaluate ``fun`` there and pick the first step length.

        Args:
            x0: start point (projected onto the box first).
            fun: ``x -> (f, g)``.

        Returns:
            The state at the start point (``iteration = 0``).
        """
        x = project(x0.detach().clone(), self.lower, self.upper)
        f, g = fun(x)
        f = float(f)
        if not math.isfinite(f):
            raise ValueError(f"objective is not finite at the start point: {f}")
        if self.first_step is not None:
            scale = float(g.abs().max())
            alpha = self.first_step / scale if scale > 0 else 1.0
        else:
            pg = float((project(x - g, self.lower, self.upper) - x).abs().max())
            alpha = 1.0 / pg if pg > 0 else 1.0
        alpha = min(max(alpha, self.alpha_min), self.alpha_max)
        return SPGState(x=x, f=f, g=g.detach(), alpha=alpha, recent=[f], history=[f])

    def step(self, state: SPGState, fun: Objective) -> SPGState:
        """One SPG iteration from ``state`` (a new state; ``state`` is not modified).

        Args:
            state: from :meth:`init` or a previous :meth:`step`.
            fun: ``x -> (f, g)``.

        Returns:
            The next state. When the projected gradient is zero the iterate is stationary
            and is returned unchanged (with ``iteration`` advanced).
        """
        x, g = state.x, state.g
        d = project(x - state.alpha * g, self.lower, self.upper) - x
        gtd = float((g * d).sum())
        evaluations = state.evaluations
        if gtd >= 0 or float(d.abs().max()) == 0.0:
            return self._next(state, x, state.f, g, state.alpha, 0.0, evaluations)
        f_ref = max(state.recent)
        lam = 1.0
        for _ in range(self.max_backtracks):
            x_new = project(x + lam * d, self.lower, self.upper)  # exact box; guards rounding
            f_new, g_new = fun(x_new)
            f_new = float(f_new)
            evaluations += 1
            if math.isfinite(f_new) and f_new <= f_ref + self.gamma * lam * gtd:
                break
            denom = f_new - state.f - lam * gtd
            trial = -0.5 * lam * lam * gtd / denom if math.isfinite(f_new) and denom > 0 else 0.0
            lam = trial if 0.1 * lam <= trial <= 0.9 * lam else 0.5 * lam
        else:
            # Line search exhausted: keep the best point seen only if it decreased f.
            if not (math.isfinite(f_new) and f_new < state.f):
                return self._next(state, x, state.f, g, state.alpha * 0.1, 0.0, evaluations)
        s = x_new - x
        y = g_new.detach() - g
        sty = float((s * y).sum())
        alpha = (min(max(float((s * s).sum()) / sty, self.alpha_min), self.alpha_max)
                 if sty > 0 else self.alpha_max)
        return self._next(state, x_new, f_new, g_new.detach(), alpha, lam, evaluations)

    def _next(self, state: SPGState, x: torch.Tensor, f: float, g: torch.Tensor, alpha: float,
              lam: float, evaluations: int) -> SPGState:
        recent = (state.recent + [f])[-self.memory:]
        return SPGState(x=x, f=f, g=g, alpha=alpha, recent=recent,
                        iteration=state.iteration + 1, evaluations=evaluations,
                        history=state.history + [f], steps=state.steps + [lam])


def lbfgsb(fun: Objective, x0: torch.Tensor, *, lower: Bounds = None, upper: Bounds = None,
           iterations: int = 20, memory: int = 10, first_step: float | None = None,
           ftol: float = 1e-12, gtol: float = 0.0,
           callback: Callable[[int, torch.Tensor, float], None] | None = None,
           ) -> tuple[torch.Tensor, list[float], int]:
    """Minimise ``fun`` in a box with SciPy's L-BFGS-B (SciPy imported here).

    SciPy works in float64 NumPy on the scaled variables ``z = x / scale``; ``fun`` receives
    tensors of ``x0``'s dtype and device. L-BFGS-B's first trial step has unit length in
    ``z``, so ``scale`` decides the size of the first update: with ``first_step`` it is chosen
    so that the first trial moves the largest-gradient entry of ``x`` by ``first_step``
    (without it, ``scale = 1``). Its line search needs several evaluations in some
    iterations, so evaluations > iterations.

    Args:
        fun: ``x -> (f, g)``.
        x0: start point (projected onto the box first).
        lower: lower bound (scalar, tensor broadcastable to ``x0``, or ``None``).
        upper: upper bound.
        iterations: the most L-BFGS-B iterations.
        memory: number of correction pairs.
        first_step: size of the first update's largest entry, in the units of ``x``.
        ftol: SciPy's relative-decrease stopping tolerance (default: tiny, so that
            ``iterations`` decides; SciPy's own default is about 2e-9).
        gtol: SciPy's projected-gradient stopping tolerance (default 0, for the same reason).
        callback: called after each iteration with ``(iteration, x, f)``.

    Returns:
        ``(x, history, evaluations)``: the final iterate, the objective at the start and
        after each iteration, and the number of calls of ``fun``.

    Raises:
        ValueError: for inconsistent bounds, ``iterations < 1`` or a non-positive
            ``first_step``.
        ImportError: without SciPy.
    """
    _check_bounds(lower, upper)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if first_step is not None and not first_step > 0:
        raise ValueError(f"first_step must be positive, got {first_step}")
    import numpy as np
    from scipy.optimize import Bounds as ScipyBounds
    from scipy.optimize import minimize

    shape, dtype, device = x0.shape, x0.dtype, x0.device
    n = x0.numel()
    evaluations = 0
    last: dict[bytes, tuple[float, np.ndarray]] = {}

    def evaluate(x_np: np.ndarray) -> tuple[float, np.ndarray]:
        """``fun`` at ``x`` (unscaled, float64 NumPy), the latest few values cached."""
        nonlocal evaluations
        key = x_np.tobytes()
        if key not in last:
            f, g = fun(torch.as_tensor(x_np, dtype=dtype, device=device).reshape(shape))
            evaluations += 1
            if len(last) > 4:
                last.pop(next(iter(last)))
            last[key] = (float(f), g.detach().double().reshape(-1).cpu().numpy())
        return last[key]

    start = project(x0.detach(), lower, upper).double().reshape(-1).cpu().numpy()
    f0, g0 = evaluate(start)
    history = [f0]
    scale = 1.0
    if first_step is not None and np.abs(g0).max() > 0:
        scale = first_step * float(np.linalg.norm(g0)) / float(np.abs(g0).max())

    def bound(b: Bounds, default: float) -> np.ndarray:
        if b is None:
            return np.full(n, default)
        return torch.as_tensor(b, dtype=torch.float64).expand(shape).reshape(-1).cpu().numpy()

    box = ScipyBounds(bound(lower, -np.inf) / scale, bound(upper, np.inf) / scale)

    def scaled(z: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = evaluate(z * scale)
        return f, g * scale

    count = 0

    def on_iteration(z: np.ndarray) -> None:
        nonlocal count
        count += 1
        f, _ = evaluate(z * scale)
        history.append(f)
        if callback is not None:
            callback(count, torch.as_tensor(z * scale, dtype=dtype).reshape(shape), f)

    result = minimize(scaled, start / scale, jac=True, method="L-BFGS-B", bounds=box,
                      callback=on_iteration,
                      options={"maxiter": iterations, "maxcor": memory, "ftol": ftol,
                               "gtol": gtol})
    x = torch.as_tensor(result.x * scale, dtype=dtype, device=device).reshape(shape)
    return x, history, evaluations
