"""SPG and L-BFGS-B: feasibility, decrease and the box-constrained optimum on convex problems."""

import pytest
import torch

from backprobe.wave.optimize import SPG, SPGState, lbfgsb, project


def _problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    h = a @ a.T / n + 0.05 * torch.eye(n, dtype=torch.float64)
    b = 3.0 * torch.randn(n, generator=g, dtype=torch.float64)
    calls = []

    def fun(x):
        calls.append(x.clone())
        return float(0.5 * x @ h @ x - b @ x), h @ x - b

    return fun, h, b, calls


def _kkt(x, grad, lower, upper):
    """Projected-gradient residual of the box problem: 0 exactly at its minimiser."""
    return float((project(x - grad, lower, upper) - x).abs().max())


def _reference(h, b, lower, upper, iters=20000):
    """The box-constrained minimiser by projected gradient with step 1/L (slow, sure)."""
    step = 1.0 / float(torch.linalg.eigvalsh(h).max())
    x = torch.zeros_like(b)
    for _ in range(iters):
        x = project(x - step * (h @ x - b), lower, upper)
    return x


@pytest.mark.parametrize("memory", [1, 10])
def test_spg_feasible_decreasing_and_optimal(memory):
    fun, h, b, calls = _problem()
    lower, upper = -0.5, torch.linspace(0.2, 1.0, 40, dtype=torch.float64)
    spg = SPG(lower, upper, memory=memory)
    state = spg.init(torch.full((40,), 5.0, dtype=torch.float64), fun)
    for _ in range(200):
        state = spg.step(state, fun)
    # Every evaluated point is feasible.
    for x in calls:
        assert float(x.min()) >= -0.5 and bool((x <= upper).all())
    hist = torch.tensor(state.history)
    if memory == 1:  # monotone line search
        assert bool((hist[1:] <= hist[:-1] + 1e-12).all())
    else:  # non-monotone: below the running max of the last M values, and ends lower
        assert hist[-1] < hist[0]
    ref = _reference(h, b, lower, upper)
    assert _kkt(state.x, state.g, lower, upper) < 1e-8
    torch.testing.assert_close(state.x, ref, rtol=0, atol=1e-6)
    assert state.iteration == 200 and len(state.history) == 201
    assert state.evaluations == len(calls)


def test_spg_state_is_explicit_and_step_is_pure():
    fun, *_ = _problem(n=10)
    spg = SPG(-1.0, 1.0, first_step=0.1)
    s0 = spg.init(torch.zeros(10, dtype=torch.float64), fun)
    assert isinstance(s0, SPGState) and s0.iteration == 0
    # first_step: the first trial moves the largest-gradient cell by 0.1.
    assert s0.alpha * float(s0.g.abs().max()) == pytest.approx(0.1)
    x_before = s0.x.clone()
    s1 = spg.step(s0, fun)
    assert torch.equal(s0.x, x_before) and s0.iteration == 0
    assert s1.iteration == 1 and s1.f < s0.f
    assert float(s1.x.abs().max()) <= 0.1 + 1e-12


def test_spg_unbounded_matches_solve():
    fun, h, b, _ = _problem(n=15, seed=3)
    spg = SPG()
    state = spg.init(torch.zeros(15, dtype=torch.float64), fun)
    for _ in range(300):
        state = spg.step(state, fun)
    torch.testing.assert_close(state.x, torch.linalg.solve(h, b), rtol=0, atol=1e-6)


def test_lbfgsb_feasible_decreasing_and_optimal():
    pytest.importorskip("scipy")
    fun, h, b, calls = _problem()
    lower, upper = -0.5, torch.linspace(0.2, 1.0, 40, dtype=torch.float64)
    seen = []
    x, hist, evals = lbfgsb(fun, torch.full((40,), 5.0, dtype=torch.float64), lower=lower,
                            upper=upper, iterations=200,
                            callback=lambda it, x, f: seen.append((it, f)))
    for z in calls:
        assert float(z.min()) >= -0.5 - 1e-12 and bool((z <= upper + 1e-12).all())
    assert hist[-1] < hist[0] and evals == len(calls)
    assert [it for it, _ in seen] == list(range(1, len(seen) + 1))
    # SciPy stops on its default relative decrease (ftol ~ 2e-9), so a looser match.
    torch.testing.assert_close(x, _reference(h, b, lower, upper), rtol=0, atol=1e-5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="lower bound exceeds"):
        SPG(2.0, 1.0)
    with pytest.raises(ValueError, match="memory"):
        SPG(memory=0)
    with pytest.raises(ValueError, match="first_step"):
        SPG(first_step=0.0)
    with pytest.raises(ValueError, match="NaN"):
        SPG(float("nan"), 1.0)
    fun, *_ = _problem(n=4)
    with pytest.raises(ValueError, match="iterations"):
        lbfgsb(fun, torch.zeros(4, dtype=torch.float64), iterations=0)
    with pytest.raises(ValueError, match="not finite"):
        SPG().init(torch.zeros(2), lambda x: (float("nan"), x))
