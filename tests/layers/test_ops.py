"""Layer ops: Exact == plain autograd over a hypothesis-drawn space of convolutions, the
canonical form, and the convolution's unfold-free fast paths."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import backprobe
from backprobe.layers import bind
from backprobe.testing import reference_grads
from tests.cases import CONV_TYPES, conv_configs, conv_from_config

CONV = {1: backprobe.nn.Conv1d, 2: backprobe.nn.Conv2d, 3: backprobe.nn.Conv3d}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_exact_conv_equals_autograd(cfg):
    layer = conv_from_config(cfg, CONV[cfg["dim"]])
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
    layer = conv_from_config(cfg)
    x = torch.randn(cfg["batch"], cfg["c_in"], *cfg["size"], dtype=torch.float64)
    g = torch.randn_like(layer(x))
    xr, op = bind(layer, x)
    a, d = op.canonical_input(xr), op.canonical_output_grad(g)
    dw = op.weight_from_matrix(torch.einsum("nso,nsi->oi", d, a))
    torch.testing.assert_close(dw, reference_grads(layer, x, g)["weight"])
    torch.testing.assert_close(op.forward(xr, layer.weight, layer.bias), layer(x))


def test_registry_holds_every_layer_module():
    from backprobe.layers import OPS, module_types

    assert set(module_types("affine")) >= {nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d}
    assert set(OPS) >= set(module_types("affine"))


def test_unsupported_module_raises():
    with pytest.raises(TypeError, match="Bilinear"):
        bind(nn.Bilinear(2, 2, 3), torch.randn(1, 2))


def test_deprecated_registry_views_warn():
    import backprobe.layers as layers

    with pytest.warns(DeprecationWarning, match="REGISTRY"):
        assert set(layers.REGISTRY) == set(layers.module_types("affine"))


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_input_and_bias_grad_without_the_input(cfg):
    """The path estimators use (no saved input): transposed convolution with output_padding."""
    layer = conv_from_config({**cfg, "bias": True})
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
    conv_cls = CONV_TYPES[dim]
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
    conv_cls = CONV_TYPES[dim]
    conv = conv_cls(16, 3, kernel, padding=padding, dilation=dilation).double()
    size = {1: (11,), 2: (9, 8), 3: (6, 7, 5)}[dim]
    x = torch.randn(3, 16, *size, dtype=torch.float64)
    xx, op = bind(conv, x)
    out_sizes = tuple(op.forward(xx, conv.weight, None).shape[2:])
    a = op.canonical_input(xx).flatten(0, 1)
    torch.testing.assert_close(op.input_second_moment(xx, out_sizes), a.T @ a)
    assert op.input_second_moment(xx[:, :8], out_sizes) is None  # few channels: unfold
