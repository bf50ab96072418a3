"""Tests for the approximate outer-product estimator with memory (Mem-AOP-GD)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backprobe
from backprobe.estimators.aop import AOP, BUFFER_G, BUFFER_W, BUFFER_X, remove_memory, reset_memory
from backprobe.layers import LinearOp
from backprobe.testing import estimate_mean, reference_grads
from tests.cases import LAYERS, layer_ids

D64 = torch.float64


def _linear(aop: AOP, d_in: int = 5, d_out: int = 3, bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return backprobe.nn.Linear(d_in, d_out, bias=bias, estimator=aop).to(D64)


def _rows(m: int = 12, d_in: int = 5, d_out: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d_in, generator=gen, dtype=D64)
    g = torch.randn(m, d_out, generator=gen, dtype=D64)
    return x, g


def _grad(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    layer.zero_grad()
    layer(x).backward(g)
    return layer.weight.grad.clone()


# -- selection -----------------------------------------------------------------------------
def test_topk_picks_largest_products():
    x, g = _rows(12)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    scale = torch.arange(1, 13, dtype=D64)[perm]
    x = x / x.norm(dim=1, keepdim=True) * scale.unsqueeze(1)  # distinct scores = scale * ||g||
    layer = _linear(AOP(4, policy="topk", memory=False))
    scores = x.norm(dim=1) * g.norm(dim=1)
    top = torch.topk(scores, 4).indices
    assert torch.allclose(_grad(layer, x, g), g[top].T @ x[top])


def test_topk_grouped_conv_scores_use_block_diagonal_part():
    aop = AOP(1, memory=False)
    x = torch.zeros(2, 4, dtype=D64)
    gr = torch.zeros(2, 4, dtype=D64)
    x[0, :2], gr[0, 2:] = 10.0, 10.0  # large but entirely off the diagonal blocks
    x[1, :2], gr[1, :2] = 1.0, 1.0
    from backprobe.estimators.aop import _scores

    assert _scores(x, gr, 2)[0] == 0 and _scores(x, gr, 2)[1] > 0
    assert aop.select(_scores(x, gr, 2), 1)[0].item() == 1


@pytest.mark.parametrize("replacement", [False, True])
def test_randk_frequencies_are_uniform(replacement):
    m, k, n = 10, 3, 4000
    aop = AOP(k, policy="randk", memory=False, replacement=replacement, seed=0)
    counts = torch.zeros(m, dtype=D64)
    scores = torch.rand(m, generator=torch.Generator().manual_seed(0))
    for _ in range(n):
        idx, _ = aop.select(scores, k)
        assert replacement or idx.unique().numel() == k
        counts += torch.bincount(idx, minlength=m)
    if replacement:
        p, trials = torch.full((m,), 1 / m, dtype=D64), n * k
        freq, se = counts / trials, (p * (1 - p) / trials).sqrt()
    else:  # inclusion probability K/M
        p = torch.full((m,), k / m, dtype=D64)
        freq, se = counts / n, (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() < 4.5 * se).all()


def test_weightedk_frequencies_match_probabilities():
    m, k, n = 6, 2, 3000
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 5.5], dtype=D64)
    p = scores / scores.sum()
    aop = AOP(k, policy="weightedk", memory=False, replacement=True, seed=1)
    counts = sum(torch.bincount(aop.select(scores, k)[0], minlength=m) for _ in range(n))
    trials = n * k
    se = (p * (1 - p) / trials).sqrt()
    assert ((counts / trials - p).abs() < 4.5 * se).all()


def test_weightedk_without_replacement_inclusion_probabilities():
    # Successive sampling of 2 from 4: P(i in S) = p_i + sum_{j != i} p_j p_i / (1 - p_j).
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D64)
    p = scores / scores.sum()
    incl = p + torch.stack(
        [sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)]
    )
    n = 3000
    aop = AOP(2, policy="weightedk", memory=False, seed=2)
    counts = torch.zeros(4, dtype=D64)
    for _ in range(n):
        idx, _ = aop.select(scores, 2)
        assert idx.unique().numel() == 2
        counts[idx] += 1
    se = (incl * (1 - incl) / n).sqrt()
    assert ((counts / n - incl).abs() < 4.5 * se).all()


def test_weightedk_handles_zero_scores():
    aop = AOP(3, policy="weightedk", memory=False, seed=0)
    idx, _ = aop.select(torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]), 3)
    assert idx.unique().numel() == 3 and 2 in idx.tolist()
    aop = AOP(3, policy="weightedk", memory=False, unbiased=True, seed=0)
    idx, w = aop.select(torch.zeros(5), 3)
    assert torch.isfinite(w).all()


# -- unbiasedness --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy,replacement,memory",
    [("randk", True, False), ("randk", False, False), ("weightedk", True, False)],
)
def test_unbiased_mean_is_exact(policy, replacement, memory):
    x, g = _rows(16, 4, 3)
    exact = g.T @ x
    aop = AOP(3, policy=policy, unbiased=True, replacement=replacement, memory=memory, seed=0)
    layer = _linear(aop, 4, 3)
    mean, se = estimate_mean(lambda: _grad(layer, x, g), 2000)
    z = (mean - exact).abs() / se.clamp_min(1e-12)
    assert z.max() < 4.5, z
    # and a single estimate is not exact (it is a genuine sample)
    assert not torch.allclose(_grad(layer, x, g), exact)


def test_biased_weightedk_is_biased():
    x, g = _rows(16, 4, 3)
    layer = _linear(AOP(3, policy="weightedk", memory=False, seed=0), 4, 3)
    mean, se = estimate_mean(lambda: _grad(layer, x, g), 500)
    assert ((mean - g.T @ x).abs() / se.clamp_min(1e-12)).max() > 10


# -- exactness when K = M ------------------------------------------------------------------
ALL_ROWS = [
    dict(policy="topk", memory=False), dict(policy="topk", memory=True),
    dict(policy="randk", memory=True), dict(policy="weightedk", memory=True),
    dict(policy="randk", memory=False, unbiased=True, replacement=False),
    dict(policy="topk", memory="error_feedback"), dict(policy="weightedk", memory=False),
]


@pytest.mark.parametrize("kw", ALL_ROWS)
def test_k_equal_m_is_exact_linear(kw):
    layer = _linear(AOP(1.0, seed=0, **kw), 5, 3)
    for step in range(3):
        x = torch.randn(4, 3, 5, dtype=D64)  # middle dims are rows too: M = 12
        g = torch.randn(4, 3, 3, dtype=D64)
        layer.zero_grad()
        x.requires_grad_(True)
        layer(x).backward(g)
        ref = reference_grads(layer, x, g)
        got_all = [("weight", layer.weight.grad), ("bias", layer.bias.grad), ("input", x.grad)]
        for name, got in got_all:
            assert torch.allclose(got, ref[name], atol=1e-12), (step, name)


@pytest.mark.parametrize("kw", [ALL_ROWS[1], ALL_ROWS[4], ALL_ROWS[5]])
@pytest.mark.parametrize("case", LAYERS, ids=layer_ids(LAYERS))
def test_k_equal_m_is_exact_conv(case, kw):
    torch.manual_seed(0)
    conv = case.estimated(AOP(1.0, seed=0, **kw))
    for _ in range(2):
        x = torch.randn(case.input_shape, dtype=D64, requires_grad=True)
        out = conv(x)
        g = torch.randn_like(out)
        conv.zero_grad()
        out.backward(g)
        ref = reference_grads(conv, x, g)
        assert torch.allclose(conv.weight.grad, ref["weight"], atol=1e-10)
        if conv.bias is not None:
            assert torch.allclose(conv.bias.grad, ref["bias"], atol=1e-10)
        assert torch.allclose(x.grad, ref["input"], atol=1e-10)


def test_conv_topk_is_selected_unfolded_rows():
    torch.manual_seed(0)
    conv = backprobe.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2,
                               estimator=AOP(5, memory=False)).to(D64)
    x = torch.randn(2, 4, 7, 7, dtype=D64)
    out = conv(x)
    g = torch.randn_like(out)
    out.backward(g)
    _, op = backprobe.layers.bind(conv, x)
    xr = op.canonical_input(x).reshape(-1, 36)
    gr = op.canonical_output_grad(g).reshape(-1, 6)
    from backprobe.estimators.aop import _scores

    top = torch.topk(_scores(xr, gr, 2), 5).indices
    assert torch.allclose(conv.weight.grad, op.weight_from_matrix(gr[top].T @ xr[top]))


# -- memory --------------------------------------------------------------------------------
def _paper_mem_aop(w, xs, gs_fn, k, etas):
    """Mem-AOP-GD as written in the paper (fresh rows scaled by sqrt(eta))."""
    m_x = torch.zeros_like(xs[0])
    m_g = None
    for x, eta in zip(xs, etas, strict=True):
        g = gs_fn(w, x)
        m_g = torch.zeros_like(g) if m_g is None else m_g
        xh, gh = m_x + math.sqrt(eta) * x, m_g + math.sqrt(eta) * g
        sel = torch.topk(xh.norm(dim=1) * gh.norm(dim=1), k).indices
        w = w - gh[sel].T @ xh[sel]
        m_x, m_g = xh.index_fill(0, sel, 0), gh.index_fill(0, sel, 0)
    return w


@pytest.mark.parametrize("schedule", ["constant", "changing"])
def test_memory_matches_paper_algorithm(schedule):
    torch.manual_seed(0)
    xs = [torch.randn(8, 5, dtype=D64) for _ in range(6)]
    target = torch.randn(5, 3, dtype=D64)
    etas = [0.1] * 6 if schedule == "constant" else [0.1, 0.05, 0.2, 0.02, 0.1, 0.07]

    def out_grad(w, x):  # d/d(out) of 0.5 * ||x w^T - x target||^2
        return x @ w.T - x @ target

    w0 = torch.randn(3, 5, dtype=D64)
    expected = _paper_mem_aop(w0.clone(), xs, out_grad, 3, etas)

    layer = backprobe.nn.Linear(5, 3, bias=False).to(D64)
    with torch.no_grad():
        layer.weight.copy_(w0)
    opt = torch.optim.SGD(layer.parameters(), lr=etas[0])
    lr = None if schedule == "constant" else opt
    layer.estimator = AOP(3, policy="topk", memory=True, lr=lr)
    for x, eta in zip(xs, etas, strict=True):
        for group in opt.param_groups:
            group["lr"] = eta
        opt.zero_grad()
        (0.5 * (layer(x) - x @ target).square().sum()).backward()
        opt.step()
    assert torch.allclose(layer.weight, expected, atol=1e-10)


def test_memory_keeps_unselected_rows():
    x, g = _rows(6, 5, 3)
    layer = _linear(AOP(2, policy="topk", memory=True), 5, 3)
    got = _grad(layer, x, g)
    sel = torch.topk(x.norm(dim=1) * g.norm(dim=1), 2).indices
    assert torch.allclose(got, g[sel].T @ x[sel])
    mx, mg = getattr(layer, BUFFER_X), getattr(layer, BUFFER_G)
    assert torch.equal(mx, x.index_fill(0, sel, 0)) and torch.equal(mg, g.index_fill(0, sel, 0))
    # next step adds the memory to the fresh rows
    x2, g2 = _rows(6, 5, 3, seed=5)
    got2 = _grad(layer, x2, g2)
    xh, gh = x2 + mx, g2 + mg
    sel2 = torch.topk(xh.norm(dim=1) * gh.norm(dim=1), 2).indices
    assert torch.allclose(got2, gh[sel2].T @ xh[sel2])


def test_batch_size_rule():
    layer = _linear(AOP(2, policy="topk", memory=True), 5, 3)
    _grad(layer, *_rows(8, 5, 3))
    before_x, before_g = getattr(layer, BUFFER_X).clone(), getattr(layer, BUFFER_G).clone()
    x, g = _rows(4, 5, 3, seed=7)  # smaller last batch: first 4 rows used, rows 4..7 carried over
    got = _grad(layer, x, g)
    xh, gh = x + before_x[:4], g + before_g[:4]
    sel = torch.topk(xh.norm(dim=1) * gh.norm(dim=1), 2).indices
    assert torch.allclose(got, gh[sel].T @ xh[sel])
    mx, mg = getattr(layer, BUFFER_X), getattr(layer, BUFFER_G)
    assert mx.shape == (8, 5) and mg.shape == (8, 3)
    assert torch.equal(mx[4:], before_x[4:]) and torch.equal(mg[4:], before_g[4:])
    assert torch.equal(mx[:4], xh.index_fill(0, sel, 0))
    x, g = _rows(12, 5, 3, seed=8)  # larger batch: memory extended with zero rows
    got = _grad(layer, x, g)
    xh, gh = x.clone(), g.clone()
    xh[:8] += mx
    gh[:8] += mg
    sel = torch.topk(xh.norm(dim=1) * gh.norm(dim=1), 2).indices
    assert torch.allclose(got, gh[sel].T @ xh[sel])
    assert getattr(layer, BUFFER_X).shape == (12, 5)


def test_error_feedback_identity():
    torch.manual_seed(0)
    etas = [0.1, 0.3, 0.05, 0.2, 0.1]
    it = iter(etas)
    current = {"lr": next(it)}
    aop = AOP(2, policy="weightedk", memory="error_feedback", lr=lambda: current["lr"], seed=0)
    layer = _linear(aop, 5, 3)
    applied = torch.zeros(3, 5, dtype=D64)
    exact = torch.zeros(3, 5, dtype=D64)
    for t, eta in enumerate(etas):
        current["lr"] = eta
        x, g = _rows(7, 5, 3, seed=10 + t)
        grad = _grad(layer, x, g)
        assert not torch.allclose(grad, g.T @ x)
        applied += eta * grad
        exact += eta * (g.T @ x)
    assert torch.allclose(applied + getattr(layer, BUFFER_W), exact, atol=1e-12)


def test_error_feedback_identity_conv():
    torch.manual_seed(0)
    conv = backprobe.nn.Conv2d(2, 4, 3, padding=1, groups=2,
                               estimator=AOP(0.25, policy="topk", memory="error_feedback")).to(D64)
    applied = torch.zeros_like(conv.weight)
    exact = torch.zeros_like(conv.weight)
    for _ in range(3):
        x = torch.randn(2, 2, 5, 5, dtype=D64)
        out = conv(x)
        g = torch.randn_like(out)
        conv.zero_grad()
        out.backward(g)
        applied += conv.weight.grad
        exact += reference_grads(conv, x, g)["weight"]
    assert torch.allclose(applied + getattr(conv, BUFFER_W), exact, atol=1e-10)


# -- state, devices, conversion ------------------------------------------------------------
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _train(model: nn.Module, steps: int, seed: int = 0, batch: int = 10) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.randn(batch, 6, generator=gen)
        y = torch.randint(0, 3, (batch,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_convert_and_state_dict_round_trip():
    aop = AOP(3, policy="weightedk", memory=True, seed=0)
    model = backprobe.convert(_mlp(), aop, layers=(nn.Linear,))
    _train(model, 3)
    sd = copy.deepcopy(model.state_dict())
    est_sd = copy.deepcopy(aop.state_dict())
    assert {f"{i}.{b}" for i in (0, 2) for b in (BUFFER_X, BUFFER_G)} <= set(sd)
    assert sd[f"0.{BUFFER_X}"].shape == (10, 6) and sd[f"0.{BUFFER_X}"].abs().sum() > 0

    aop2 = AOP(3, policy="weightedk", memory=True, seed=123)
    fresh = backprobe.convert(_mlp(), aop2, layers=(nn.Linear,))
    aop2.attach(fresh)
    fresh.load_state_dict(sd)  # strict: buffers of 0 rows grow to the checkpoint's
    aop2.load_state_dict(est_sd)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, sd[key]), key
    _train(model, 2, seed=5)
    _train(fresh, 2, seed=5)
    pairs = zip(model.state_dict().items(), fresh.state_dict().items(), strict=True)
    for (k1, v1), (k2, v2) in pairs:
        assert k1 == k2 and torch.equal(v1, v2), k1


def test_plain_checkpoint_empties_memory_and_reset():
    model = backprobe.convert(_mlp(), AOP(3, memory=True), layers=(nn.Linear,))
    _train(model, 2)
    plain = {k: v for k, v in model.state_dict().items() if "aop_" not in k}
    model.load_state_dict(plain)
    assert getattr(model[0], BUFFER_X).shape == (0, 6)
    _train(model, 1)
    assert getattr(model[0], BUFFER_X).shape == (10, 6)
    reset_memory(model)
    assert getattr(model[0], BUFFER_X).shape == (0, 6)
    assert getattr(model[2], BUFFER_G).shape == (0, 3)
    remove_memory(model)
    backprobe.revert(model)
    assert set(model.state_dict()) == set(_mlp().state_dict())


def test_to_moves_buffers():
    model = backprobe.convert(_mlp(), AOP(3, memory=True, seed=0), layers=(nn.Linear,))
    _train(model, 2)
    model.to(D64)
    assert getattr(model[0], BUFFER_X).dtype == D64
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=gen, dtype=D64)
    F.cross_entropy(model(x), torch.zeros(10, dtype=torch.long)).backward()
    assert getattr(model[0], BUFFER_X).dtype == D64 and model[0].weight.grad.dtype == D64


def test_generator_state_and_global_rng_untouched():
    aop = AOP(2, policy="randk", memory=False, seed=0)
    scores = torch.ones(10)
    state = aop.state_dict()
    a = aop.select(scores, 2)[0]
    aop.load_state_dict(state)
    assert torch.equal(a, aop.select(scores, 2)[0])
    aop = AOP(3, policy="weightedk", memory=True, seed=1)
    model = backprobe.convert(_mlp(), aop, layers=(nn.Linear,))
    rng = torch.get_rng_state()
    _train(model, 2)
    assert torch.equal(rng, torch.get_rng_state())


def test_fraction_k_and_replacement_rows():
    aop = AOP(0.25, memory=False)
    assert aop.num_rows(256) == 64 and aop.num_rows(2) == 1
    assert AOP(10, memory=False).num_rows(4) == 4
    assert AOP(10, policy="randk", memory=False, replacement=True).num_rows(4) == 10


def test_linear_op_direct_use_without_memory():
    aop = AOP(2, memory=False)
    x, g = _rows(5, 4, 3)
    gw = aop.weight_grad(LinearOp(4, 3), (x,), None, g)
    assert gw.shape == (3, 4)
    with pytest.raises(ValueError, match="bound"):
        AOP(2, memory=True).weight_grad(LinearOp(4, 3), (x,), None, g)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((0,), {}, "k must be >= 1"),
        ((-3,), {}, "k must be >= 1"),
        ((1.5,), {}, r"\(0, 1\]"),
        ((0.0,), {}, r"\(0, 1\]"),
        ((True,), {}, "k must be"),
        (("4",), {}, "k must be"),
        ((4,), {"policy": "best"}, "unknown policy"),
        ((4,), {"memory": "yes"}, "memory must be"),
        ((4,), {"unbiased": True}, "topk"),
        ((4,), {"replacement": True}, "topk"),
        ((4,), {"policy": "randk", "unbiased": True, "memory": True}, "cannot be unbiased"),
        ((4,), {"policy": "weightedk", "unbiased": True, "replacement": False, "memory": False},
         "replacement=True"),
        ((4,), {"lr": -0.1}, "lr must be > 0"),
        ((4,), {"lr": "fast"}, "lr must be"),
    ],
)
def test_bad_arguments_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        AOP(*args, **kwargs)


def test_bad_learning_rate_at_step_raises():
    layer = _linear(AOP(2, memory=True, lr=lambda: 0.0))
    with pytest.raises(ValueError, match="learning rate"):
        _grad(layer, *_rows(4))


@pytest.mark.parametrize("case", LAYERS, ids=layer_ids(LAYERS))
def test_conv_fast_gather_matches_unfolded_rows(case):
    # Without row memory, convolutions score and gather patches without unfolding; every
    # layer's top-k estimate is the product of its selected canonical rows.
    torch.manual_seed(0)
    conv = case.estimated(AOP(0.3, memory=False))
    x = torch.randn(case.input_shape, dtype=D64)
    out = conv(x)
    g = torch.randn_like(out)
    out.backward(g)
    xin, op = backprobe.layers.bind(conv, x)
    xr = op.canonical_input(xin).flatten(0, 1)
    gr = op.canonical_output_grad(g).flatten(0, 1)
    from backprobe.estimators.aop import _scores

    scores = _scores(xr, gr, op.groups)
    fast = op.row_scores(xin, g)
    assert fast is None or torch.allclose(fast, scores)
    top = torch.topk(scores, AOP(0.3).num_rows(xr.shape[0])).indices
    expected = AOP(1, memory=False).product(op, xr[top], gr[top], None)
    assert torch.allclose(conv.weight.grad, expected)


@pytest.mark.parametrize("kw", ALL_ROWS + [dict(policy="randk", memory=False, replacement=True)])
def test_empty_batch(kw):
    layer = _linear(AOP(0.5, seed=0, **kw))
    _grad(layer, *_rows(4))
    before = {k: v.clone() for k, v in layer.named_buffers()}
    assert torch.equal(_grad(layer, *_rows(0)), torch.zeros(3, 5, dtype=D64))
    for k, v in layer.named_buffers():
        assert torch.equal(v, before[k])
    conv = backprobe.nn.Conv2d(2, 3, 3, estimator=AOP(2, seed=0, **kw))
    conv(torch.randn(0, 2, 5, 5)).sum().backward()
    assert torch.equal(conv.weight.grad, torch.zeros_like(conv.weight))


def test_convert_attaches_memory_and_revert_removes_it():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    plain_keys = set(model.state_dict())
    backprobe.convert(model, AOP(2), layers=(nn.Linear,))
    assert set(model.state_dict()) > plain_keys  # buffers exist right after conversion
    backprobe.revert(model)
    assert set(model.state_dict()) == plain_keys
