"""Exact estimator == plain autograd over a hypothesis-drawn space of layer configurations."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import backprobe
from backprobe.layers import bind
from backprobe.testing import reference_grads

CONV = {1: backprobe.nn.Conv1d, 2: backprobe.nn.Conv2d, 3: backprobe.nn.Conv3d}


@st.composite
def conv_configs(draw):
    dim = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dim))
    padding_kind = draw(st.sampled_from(["int", "same", "valid"]))
    stride = (1,) * dim if padding_kind == "same" else tuple(draw(st.integers(1, 2)) for _ in range(dim))
    padding = {"int": tuple(draw(st.integers(0, 2)) for _ in range(dim)),
               "same": "same", "valid": "valid"}[padding_kind]
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "circular", "replicate"]))
    if padding_mode != "zeros" and padding_kind == "int":
        padding = tuple(min(p, 1) for p in padding)
    span = [dl * (k - 1) + 1 for dl, k in zip(dilation, kernel)]
    size = tuple(s + draw(st.integers(1, 4)) + 2 for s in span)
    return dict(dim=dim, c_in=c_in, c_out=c_out, kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, groups=groups, padding_mode=padding_mode,
                bias=draw(st.booleans()), batch=draw(st.integers(1, 3)), size=size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_exact_conv_equals_autograd(cfg):
    layer = CONV[cfg["dim"]](
        cfg["c_in"], cfg["c_out"], cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
        dilation=cfg["dilation"], groups=cfg["groups"], bias=cfg["bias"],
        padding_mode=cfg["padding_mode"], estimator=backprobe.Exact(),
    ).double()
    x = torch.randn(cfg["batch"], cfg["c_in"], *cfg["size"], dtype=torch.float64)
    g = torch.randn_like(layer(x))
    ref = reference_grads(layer, x, g)
    xx = x.clone().requires_grad_(True)
    out = layer(xx)
    out.backward(g)
    torch.testing.assert_close(xx.grad, ref["input"])
    torch.testing.assert_close(layer.weight.grad, ref["weight"])
    if cfg["bias"]:
        torch.testing.assert_close(layer.bias.grad, ref["bias"])


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.booleans())
def test_exact_linear_equals_autograd(n, t, d_in, d_out, bias):
    layer = backprobe.nn.Linear(d_in, d_out, bias=bias).double()
    x = torch.randn(n, t, d_in, dtype=torch.float64)
    g = torch.randn(n, t, d_out, dtype=torch.float64)
    ref = reference_grads(layer, x, g)
    xx = x.clone().requires_grad_(True)
    layer(xx).backward(g)
    torch.testing.assert_close(xx.grad, ref["input"])
    torch.testing.assert_close(layer.weight.grad, ref["weight"])


@settings(max_examples=25, deadline=None)
@given(conv_configs())
def test_canonical_form_reproduces_weight_gradient(cfg):
    """sum_{n,s} g[n,s] (outer) a[n,s] mapped back to the weight shape == the weight gradient."""
    layer = nn.Conv1d if cfg["dim"] == 1 else nn.Conv2d if cfg["dim"] == 2 else nn.Conv3d
    layer = layer(cfg["c_in"], cfg["c_out"], cfg["kernel"], stride=cfg["stride"],
                  padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"],
                  padding_mode=cfg["padding_mode"]).double()
    x = torch.randn(cfg["batch"], cfg["c_in"], *cfg["size"], dtype=torch.float64)
    g = torch.randn_like(layer(x))
    xr, op = bind(layer, x)
    a, d = op.canonical_input(xr), op.canonical_output_grad(g)
    dw = op.weight_from_matrix(torch.einsum("nso,nsi->oi", d, a))
    torch.testing.assert_close(dw, reference_grads(layer, x, g)["weight"])
    torch.testing.assert_close(op.forward(xr, layer.weight, layer.bias), layer(x))


def test_registry_holds_every_layer_module():
    from backprobe.layers import REGISTRY

    assert set(REGISTRY) >= {nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d}


def test_unsupported_module_raises():
    import pytest

    with pytest.raises(TypeError, match="ConvTranspose2d"):
        bind(nn.ConvTranspose2d(2, 2, 3), torch.randn(1, 2, 5, 5))


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_input_and_bias_grad_without_the_input(cfg):
    """The path estimators use (no saved input): transposed convolution with output_padding."""
    layer = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[cfg["dim"]](
        cfg["c_in"], cfg["c_out"], cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"],
        dilation=cfg["dilation"], groups=cfg["groups"], padding_mode=cfg["padding_mode"],
    ).double()
    x = torch.randn(cfg["batch"], cfg["c_in"], *cfg["size"], dtype=torch.float64)
    xr, op = bind(layer, x)
    g = torch.randn_like(op.forward(xr, layer.weight, layer.bias))
    gi, gw, gb = op.backward(None, g, layer.weight, tuple(xr.shape), (True, False, True))
    xr = xr.detach().requires_grad_(True)
    ref = torch.autograd.grad(op.forward(xr, layer.weight, layer.bias), [xr, layer.bias], g)
    assert gw is None
    torch.testing.assert_close(gi, ref[0])
    torch.testing.assert_close(gb, ref[1])


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("kernel,padding,dilation", [(3, 1, 1), (2, 0, 1), (3, 2, 2), (1, 0, 1)])
def test_per_example_weight_grad_without_unfolding(dim, kernel, padding, dilation):
    """The shifted-view GEMMs equal one weight gradient per example (stride 1, one group)."""
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
    ks = kernel if dim == 1 else (kernel, max(1, kernel - 1), kernel)[:dim]
    conv = conv_cls(4, 5, ks, padding=padding, dilation=dilation).double()
    size = {1: (11,), 2: (9, 8), 3: (6, 7, 5)}[dim]
    x = torch.randn(3, 4, *size, dtype=torch.float64)
    xx, op = bind(conv, x)
    g = torch.randn_like(op.forward(xx, conv.weight, None))
    got = op.per_example_weight_grad(xx, g)
    ref = torch.stack([op.weight_grad(xx[n:n + 1], g[n:n + 1]) for n in range(3)])
    assert got is not None and got.is_contiguous()
    torch.testing.assert_close(got, ref)
    strided = conv_cls(4, 5, 3, stride=2).double()
    xs, ops = bind(strided, x)
    assert ops.per_example_weight_grad(xs, ops.forward(xs, strided.weight, None)) is None


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("kernel,padding,dilation", [(3, 1, 1), (2, 0, 1), (3, 2, 2)])
def test_input_second_moment_without_unfolding(dim, kernel, padding, dilation):
    """``sum a a^T`` from shifted slices equals the unfolded input's Gram matrix (KFAC's A)."""
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
    conv = conv_cls(16, 3, kernel, padding=padding, dilation=dilation).double()
    size = {1: (11,), 2: (9, 8), 3: (6, 7, 5)}[dim]
    x = torch.randn(3, 16, *size, dtype=torch.float64)
    xx, op = bind(conv, x)
    out_sizes = tuple(op.forward(xx, conv.weight, None).shape[2:])
    a = op.canonical_input(xx).flatten(0, 1)
    torch.testing.assert_close(op.input_second_moment(xx, out_sizes), a.T @ a)
    assert op.input_second_moment(xx[:, :8], out_sizes) is None  # few channels: unfold
