"""Monte-Carlo quantities in expectation, tolerances from their own standard error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backprobe.quantities import (
    KFAC,
    KFLR,
    DiagGGNExact,
    DiagGGNMC,
    HutchinsonDiagHessian,
    SqrtGGNMC,
    loss_hessian_sqrt,
    record,
)
from backprobe.quantities.reference import param_slices, reference_hessian
from tests import cases

pytestmark = pytest.mark.usefixtures("float64_default")

LOSSES = cases.LOSSES
_target = cases.target


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_hessian_sqrt(loss, reduction):
    g = torch.Generator().manual_seed(0)
    loss_fn = LOSSES[loss](reduction=reduction)
    f, y = torch.randn(4, 3, generator=g), _target(loss, 4, g)
    h = torch.func.hessian(lambda f: loss_fn(f, y))(f)  # [N, C, N, C]
    hn = torch.stack([h[i, :, i] for i in range(4)])
    s = loss_hessian_sqrt(loss_fn, f, y)
    torch.testing.assert_close(torch.einsum("mna,mnb->nab", s, s), hn)
    m = 20000
    s = loss_hessian_sqrt(loss_fn, f, y, mc_samples=m, generator=g)
    per = m * torch.einsum("mna,mnb->mnab", s, s)  # one unbiased estimate per sample
    mean, se = per.mean(0), per.std(0) / m**0.5
    assert ((mean - hn).abs() <= 5 * se + 1e-12).all()


_model = cases.small_cnn


@pytest.mark.parametrize("loss", list(LOSSES))
def test_diag_ggn_mc_unbiased(loss):
    torch.manual_seed(0)
    model, loss_fn = _model(), LOSSES[loss]()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 1, 4, 4, generator=g), _target(loss, 3, g)
    m = 4000
    with record(model, DiagGGNExact(), DiagGGNMC(m, seed=5), SqrtGGNMC(m, seed=5), loss_fn=loss_fn):
        loss_fn(model(x), y).backward()
    for k, p in model.named_parameters():
        # the two MC quantities share their seed, hence their samples: per-sample estimates
        per = m * p.sqrt_ggn_mc.square().sum(1)  # [M, *shape]
        se = per.std(0) / m**0.5
        torch.testing.assert_close(p.diag_ggn_mc, per.mean(0))
        assert ((p.diag_ggn_mc - p.diag_ggn_exact).abs() <= 5 * se + 1e-12).all(), k


def test_kfac_unbiased_for_kflr_factor():
    torch.manual_seed(0)
    model, loss_fn = _model(), nn.CrossEntropyLoss()
    x, y = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2])
    m = 4000
    with record(model, KFLR(), KFAC(m, seed=3), SqrtGGNMC(m, seed=3), loss_fn=loss_fn):
        loss_fn(model(x), y).backward()
    for k, p in model.named_parameters():
        g_mc, g_exact = p.kfac[0], p.kflr[0]
        if p.dim() > 1:
            torch.testing.assert_close(p.kfac[1], p.kflr[1])  # the input factor is deterministic
            continue
        v = p.sqrt_ggn_mc  # bias: [M, N, D]
        per = m * torch.einsum("mna,mnb->mab", v, v)
        torch.testing.assert_close(g_mc, per.mean(0))
        se = per.std(0) / m**0.5
        assert ((g_mc - g_exact).abs() <= 5 * se + 1e-12).all(), k


def test_hutchinson_unbiased():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    h = reference_hessian(model, loss_fn, x, y)
    k = 400
    with record(model, HutchinsonDiagHessian(k, seed=0), loss_fn=loss_fn):
        loss_fn(model(x), y).backward()
    # Rademacher probes: Var[z_i (Hz)_i] = sum_{j != i} H_ij^2
    var = h.square().sum(1) - h.diagonal().square()
    se = (var / k).sqrt()
    for name, sl in param_slices(model).items():
        p = dict(model.named_parameters())[name]
        err = (p.diag_h_hutchinson.flatten() - h.diagonal()[sl]).abs()
        assert (err <= 5 * se[sl] + 1e-12).all(), name


def test_mc_is_reproducible_and_leaves_global_rng_alone():
    model, loss_fn = _model(), nn.CrossEntropyLoss()
    x, y = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2])
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        q = DiagGGNMC()
        state = torch.get_rng_state()
        with record(model, q, loss_fn=loss_fn):
            loss_fn(model(x), y).backward()
        assert torch.equal(state, torch.get_rng_state())
        results.append(model[0].weight.diag_ggn_mc.clone())
    torch.testing.assert_close(results[0], results[1])
