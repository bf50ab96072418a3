"""Quantities against torch.func references (float64), both loss reductions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backprobe.quantities import (
    KFAC,
    KFLR,
    BatchDiagGGNExact,
    BatchGrad,
    BatchL2Grad,
    DiagGGNExact,
    DiagHessian,
    SqrtGGNExact,
    SumGradSquared,
    Variance,
    record,
)
from backprobe.quantities.reference import (
    param_slices,
    reference_batch_grad,
    reference_ggn,
    reference_hessian,
    reference_per_example_ggn,
)
from tests import cases

pytestmark = pytest.mark.usefixtures("float64_default")

FIRST = (BatchGrad, BatchL2Grad, SumGradSquared, Variance)


def data(n: int = 5, loss: str = "ce", seed: int = 0):
    return cases.data((n, 2, 6, 6), loss, seed)


MODELS = cases.NETWORKS
sequential = cases.conv_sequential
LOSSES = cases.LOSSES


run = cases.record_run


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("arch", list(MODELS))
def test_first_order_matches_torch_func(arch, reduction):
    torch.manual_seed(1)
    model = MODELS[arch]()
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    x, y = data()
    ref = reference_batch_grad(model, loss_fn, x, y)
    params = run(model, loss_fn, x, y, *(q() for q in FIRST))
    n = x.shape[0]
    for k, p in params.items():
        b = ref[k]
        torch.testing.assert_close(p.grad_batch, b)
        torch.testing.assert_close(p.grad_batch.sum(0), p.grad)
        torch.testing.assert_close(p.batch_l2, b.flatten(1).square().sum(1))
        torch.testing.assert_close(p.sum_grad_squared, b.square().sum(0))
        torch.testing.assert_close(p.variance, (b.square().sum(0) / n) - (b.sum(0) / n) ** 2)


@pytest.mark.parametrize("combo", [(BatchL2Grad,), (SumGradSquared, Variance), (BatchL2Grad, Variance)])
def test_first_order_subsets_without_batch_grad(combo):
    model = MODELS["residual"]()
    loss_fn = nn.CrossEntropyLoss()
    x, y = data()
    ref = reference_batch_grad(model, loss_fn, x, y)
    params = run(model, loss_fn, x, y, *(q() for q in combo))
    for k, p in params.items():
        b = ref[k]
        assert not hasattr(p, "grad_batch") or BatchGrad in combo
        if BatchL2Grad in combo:
            torch.testing.assert_close(p.batch_l2, b.flatten(1).square().sum(1))
        if Variance in combo:
            torch.testing.assert_close(p.variance, b.var(0, unbiased=False))


def test_results_do_not_accumulate():
    model = sequential()
    loss_fn = nn.CrossEntropyLoss()
    x, y = data()
    run(model, loss_fn, x, y, BatchGrad())
    first = model[0].weight.grad_batch.clone()
    run(model, loss_fn, x, y, BatchGrad())
    torch.testing.assert_close(model[0].weight.grad_batch, first)


def test_reuse_buffers_writes_in_place():
    model = sequential()
    loss_fn = nn.CrossEntropyLoss()
    x, y = data()
    ref = reference_batch_grad(model, loss_fn, x, y)
    run(model, loss_fn, x, y, BatchGrad())
    before = {k: p.grad_batch for k, p in model.named_parameters()}
    model.zero_grad()
    with record(model, BatchGrad(), Variance(), reuse_buffers=True):
        loss_fn(model(x), y).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad_batch, ref[k])
        if k.endswith("weight") and k != "2.weight":  # grouped conv: no buffer path
            assert p.grad_batch.data_ptr() == before[k].data_ptr()


def _blocks(mat, model):
    sl = param_slices(model)
    return {k: mat[..., s, s] for k, s in sl.items()}


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("arch", list(MODELS))
def test_exact_ggn_quantities(arch, loss, reduction):
    torch.manual_seed(2)
    model = MODELS[arch]()
    loss_fn = LOSSES[loss](reduction=reduction)
    x, y = data(4, loss)
    ggn = reference_ggn(model, loss_fn, x, y)
    per_ex = reference_per_example_ggn(model, loss_fn, x, y)
    torch.testing.assert_close(per_ex.sum(0), ggn)
    extra = (KFLR(),) if arch == "residual" else ()
    params = run(model, loss_fn, x, y, DiagGGNExact(), BatchDiagGGNExact(), SqrtGGNExact(), *extra)
    blocks, per_blocks = _blocks(ggn, model), _blocks(per_ex, model)
    for k, p in params.items():
        shape = p.shape
        torch.testing.assert_close(p.diag_ggn_exact, blocks[k].diagonal().reshape(shape))
        torch.testing.assert_close(
            p.diag_ggn_exact_batch, per_blocks[k].diagonal(dim1=-2, dim2=-1).reshape(-1, *shape)
        )
        v = p.sqrt_ggn_exact.flatten(2)
        assert p.sqrt_ggn_exact.shape[:2] == (3, x.shape[0])
        torch.testing.assert_close(torch.einsum("cni,cnj->ij", v, v), blocks[k])
        if extra and k.endswith("bias"):
            torch.testing.assert_close(p.kflr[0], blocks[k].reshape(p.numel(), p.numel()))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kflr_equals_ggn_block_at_batch_size_one(reduction):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    x, y = torch.randn(1, 4), torch.tensor([2])
    blocks = _blocks(reference_ggn(model, loss_fn, x, y), model)
    params = run(model, loss_fn, x, y, KFLR())
    for k, p in params.items():
        kron = p.kflr[0] if p.dim() == 1 else torch.kron(*p.kflr)
        torch.testing.assert_close(kron, blocks[k])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_diag_hessian_exact_for_piecewise_linear(reduction):
    torch.manual_seed(4)
    model = sequential()
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    x, y = data(4)
    h = reference_hessian(model, loss_fn, x, y)
    params = run(model, loss_fn, x, y, DiagHessian())
    for k, blk in _blocks(h, model).items():
        torch.testing.assert_close(params[k].diag_h, blk.diagonal().reshape(params[k].shape))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_empty_batch(reduction):
    """An empty batch gives [0, *shape] per-example results and zero curvature sums."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4), nn.ReLU(),
                          nn.Linear(4, 2))
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    x, y = torch.randn(0, 1, 4, 4), torch.randint(0, 2, (0,))
    with record(model, BatchGrad(), BatchL2Grad(), SumGradSquared(), KFLR(), DiagGGNExact(),
                loss_fn=loss_fn):
        loss_fn(model(x), y).backward()
    for p in model.parameters():
        assert p.grad_batch.shape == (0, *p.shape)
        assert p.batch_l2.shape == (0,)
        assert torch.all(p.sum_grad_squared == 0)
        assert torch.all(p.diag_ggn_exact == 0)
    assert torch.all(model[2].weight.kflr[0] == 0)


def test_results_hold_no_autograd_graph():
    """Stored results are plain values: none requires grad or keeps a graph alive.

    (Contractions with a layer input that requires grad used to record a graph, and a result
    stored on a parameter kept it, with every intermediate, alive.)
    """
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(4, 2, 6, 6), torch.randint(0, 3, (4,))
    quantities = [BatchGrad(), Variance(), DiagGGNExact(), KFLR(), KFAC(), SqrtGGNExact()]
    with record(model, *quantities, loss_fn=loss_fn):
        loss_fn(model(x), y).backward()
    for name, p in model.named_parameters():
        for q in quantities:
            value = getattr(p, q.savefield)
            for t in value if isinstance(value, list) else [value]:
                assert not t.requires_grad, (name, q)
