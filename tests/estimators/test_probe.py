"""Probe: unbiased, variance shrinking with r, exact where promised, RNG-clean, memory as documented."""

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import backprobe
from backprobe import Probe
from backprobe.testing import estimate_mean, reference_grads
from tests.cases import LAYERS, layer_ids

F64 = torch.float64


def _estimates(layer, x, g, n):
    def draw():
        layer.zero_grad()
        layer(x).backward(g)
        return layer.weight.grad.clone()

    return estimate_mean(draw, n)


def _assert_unbiased(layer, x, n=300, z_max=5.0):
    """Mean of n estimates within z_max standard errors of the exact gradient, entrywise."""
    g = torch.randn_like(layer(x))
    exact = reference_grads(layer, x, g)["weight"]
    mean, se = _estimates(layer, x, g, n)
    z = (mean - exact).abs() / se.clamp_min(1e-12 * exact.abs().max())
    assert z.max() < z_max, f"max |z| = {z.max():.2f}"
    # the standard error itself is meaningful (not a degenerate exact estimator)
    return mean, se, exact


# every layer case: odd configurations (non-square, stride, dilation, groups, asymmetric
# padding, 1-D and 3-D), Linear with positions, and every other registered layer type
@pytest.mark.parametrize("case", LAYERS, ids=layer_ids(LAYERS))
@pytest.mark.parametrize("mode", ["channel", "joint"])
@pytest.mark.parametrize("per_sample", [True, False])
def test_probe_unbiased_on_odd_configurations(case, mode, per_sample):
    seed = LAYERS.index(case)
    layer = case.estimated(Probe(1, seed=seed))
    # r = 1 (correlation path in channel mode) and r = 5 (projection path)
    for r in (1, 5):
        layer.estimator = Probe(r, mode=mode, per_sample=per_sample, seed=seed)
        _assert_unbiased(layer, case.input(seed), n=200)
        assert layer.last_path == "estimator"  # not the exact fallback


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "uniform"])
@pytest.mark.parametrize("orthogonal", [False, True])
def test_probe_unbiased_for_every_distribution(distribution, orthogonal):
    layer = backprobe.nn.Conv2d(3, 4, 3, padding=1, stride=2).double()
    layer.estimator = Probe(3, distribution=distribution, orthogonal=orthogonal, seed=1)
    _assert_unbiased(layer, torch.randn(2, 3, 6, 7, dtype=F64))


@pytest.mark.parametrize("per_sample", [True, False])
def test_probe_unbiased_on_linear(per_sample):
    layer = backprobe.nn.Linear(12, 5, estimator=Probe(3, per_sample=per_sample, seed=2)).double()
    _assert_unbiased(layer, torch.randn(4, 2, 12, dtype=F64))


def test_error_shrinks_as_r_grows():
    layer = backprobe.nn.Conv2d(8, 8, 3, padding=1).double()
    x = torch.randn(4, 8, 10, 10, dtype=F64)
    g = torch.randn(4, 8, 10, 10, dtype=F64)
    exact = reference_grads(layer, x, g)["weight"]
    mse = []
    for r in (2, 8, 32):
        layer.estimator = Probe(r, seed=3)
        errs = []
        for _ in range(40):
            layer.zero_grad()
            layer(x).backward(g)
            errs.append((layer.weight.grad - exact).square().sum())
        mse.append(torch.stack(errs).mean())
    # variance ~ 1/r: a 4x larger r must cut the mean squared error at least by 2x
    assert mse[1] < mse[0] / 2 and mse[2] < mse[1] / 2


@pytest.mark.parametrize("mode", ["channel", "joint"])
def test_orthogonal_probes_are_exact_when_r_reaches_the_domain(mode):
    layer = backprobe.nn.Conv2d(2, 3, 3, padding=1, stride=2).double()
    x = torch.randn(2, 2, 4, 3, dtype=F64)
    domain = 12 if mode == "channel" else 24
    layer.estimator = Probe(domain, mode=mode, orthogonal=True, seed=0)
    g = torch.randn_like(layer(x))
    exact = reference_grads(layer, x, g)["weight"]
    # the domain (12 or 24 numbers per sketch) is not smaller than the input: bypass the rule
    layer.estimator.worthwhile = lambda op, x: True
    layer(x).backward(g)
    torch.testing.assert_close(layer.weight.grad, exact)


def test_input_and_bias_gradients_stay_exact():
    layer = backprobe.nn.Conv2d(3, 4, 3, stride=2, padding=1, estimator=Probe(2)).double()
    x = torch.randn(2, 3, 9, 8, dtype=F64, requires_grad=True)
    g = torch.randn_like(layer(x))
    ref = reference_grads(layer, x, g)
    layer(x).backward(g)
    torch.testing.assert_close(x.grad, ref["input"])
    torch.testing.assert_close(layer.bias.grad, ref["bias"])


def test_global_rng_untouched_and_runs_reproducible():
    def run():
        torch.manual_seed(123)
        layer = backprobe.nn.Conv2d(3, 4, 3, estimator=Probe(4))
        x = torch.randn(2, 3, 8, 8)
        state = torch.get_rng_state()
        layer(x).sum().backward()
        assert torch.equal(torch.get_rng_state(), state)
        return layer.weight.grad

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_seed_argument_and_state_dict_round_trip():
    a, b = Probe(4, seed=7), Probe(4, seed=7)
    layer = backprobe.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)

    def grad(est):
        layer.estimator = est
        layer.zero_grad()
        layer(x).sum().backward()
        return layer.weight.grad.clone()

    assert torch.equal(grad(a), grad(b))
    state = a.state_dict()
    first = grad(a)
    b.load_state_dict(state)
    assert torch.equal(first, grad(b))
    assert not torch.equal(first, grad(a))  # a fresh seed per forward


def test_works_under_checkpoint_no_grad_and_without_input_grad():
    layer = backprobe.nn.Conv2d(3, 4, 3, padding=1, estimator=Probe(2, seed=0)).double()
    x = torch.randn(2, 3, 6, 6, dtype=F64)
    g = torch.randn(2, 4, 6, 6, dtype=F64)
    ref = reference_grads(layer, x, g)
    # no_grad: plain output, no graph
    with torch.no_grad():
        out = layer(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, nn.functional.conv2d(x, layer.weight, layer.bias, padding=1))
    # input without requires_grad: weight grad still formed
    layer(x).backward(g)
    assert layer.weight.grad is not None
    # checkpoint: exact input gradient, unbiased weight gradient
    xc = x.clone().requires_grad_(True)
    layer.zero_grad()
    checkpoint(layer, xc, use_reentrant=False).backward(g)
    torch.testing.assert_close(xc.grad, ref["input"])

    def draw():
        layer.zero_grad()
        checkpoint(layer, x.clone().requires_grad_(True), use_reentrant=False).backward(g)
        return layer.weight.grad.clone()

    mean, se = estimate_mean(draw, 200)
    assert ((mean - ref["weight"]).abs() / se).max() < 5


def _saved(layer, x):
    with backprobe.saved_tensors(layer.parameters()) as log:
        layer(x)
    return log.storages


@pytest.mark.parametrize("mode,expected", [("channel", 2 * 3 * 4), ("joint", 2 * 4)])
def test_saved_bytes_match_documented_formula(mode, expected):
    layer = backprobe.nn.Conv2d(3, 5, 3, estimator=Probe(4, mode=mode))
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    saved = _saved(layer, x)
    # N*C*r (channel) or N*r (joint) float32, plus the int64 seed
    assert sum(saved.values()) == expected * 4 + 8
    lin = backprobe.nn.Linear(20, 3, estimator=Probe(4))
    assert sum(_saved(lin, torch.randn(6, 20)).values()) == 6 * 4 * 4 + 8
    exact = backprobe.nn.Conv2d(3, 5, 3)
    assert sum(_saved(exact, x).values()) == x.numel() * 4


def test_probe_falls_back_to_exact_when_it_would_keep_more():
    layer = backprobe.nn.Conv2d(3, 5, 3, padding=1, estimator=Probe(16))
    x = torch.randn(2, 3, 4, 4)  # 16 positions: a 16-probe sketch would be as large
    saved = _saved(layer, x)
    assert layer.last_path == "exact" and sum(saved.values()) == x.numel() * 4


def test_bfloat16_sketch_accumulates_in_float32():
    layer = backprobe.nn.Conv2d(3, 4, 3, estimator=Probe(4)).to(torch.bfloat16)
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    with backprobe.saved_tensors(layer.parameters()) as log:
        out = layer(x)
    assert log.bytes == 2 * 3 * 4 * 4 + 8  # float32 sketch + seed
    out.float().sum().backward()
    assert layer.weight.grad.dtype == torch.bfloat16 and torch.isfinite(layer.weight.grad).all()


def test_channels_last_gives_the_same_estimate():
    layer = backprobe.nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 7, 6, dtype=F64)
    grads = []
    for inp in (x, x.to(memory_format=torch.channels_last)):
        layer.estimator = Probe(3, seed=5)
        layer.zero_grad()
        layer(inp).square().sum().backward()
        grads.append(layer.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(num_probes=0), ValueError),
        (dict(num_probes=2.5), ValueError),
        (dict(num_probes=True), ValueError),
        (dict(num_probes=4, distribution="cauchy"), ValueError),
        (dict(num_probes=4, mode="pixel"), ValueError),
    ],
)
def test_bad_arguments_raise(kwargs, exc):
    with pytest.raises(exc):
        Probe(**kwargs)


def test_integer_input_and_bad_estimator_raise():
    layer = backprobe.nn.Conv2d(3, 4, 3, estimator=Probe(4))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(1, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="estimator"):
        backprobe.nn.Conv2d(3, 4, 3, estimator="probe")


def test_per_sample_probes_cut_variance_on_similar_examples():
    """Shared probes correlate the estimates of similar examples; sign-flipped ones do not."""
    layer = backprobe.nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(1, 3, 6, 6, dtype=F64).repeat(8, 1, 1, 1)
    x = x + 0.05 * torch.randn_like(x)
    g = torch.randn(1, 4, 6, 6, dtype=F64).repeat(8, 1, 1, 1)
    exact = reference_grads(layer, x, g)["weight"]
    mse = {}
    for per_sample in (True, False):
        layer.estimator = Probe(2, per_sample=per_sample, seed=0)
        errs = []
        for _ in range(60):
            layer.zero_grad()
            layer(x).backward(g)
            errs.append((layer.weight.grad - exact).square().sum())
        mse[per_sample] = torch.stack(errs).mean()
    # 8 nearly equal examples: shared-probe variance ~8x that of independent probes
    assert mse[True] * 3 < mse[False]


def test_auto_mode_switches_to_joint_on_small_maps():
    layer = backprobe.nn.Conv2d(8, 4, 3, padding=1, estimator=Probe(16, mode="auto"))
    small = torch.randn(2, 8, 4, 4)  # 16 positions: channel mode would keep as much as x
    assert layer.estimator.saved_numbers(*reversed(_bind(layer, small))) == 2 * 16
    big = torch.randn(2, 8, 8, 8)
    assert layer.estimator.saved_numbers(*reversed(_bind(layer, big))) == 2 * 8 * 16
    layer(small).sum().backward()
    assert layer.last_path == "estimator"


def _bind(layer, x):
    from backprobe.layers import bind

    return bind(layer, x)
