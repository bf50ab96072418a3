"""Langevin samplers: stationary laws on a Gaussian, exact update rules, state round-trips.

Statistical checks run 100 independent-noise chains stacked in one parameter and compare
the chain averages of ``x`` and ``(x - m)(x - m)^T`` against their exact stationary values,
with tolerances of 5 Monte-Carlo standard errors from batch means over time of the
per-step cross-chain averages (this accounts for autocorrelation and, for MALA, for the one
Metropolis decision the chains share).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from backprobe.optim.langevin import MALA, SGLD, UnderdampedLangevin, minibatch_potential

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
SD = torch.tensor([1.0, 0.7], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64) * torch.outer(SD, SD)
PREC = torch.linalg.inv(COV)
CHAINS = 100


def potential(x):
    """U = 1/2 sum_c (x_c - m)^T A (x_c - m) for chains x: [C, 2]."""
    d = x - MEAN
    return 0.5 * ((d @ PREC) * d).sum()


def run_chain(opt, x, steps, burn_in):
    """Run ``steps`` steps and return the post-burn-in states, [steps - burn_in, C, 2]."""

    def closure():
        opt.zero_grad()
        u = potential(x)
        u.backward()
        return u

    out = []
    for t in range(steps):
        opt.step(closure)
        if t >= burn_in:
            out.append(x.detach().clone())
    return torch.stack(out)


def check_moments(samples, mean, cov, batches=20, z=5.0):
    """Chain averages of x and (x - mean)(x - mean)^T within z batch-means SEs of the truth."""
    d = samples - mean
    series = torch.stack(
        [samples[..., 0], samples[..., 1], d[..., 0] ** 2, d[..., 0] * d[..., 1], d[..., 1] ** 2],
        dim=-1,
    ).mean(1)  # [T, 5]: per-step averages over chains
    t = series.shape[0] // batches * batches
    batch_means = series[:t].reshape(batches, -1, 5).mean(1)
    se = batch_means.std(0, unbiased=True) / math.sqrt(batches)
    truth = torch.stack([mean[0], mean[1], cov[0, 0], cov[0, 1], cov[1, 1]])
    err = (series[:t].mean(0) - truth).abs()
    assert torch.all(err < z * se), f"errors {err} vs SE {se}"
    return se


def ula_cov(h, temperature):
    """Stationary covariance of ULA on U = 1/2 (x-m)^T A (x-m): T (A - h A^2 / 2)^{-1}.

    From C = (I - hA) C (I - hA) + 2hT I, with C a function of A: C (2hA - h^2 A^2) = 2hT I.
    """
    return temperature * torch.linalg.inv(PREC - 0.5 * h * PREC @ PREC)


def start():
    return torch.zeros(CHAINS, 2, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sgld_matches_the_exact_ula_stationary_law(temperature):
    h = 0.1
    x = start()
    samples = run_chain(SGLD([x], lr=h, temperature=temperature, generator=1), x, 3500, 500)
    se = check_moments(samples, MEAN, ula_cov(h, temperature))
    # the test has the power to see ULA's O(h) bias against the target itself
    bias = ula_cov(h, temperature) - temperature * COV
    assert (bias[[0, 0, 1], [0, 1, 1]].abs() / se[2:]).max() > 5


def test_mala_is_exact():
    x = start()
    opt = MALA([x], lr=0.03, generator=2)  # one joint accept for all 100 chains (200 dims)
    samples = run_chain(opt, x, 5000, 500)
    check_moments(samples, MEAN, COV)
    assert 0.3 < opt.accept_rate < 0.95
    assert opt.accepted == opt.chain.accepted == round(opt.accept_rate * 5000)


def test_mala_accepts_almost_everything_for_tiny_steps():
    x = start()
    opt = MALA([x], lr=1e-5, generator=3)
    run_chain(opt, x, 200, 0)
    assert opt.accept_rate > 0.99


@pytest.mark.parametrize(("h", "friction", "mass", "temperature"),
                         [(0.3, 1.0, 1.0, 1.0), (0.2, 2.0, 0.5, 0.5)])
def test_underdamped_baoab_has_the_exact_gaussian_marginal(h, friction, mass, temperature):
    x = start()
    opt = UnderdampedLangevin(
        [x], lr=h, friction=friction, mass=mass, temperature=temperature, generator=4
    )
    samples = run_chain(opt, x, 3500, 500)
    check_moments(samples, MEAN, temperature * COV)


def test_sgld_update_rule_groups_scaling_and_schedule():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([[3.0]], requires_grad=True)
    opt = SGLD([{"params": [a]}, {"params": [b], "lr": 0.5, "num_examples": 4}], lr=0.1,
               temperature=2.0, generator=7)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ref = torch.Generator().manual_seed(7)
    for k in range(3):
        opt.zero_grad()
        (a.pow(2).sum() + 3 * b.sum()).backward()
        a0, b0 = a.detach().clone(), b.detach().clone()
        opt.step()
        sched.step()
        lr_a, lr_b = 0.1 * 0.5**k, 0.5 * 0.5**k
        exp_a = a0 - lr_a * 2 * a0 + math.sqrt(4 * lr_a) * torch.randn(2, generator=ref)
        exp_b = b0 - lr_b * 4 * 3 + math.sqrt(4 * lr_b) * torch.randn(1, 1, generator=ref)
        torch.testing.assert_close(a.detach(), exp_a)
        torch.testing.assert_close(b.detach(), exp_b)
    assert opt.chain.step == 3


def test_sgld_temperature_zero_is_gradient_descent_and_draws_nothing():
    x = torch.tensor([1.0, -1.0], requires_grad=True)
    opt = SGLD([x], lr=0.25, temperature=0.0, generator=0)
    state = opt.generator.get_state()
    opt.zero_grad()
    x.pow(2).sum().backward()
    opt.step()
    torch.testing.assert_close(x.detach(), torch.tensor([0.5, -0.5]))
    assert torch.equal(opt.generator.get_state(), state)


def test_num_examples_and_minibatch_potential_agree():
    g = torch.Generator().manual_seed(0)
    feats, targets = torch.randn(32, 3, generator=g), torch.randn(32, generator=g)
    n = 32

    def losses(w, idx):
        return 0.5 * (feats[idx] @ w - targets[idx]) ** 2

    w1 = torch.zeros(3, requires_grad=True)
    w2 = torch.zeros(3, requires_grad=True)
    opt1 = SGLD([w1], lr=1e-3, generator=5)
    opt2 = SGLD([w2], lr=1e-3, num_examples=n, generator=5)
    for idx in torch.arange(n).split(8):
        opt1.zero_grad()
        minibatch_potential(losses(w1, idx), n, prior=0.5 * w1.pow(2).sum()).backward()
        opt1.step()
        opt2.zero_grad()
        (losses(w2, idx).mean() + 0.5 * w2.pow(2).sum() / n).backward()
        opt2.step()
    torch.testing.assert_close(w1, w2)


def test_minibatch_potential_value_and_errors():
    torch.testing.assert_close(
        minibatch_potential(torch.tensor([1.0, 2.0]), 10, prior=0.5), torch.tensor(15.5)
    )
    with pytest.raises(ValueError, match="per-example"):
        minibatch_potential(torch.tensor(1.0), 10)
    with pytest.raises(ValueError, match="num_examples"):
        minibatch_potential(torch.tensor([1.0]), 0)


def test_mala_rejection_restores_parameters_and_gradients():
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    opt = MALA([x], lr=50.0, generator=0)  # proposals far out in the tails: rejected
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        u = potential(x)
        u.backward()
        return u

    x0 = x.detach().clone()
    for _ in range(5):
        u = opt.step(closure)
    assert opt.accepted == 0 and opt.accept_rate == 0.0
    assert torch.equal(x.detach(), x0)
    torch.testing.assert_close(u, potential(x0).detach())
    torch.testing.assert_close(x.grad, (x0 - MEAN) @ PREC)
    assert len(calls) == 6  # one per step, plus the starting point


def test_mala_detailed_step_returns_the_current_potential():
    x = start()
    opt = MALA([x], lr=0.05, generator=0)

    def closure():
        opt.zero_grad()
        u = potential(x)
        u.backward()
        return u

    for _ in range(20):
        u = opt.step(closure)
        torch.testing.assert_close(u, potential(x).detach())
        torch.testing.assert_close(x.grad, (x.detach() - MEAN) @ PREC)


def two_group_problem(dtype=torch.float64):
    a = torch.tensor([0.5, -0.5], dtype=dtype, requires_grad=True)
    b = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=dtype, requires_grad=True)
    return a, b


def two_group_potential(a, b):
    return 0.5 * (a.pow(2).sum() + 2.0 * (b - 1).pow(2).sum() + (a.sum() * b.sum()) * 0.1)


SAMPLERS = {
    "sgld": lambda groups, gen: SGLD(groups, lr=0.05, num_examples=2, generator=gen),
    "mala": lambda groups, gen: MALA(groups, lr=0.3, generator=gen),
    "underdamped": lambda groups, gen: UnderdampedLangevin(
        groups, lr=0.2, friction=0.5, mass=2.0, generator=gen
    ),
}


def make(name, a, b, gen):
    return SAMPLERS[name]([{"params": [a]}, {"params": [b], "lr": 0.1}], gen)


def trajectory(opt, a, b, k):
    def closure():
        opt.zero_grad()
        u = two_group_potential(a, b)
        u.backward()
        return u

    out = []
    for _ in range(k):
        opt.step(closure)
        out.append(torch.cat([a.detach().flatten(), b.detach().flatten()]))
    return torch.stack(out)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_state_dict_round_trip_continues_identically(name):
    a, b = two_group_problem()
    opt = make(name, a, b, 11)
    trajectory(opt, a, b, 7)
    saved_state = copy.deepcopy(opt.state_dict())
    saved_params = (a.detach().clone(), b.detach().clone())
    expected = trajectory(opt, a, b, 7)

    a2, b2 = two_group_problem()
    with torch.no_grad():
        a2.copy_(saved_params[0])
        b2.copy_(saved_params[1])
    fresh = make(name, a2, b2, 999)
    fresh.load_state_dict(saved_state)
    assert fresh.chain == type(fresh.chain)(**saved_state["backprobe"]["chain"])
    assert torch.equal(trajectory(fresh, a2, b2, 7), expected)
    assert fresh.chain == opt.chain


def test_load_state_dict_rejects_a_foreign_state_dict():
    a, b = two_group_problem()
    plain = torch.optim.SGD([a, b], lr=0.1)
    with pytest.raises(ValueError, match="state dict"):
        SGLD([a, b], lr=0.1).load_state_dict(plain.state_dict())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_global_rng_seeds_once_and_is_never_touched(name):
    torch.manual_seed(123)
    a, b = two_group_problem()
    opt = make(name, a, b, None)
    rng = torch.get_rng_state()
    first = trajectory(opt, a, b, 5)
    assert torch.equal(torch.get_rng_state(), rng)

    torch.manual_seed(123)
    a2, b2 = two_group_problem()
    assert torch.equal(trajectory(make(name, a2, b2, None), a2, b2, 5), first)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_int_seed_and_generator_agree(name):
    a, b = two_group_problem()
    a2, b2 = two_group_problem()
    t1 = trajectory(make(name, a, b, 42), a, b, 5)
    t2 = trajectory(make(name, a2, b2, torch.Generator().manual_seed(42)), a2, b2, 5)
    assert torch.equal(t1, t2)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_float32_parameters_stay_float32(name):
    a, b = two_group_problem(torch.float32)
    t = trajectory(make(name, a, b, 0), a, b, 10)
    assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert a.dtype == b.dtype == torch.float32


def test_underdamped_initial_velocity_and_pending_kick():
    x = torch.zeros(4000, dtype=torch.float64, requires_grad=True)
    opt = UnderdampedLangevin([x], lr=1e-3, mass=4.0, temperature=2.0, generator=0)
    x.grad = torch.zeros_like(x)
    opt.step()
    v = opt.state[x]["velocity"]
    assert abs(v.var().item() - 0.5) < 0.05  # ~ N(0, T / m)
    assert opt.state[x]["pending_kick"] == pytest.approx(5e-4)


BAD = [
    (lambda p: SGLD(p, lr=0.0), ValueError, "lr"),
    (lambda p: SGLD(p, lr=-1.0), ValueError, "lr"),
    (lambda p: SGLD(p, lr=float("nan")), ValueError, "lr"),
    (lambda p: SGLD(p, lr="0.1"), TypeError, "lr"),
    (lambda p: SGLD(p, lr=0.1, temperature=-1.0), ValueError, "temperature"),
    (lambda p: SGLD(p, lr=0.1, num_examples=0), ValueError, "num_examples"),
    (lambda p: SGLD(p, lr=0.1, num_examples=2.5), TypeError, "num_examples"),
    (lambda p: SGLD(p, lr=0.1, generator="seed"), TypeError, "generator"),
    (lambda p: SGLD(p, lr=0.1, generator=True), TypeError, "generator"),
    (lambda p: SGLD([{"params": p, "lr": -0.1}], lr=0.1), ValueError, "lr"),
    (lambda p: MALA(p, lr=0.0), ValueError, "lr"),
    (lambda p: UnderdampedLangevin(p, lr=0.1, friction=0.0), ValueError, "friction"),
    (lambda p: UnderdampedLangevin(p, lr=0.1, mass=-1.0), ValueError, "mass"),
    (lambda p: UnderdampedLangevin(p, lr=0.1, temperature=-0.1), ValueError, "temperature"),
    (lambda p: UnderdampedLangevin(p, lr=-0.1), ValueError, "lr"),
]


@pytest.mark.parametrize(("build", "error", "match"), BAD)
def test_bad_arguments_raise(build, error, match):
    with pytest.raises(error, match=match):
        build([torch.zeros(2, requires_grad=True)])


def test_mala_without_closure_raises():
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="closure"):
        MALA([x], lr=0.1).step()
