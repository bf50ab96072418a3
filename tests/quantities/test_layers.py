"""Per-layer coverage: conv hyper-parameters, norms, embedding, and the errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import backprobe
from backprobe.layers import module_types
from backprobe.quantities import (
    BatchDiagGGNExact,
    BatchGrad,
    BatchL2Grad,
    DiagGGNExact,
    DiagGGNMC,
    HutchinsonDiagHessian,
    SqrtGGNMC,
    SumGradSquared,
    Variance,
    record,
)
from backprobe.quantities.reference import (
    param_slices,
    reference_batch_grad,
    reference_per_example_ggn,
)
from tests import cases
from tests.cases import CONV_TYPES, LAYERS, NORM_NETWORKS, EmbedNet, layer_ids, layer_network

pytestmark = pytest.mark.usefixtures("float64_default")


_run = cases.record_run


def _check_first_order(model, loss_fn, x, y):
    ref = reference_batch_grad(model, loss_fn, x, y)
    params = _run(model, loss_fn, x, y, BatchGrad(), SumGradSquared())
    for k, p in params.items():
        torch.testing.assert_close(p.grad_batch, ref[k], msg=k)
        torch.testing.assert_close(p.sum_grad_squared, ref[k].square().sum(0), msg=k)
    params = _run(model, loss_fn, x, y, BatchL2Grad())  # Gram / norm paths on their own
    for k, p in params.items():
        torch.testing.assert_close(p.batch_l2, ref[k].flatten(1).square().sum(1), msg=k)
    params = _run(model, loss_fn, x, y, Variance())
    for k, p in params.items():
        torch.testing.assert_close(p.variance, ref[k].var(0, unbiased=False), msg=k)


def test_registry_holds_every_layer_module():
    assert {nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d} <= set(module_types("affine"))
    assert {nn.Embedding, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm,
            nn.GroupNorm} <= set(module_types("embedding") + module_types("norm"))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", LAYERS, ids=layer_ids(LAYERS))
def test_layer_cases(case, reduction):
    """Every layer case in a small network: first-order quantities and GGN diagonals."""
    torch.manual_seed(0)
    model = layer_network(case)
    g = torch.Generator().manual_seed(1)
    x, y = case.input(), torch.randint(0, 3, (case.input_shape[0],), generator=g)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    _check_first_order(model, loss_fn, x, y)
    ggn = reference_per_example_ggn(model, loss_fn, x, y).sum(0)
    m = 400
    params = _run(model, loss_fn, x, y, DiagGGNExact(), DiagGGNMC(m, seed=5),
                  SqrtGGNMC(m, seed=5))
    for k, sl in param_slices(model).items():
        p = params[k]
        torch.testing.assert_close(p.diag_ggn_exact, ggn[sl, sl].diagonal().reshape(p.shape))
        # DiagGGNMC: the mean of its m one-sample estimates (shared with SqrtGGNMC's seed),
        # within 5 standard errors of the exact diagonal
        per = m * p.sqrt_ggn_mc.square().sum(1)
        torch.testing.assert_close(p.diag_ggn_mc, per.mean(0), msg=k)
        se = per.std(0) / m**0.5
        assert ((p.diag_ggn_mc - p.diag_ggn_exact).abs() <= 5 * se + 1e-12).all(), k


@settings(max_examples=12, deadline=None)
@given(
    dim=st.sampled_from([1, 2, 3]),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    padding=st.sampled_from([0, 1, "same"]),
    mode=st.sampled_from(["zeros", "reflect", "circular"]),
    bias=st.booleans(),
    reduction=st.sampled_from(["mean", "sum"]),
)
def test_conv_hyperparameters(dim, stride, dilation, groups, padding, mode, bias, reduction):
    if padding == "same":
        stride = 1
    if padding == 0:
        mode = "zeros"
    conv_cls = CONV_TYPES[dim]
    size = {1: 9, 2: 7, 3: 5}[dim]
    conv = conv_cls(2, 4, 3, stride=stride, padding=padding, dilation=dilation, groups=groups,
                    bias=bias, padding_mode=mode)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, *([size] * dim), generator=g)
    feat = conv(x).flatten(1).shape[1]
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(feat, 3)).double()
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    y = torch.randint(0, 3, (3,), generator=g)
    _check_first_order(model, loss_fn, x, y)


def test_linear_with_positions_and_gram_path():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Linear(20, 2)).double()
    x, y = torch.randn(4, 5, 3), torch.randint(0, 2, (4,))
    _check_first_order(model, nn.CrossEntropyLoss(), x, y)


@pytest.mark.parametrize("net", list(NORM_NETWORKS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_norm_layers(reduction, net):
    torch.manual_seed(0)
    make, shape = NORM_NETWORKS[net]
    model = make().double()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.eval()
    x, y = torch.randn(shape), torch.randint(0, 3, (4,))
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    _check_first_order(model, loss_fn, x, y)
    per_ex = reference_per_example_ggn(model, loss_fn, x, y)
    params = _run(model, loss_fn, x, y, BatchDiagGGNExact())
    for k, sl in param_slices(model).items():
        want = per_ex[:, sl, sl].diagonal(dim1=-2, dim2=-1).reshape(-1, *params[k].shape)
        torch.testing.assert_close(params[k].diag_ggn_exact_batch, want, msg=k)


@pytest.mark.parametrize("padding_idx", [None, 0])
@pytest.mark.parametrize("seq", [2, 4])
def test_embedding(padding_idx, seq):
    model = EmbedNet(padding_idx).double()
    idx = torch.randint(0, 7, (5, seq))
    idx[0, 0] = 0
    idx[1, :2] = 3  # a repeated index within one example
    y = torch.randint(0, 2, (5,))
    loss_fn = nn.CrossEntropyLoss()
    ref = reference_batch_grad(model, loss_fn, idx, y)
    params = _run(model, loss_fn, idx, y, BatchGrad(), BatchL2Grad(), Variance())
    for k, p in params.items():
        torch.testing.assert_close(p.grad_batch, ref[k])
        torch.testing.assert_close(p.batch_l2, ref[k].flatten(1).square().sum(1))
    params = _run(model, loss_fn, idx, y, BatchL2Grad())
    torch.testing.assert_close(params["emb.weight"].batch_l2, ref["emb.weight"].flatten(1).square().sum(1))
    params = _run(model, loss_fn, idx, y, DiagGGNExact())
    per_ex = reference_per_example_ggn(model, loss_fn, idx, y).sum(0)
    sl = param_slices(model)["emb.weight"]
    torch.testing.assert_close(params["emb.weight"].diag_ggn_exact, per_ex[sl, sl].diagonal().reshape(7, 3))


def test_batchnorm_train_mode_raises():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    with record(model, BatchGrad()), pytest.raises(ValueError, match="train mode"):
        model(torch.randn(3, 1, 4, 4))


def test_unsupported_module_is_named():
    model = nn.Sequential(nn.Linear(3, 3), nn.PReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"'1' \(PReLU\)"):
        with record(model, BatchGrad()):
            pass
    model[1].requires_grad_(False)  # frozen: fine
    with record(model, BatchGrad()):
        model(torch.randn(2, 3)).sum().backward()
    assert model[0].weight.grad_batch.shape == (2, 3, 3)


def test_probe_estimator_raises_with_its_name():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    backprobe.convert(model, backprobe.Probe(4))
    with pytest.raises(ValueError, match="Probe.*BatchGrad"):
        with record(model, BatchGrad()):
            pass


def test_exact_estimator_on_converted_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2)).double()
    x, y = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 1])
    loss_fn = nn.CrossEntropyLoss()
    ref = reference_batch_grad(model, loss_fn, x, y)
    ggn = reference_per_example_ggn(model, loss_fn, x, y).sum(0)
    backprobe.convert(model, backprobe.Exact())
    params = _run(model, loss_fn, x, y, BatchGrad(), DiagGGNExact())
    for k, sl in param_slices(model).items():
        torch.testing.assert_close(params[k].grad_batch, ref[k])
        torch.testing.assert_close(params[k].diag_ggn_exact, ggn[sl, sl].diagonal().reshape(params[k].shape))


def test_hutchinson_needs_no_supported_layers():
    model = nn.Sequential(nn.Linear(3, 3), nn.PReLU(), nn.Linear(3, 2)).double()
    loss_fn = nn.MSELoss()
    with record(model, HutchinsonDiagHessian(2, seed=0), loss_fn=loss_fn):
        loss_fn(model(torch.randn(4, 3)), torch.randn(4, 2)).backward()
    assert model[1].weight.diag_h_hutchinson.shape == model[1].weight.shape


def test_curvature_needs_loss_fn():
    with pytest.raises(ValueError, match="loss_fn"):
        record(nn.Linear(2, 2), DiagGGNExact())
    with pytest.raises(ValueError, match="NLLLoss"):
        record(nn.Linear(2, 2), DiagGGNExact(), loss_fn=nn.NLLLoss())


class Scale(nn.Module):
    """A module no layer describes: per-feature scale and shift, then tanh."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, d))
        self.beta = nn.Parameter(torch.linspace(-0.2, 0.2, d))

    def forward(self, x):
        return torch.tanh(x * self.gamma + self.beta)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_torch_func_fallback(reduction):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    with pytest.raises(ValueError, match="fallback"):
        with record(model, BatchGrad()):
            pass
    ref = reference_batch_grad(model, loss_fn, x, y)
    per_ex = reference_per_example_ggn(model, loss_fn, x, y)
    model.zero_grad()
    with record(model, BatchGrad(), BatchDiagGGNExact(), loss_fn=loss_fn, fallback="torch.func"):
        loss_fn(model(x), y).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad_batch, ref[k], msg=k)
        sl = param_slices(model)[k]
        want = per_ex[:, sl, sl].diagonal(dim1=-2, dim2=-1).reshape(-1, *p.shape)
        torch.testing.assert_close(p.diag_ggn_exact_batch, want, msg=k)
