"""Curvature operators against torch.func dense matrices in float64."""

import pytest
import torch
from torch import nn

import backprobe
from backprobe.linalg import (
    EFOperator,
    GGNOperator,
    HessianOperator,
    KFACOperator,
    MCFisherOperator,
    top_eigenpairs,
    trace,
)
from backprobe.linalg.curvature.reference import dense_curvature

OPS = {"hessian": HessianOperator, "ggn": GGNOperator, "ef": EFOperator}


def _problem(loss="ce", seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (10,)) if loss == "ce" else torch.randn(10, 3, dtype=torch.float64)
    return model, x, y


def test_reference_on_a_known_hessian():
    """Linear model, summed squared error: H = 2 I (x) X^T X (row-major weight)."""
    model = nn.Linear(4, 2, bias=False).double()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    h = dense_curvature("hessian", model, nn.MSELoss(reduction="sum"), (x, y))
    assert torch.allclose(h, 2 * torch.kron(torch.eye(2, dtype=torch.float64), x.T @ x))


@pytest.mark.parametrize("kind", list(OPS))
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matvecs_match_dense(kind, loss, reduction):
    model, x, y = _problem(loss)
    lf = (nn.CrossEntropyLoss if loss == "ce" else nn.MSELoss)(reduction=reduction)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    op = OPS[kind](model, lf, batches)
    ref = dense_curvature(kind, model, lf, (x, y))  # one batch of all the data
    assert torch.allclose(op.to_dense(), ref, atol=1e-12)
    assert torch.allclose(dense_curvature(kind, model, lf, batches), ref, atol=1e-12)


def test_parameter_subset_is_the_block():
    model, x, y = _problem()
    lf = nn.CrossEntropyLoss()
    full = dense_curvature("hessian", model, lf, (x, y))
    sub = list(model[2].parameters())
    block = HessianOperator(model, lf, (x, y), params=sub).to_dense()
    first = sum(p.numel() for p in model[0].parameters())
    assert torch.allclose(block, full[first:, first:], atol=1e-12)


def test_ggn_equals_hessian_for_a_linear_model():
    model = nn.Linear(3, 4).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 4, (6,))
    lf = nn.CrossEntropyLoss()
    assert torch.allclose(GGNOperator(model, lf, (x, y)).to_dense(),
                          HessianOperator(model, lf, (x, y)).to_dense(), atol=1e-12)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_mc_fisher_is_unbiased_for_the_ggn(loss):
    model, x, y = _problem(loss)
    lf = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    ggn = GGNOperator(model, lf, (x, y)).to_dense()
    draws = torch.stack([MCFisherOperator(model, lf, (x, y), mc_samples=8, seed=s).to_dense()
                         for s in range(60)])
    se = draws.std(0) / 60 ** 0.5
    z = (draws.mean(0) - ggn).abs() / (se + 1e-12)
    assert float(z.max()) < 5.5  # ~1400 entries (half distinct): max |z| of normals
    again = MCFisherOperator(model, lf, (x, y), mc_samples=8, seed=3).to_dense()
    assert torch.equal(again, draws[3])  # fixed seed -> fixed matrix


def test_kfac_matches_its_factors_and_exact_ggn_at_batch_size_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32, 3)).double()
    x, y = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    lf = nn.CrossEntropyLoss()
    with backprobe.record(model, backprobe.KFLR(), loss_fn=lf):
        lf(model(x), y).backward()
    params = list(model.parameters())
    kfac = KFACOperator(params, savefield="kflr")
    blocks = [torch.kron(*p.kflr) if len(p.kflr) == 2 else p.kflr[0] for p in params]
    dense = torch.block_diag(*blocks)
    assert torch.allclose(kfac.matmat(torch.eye(kfac.shape[0], dtype=torch.float64)), dense)
    eye = torch.eye(dense.shape[0], dtype=torch.float64)
    assert torch.allclose(kfac.inverse(0.1).to_dense() @ (dense + 0.1 * eye), eye, atol=1e-10)
    # one example, last Linear layer: KFLR's G (x) A is the exact GGN block of its weight
    x1, y1 = x[:1], y[:1]
    model.zero_grad()
    with backprobe.record(model, backprobe.KFLR(), loss_fn=lf):
        lf(model(x1), y1).backward()
    weight = model[3].weight
    exact = GGNOperator(model, lf, (x1, y1), params=[weight]).to_dense()
    approx = KFACOperator([weight], savefield="kflr").to_dense()
    assert not exact.requires_grad
    assert torch.allclose(approx, exact, atol=1e-12)


def test_kfac_errors():
    p = nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="record"):
        KFACOperator([p])
    with pytest.raises(ValueError, match="sizes"):
        KFACOperator([p], factors=[[torch.eye(2), torch.eye(2)]])
    op = KFACOperator([p], factors=[[torch.zeros(3, 3), torch.eye(2)]])
    with pytest.raises(ValueError, match="singular"):
        op.inverse(0.0)


def test_estimators_and_scipy_on_operators():
    from scipy.sparse.linalg import eigsh

    model, x, y = _problem()
    lf = nn.CrossEntropyLoss()
    h = HessianOperator(model, lf, (x, y))
    dense = h.to_dense()
    top = float(torch.linalg.eigvalsh(dense)[-1])
    assert float(top_eigenpairs(h, 1, tol=1e-10, generator=0).values[0]) == pytest.approx(top)
    assert float(eigsh(h.to_scipy(), k=1, which="LA", return_eigenvectors=False)[0]) \
        == pytest.approx(top)
    est = trace(GGNOperator(model, lf, (x, y)), 20, method="auto", generator=0)
    assert est.method in ("auto:xnystrace", "auto:hutchinson")  # PSD operator known


def test_bad_input():
    model, x, y = _problem()
    with pytest.raises(TypeError, match="re-iterable"):
        HessianOperator(model, nn.CrossEntropyLoss(), ((x, y) for _ in range(2)))
    with pytest.raises(ValueError, match="reduction"):
        GGNOperator(model, nn.CrossEntropyLoss(reduction="none"), (x, y))
    with pytest.raises(ValueError, match="not in the model"):
        GGNOperator(model, nn.CrossEntropyLoss(), (x, y), params=[nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="support"):
        EFOperator(model, nn.NLLLoss(), (x, y))
    with pytest.raises(ValueError, match=r"\[43, k\]"):
        GGNOperator(model, nn.CrossEntropyLoss(), (x, y)).matmat(torch.ones(5, 2))
