"""Spectrally shaped probes: unbiased for any fixed spectrum, exact where promised, stateful."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import backprobe
from backprobe import Probe
from backprobe.estimators import _shaping
from backprobe.layers import bind
from backprobe.testing import estimate_mean, reference_grads

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread (two threads on a loaded 2-core machine are ~20x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _smooth(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Inputs with a decaying spectrum (cumulative sums of noise along the last axes)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    for axis in range(2, len(shape)):
        x = x.cumsum(axis) / shape[axis] ** 0.5
    return x


def _fixed_spectrum(layer: nn.Module, lam: torch.Tensor) -> None:
    layer._buffers[_shaping.SPECTRUM] = lam.clone()
    layer._buffers[_shaping.UPDATES] = torch.ones((), dtype=torch.int64)


def _assert_unbiased(layer, x, lam, n=300, z_max=5.0):
    g = torch.randn_like(layer(x))
    exact = reference_grads(layer, x, g)["weight"]

    def draw():
        _fixed_spectrum(layer, lam)  # the spectrum, not the probes, is held fixed
        layer.zero_grad()
        layer(x).backward(g)
        return layer.weight.grad.clone()

    mean, se = estimate_mean(draw, n)
    z = (mean - exact).abs() / se.clamp_min(1e-12 * exact.abs().max())
    assert layer.last_path == "estimator"
    assert z.max() < z_max, f"max |z| = {z.max():.2f}"
    return exact, mean, se


CONVS = [
    ("conv1d", lambda: backprobe.nn.Conv1d(2, 3, 3, padding=1), (3, 2, 11)),
    ("conv2d", lambda: backprobe.nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 6, 7)),
    ("conv3d", lambda: backprobe.nn.Conv3d(2, 2, 2), (2, 2, 3, 4, 3)),
    ("linear", lambda: backprobe.nn.Linear(9, 4), (5, 9)),
]


@pytest.mark.parametrize(("name", "make", "shape"), CONVS, ids=[c[0] for c in CONVS])
@pytest.mark.parametrize(("mode", "per_sample", "orthogonal", "deflate"), [
    ("channel", True, False, 0), ("joint", False, False, 0), ("channel", False, True, 2),
    ("joint", True, True, 1),
])
def test_unbiased_for_a_fixed_spectrum(name, make, shape, mode, per_sample, orthogonal,
                                       deflate):
    layer = make().double()
    layer.estimator = Probe(3, mode=mode, per_sample=per_sample, orthogonal=orthogonal,
                            shaping="dct", deflate=deflate, seed=3)
    x = _smooth(shape, 0)
    # any positive spectrum, here an arbitrary steep one unrelated to x
    lam = torch.rand(shape[1:], generator=torch.Generator().manual_seed(1), dtype=F64) ** 4
    _assert_unbiased(layer, x, lam, n=250)


def test_exact_at_r_equal_positions_with_orthogonal_probes():
    conv = backprobe.nn.Conv2d(2, 3, 3, padding=1).double()
    x = _smooth((2, 2, 4, 5), 0)
    g = torch.randn(2, 3, 4, 5, dtype=F64)
    exact = reference_grads(conv, x, g)["weight"]
    for deflate in (0, 7):
        probe = Probe(20, orthogonal=True, shaping="dct", deflate=deflate, seed=0)
        est = probe.for_module(conv)
        _fixed_spectrum(conv, torch.rand(2, 4, 5, dtype=F64) + 0.01)
        xin, op = bind(conv, x)
        saved, meta = est.pack(op, xin)
        assert meta[0] == "shaped"
        torch.testing.assert_close(est.weight_grad(op, saved, meta, g), exact)


def test_transform_is_orthogonal_and_separable():
    x = torch.randn(2, 3, 5, 6, 4, dtype=F64)
    c = _shaping.transform(x)
    torch.testing.assert_close(_shaping.transform(c, inverse=True), x)
    torch.testing.assert_close(c.square().sum(), x.square().sum())
    m = _shaping.dct_matrix(5, F64, torch.device("cpu"))
    torch.testing.assert_close(m @ m.T, torch.eye(5, dtype=F64))
    # a constant signal has only the zero-frequency coefficient
    assert _shaping.transform(torch.ones(1, 1, 8))[0, 0, 1:].abs().max() < 1e-6


def test_plain_probes_until_the_first_update_then_shaped():
    torch.manual_seed(0)
    plain = backprobe.nn.Conv2d(2, 3, 3, padding=1, estimator=Probe(4, seed=5)).double()
    shaped = copy.deepcopy(plain)
    shaped.estimator = Probe(4, seed=5, shaping="dct")
    x = _smooth((4, 2, 8, 8), 0)
    grads = []
    for layer in (plain, shaped):
        out = []
        for _ in range(2):
            layer.zero_grad()
            layer(x).square().sum().backward()
            out.append(layer.weight.grad.clone())
        grads.append(out)
    torch.testing.assert_close(grads[0][0], grads[1][0])  # first step: plain probes
    assert not torch.allclose(grads[0][1], grads[1][1])  # then shaped
    assert int(shaped.probe_spectrum_updates) == 2
    assert shaped.probe_spectrum.shape == (2, 8, 8)


def test_running_spectrum_is_the_momentum_average_of_dct_power():
    conv = backprobe.nn.Conv1d(1, 1, 3, estimator=Probe(2, shaping="dct", momentum=0.25))
    xs = [torch.randn(3, 1, 10) for _ in range(3)]
    for x in xs:
        conv(x).sum().backward()
    power = [_shaping.transform(x).square().mean(0) for x in xs]
    expect = power[0]
    for p in power[1:]:
        expect = 0.75 * expect + 0.25 * p
    torch.testing.assert_close(conv.probe_spectrum, expect)


def test_state_round_trip_to_and_plain_checkpoints():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 36, 3))
    backprobe.convert(net, Probe(4, shaping="dct", seed=0), layers=(nn.Conv2d, nn.Linear),
                      exact_held_inputs=False)
    assert "0.probe_spectrum" in net.state_dict()  # registered at conversion
    for _ in range(2):
        net(torch.randn(5, 1, 6, 6)).sum().backward()
    state = net.state_dict()
    assert state["0.probe_spectrum"].shape == (1, 6, 6)
    assert state["3.probe_spectrum"].shape == (4 * 36,)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 36, 3))
    backprobe.convert(fresh, Probe(4, shaping="dct", seed=0), layers=(nn.Conv2d, nn.Linear),
                      exact_held_inputs=False)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh[0].probe_spectrum, net[0].probe_spectrum)
    assert int(fresh[3].probe_spectrum_updates) == 2
    fresh.double()
    assert fresh[0].probe_spectrum.dtype == F64  # moved/cast by .to() like any buffer
    # a checkpoint without spectra (plain probes) still loads strictly
    plain = {k: v for k, v in state.items() if "probe_spectrum" not in k}
    fresh.load_state_dict(plain)
    backprobe.revert(fresh)
    assert "0.probe_spectrum" not in fresh.state_dict()


def test_shaping_lowers_the_error_on_smooth_inputs():
    conv = backprobe.nn.Conv2d(3, 8, 3, padding=1).double()
    x = _smooth((8, 3, 16, 16), 0)
    g = torch.randn(8, 8, 16, 16, dtype=F64, generator=torch.Generator().manual_seed(2))
    exact = reference_grads(conv, x, g)["weight"]
    errs = {}
    for shaping in (None, "dct"):
        conv.estimator = Probe(8, shaping=shaping, seed=0)
        sq = 0.0
        for i in range(12):
            conv.zero_grad()
            conv(x).backward(g)
            if i >= 2:  # after the spectrum has seen the data
                sq += (conv.weight.grad - exact).square().sum().item()
        errs[shaping] = sq**0.5
    assert errs["dct"] < 0.6 * errs[None]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"shaping": "fft"}, "shaping"), ({"shaping": "dct", "deflate": 4}, "deflate"),
    ({"deflate": 1}, "deflate needs"), ({"shaping": "dct", "momentum": 0.0}, "momentum"),
    ({"shaping": "dct", "deflate": -1}, "deflate"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Probe(4, **kwargs)
