"""Converted models with the rest of PyTorch: torch.func, double backward, jit, N=0, meta."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import backprobe
from backprobe import Exact, Probe
from tests.cases import assert_empty_batch_like

F64 = torch.float64


def _plain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
        nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    ).double()


def _converted(estimator) -> tuple[nn.Module, nn.Module]:
    plain = _plain()
    model = backprobe.convert(copy.deepcopy(plain), estimator, layers=(nn.Conv2d, nn.Linear))
    return plain, model


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)


def test_vmap_grad_per_sample_gradients_equal_the_plain_models():
    plain, model = _converted(Exact())
    x, y = _x(), torch.tensor([0, 2, 1])

    def per_sample(net):
        params = {k: v.detach() for k, v in net.named_parameters()}

        def loss(p, xi, yi):
            out = torch.func.functional_call(net, p, (xi.unsqueeze(0),))
            return nn.functional.cross_entropy(out, yi.unsqueeze(0))

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)

    got, want = per_sample(model), per_sample(plain)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k])


@pytest.mark.parametrize("estimator", [Exact(), Probe(2, seed=0)], ids=["exact", "probe"])
def test_input_gradient_penalty_double_backward(estimator):
    """The input gradient is exact and differentiable; the penalty's weight gradients are
    exact under Exact (under Probe they pass through the layers' forward again, probed)."""
    plain, model = _converted(estimator)
    results = []
    for net in (plain, model):
        x = _x().requires_grad_()
        (gx,) = torch.autograd.grad(net(x).square().sum(), x, create_graph=True)
        net.zero_grad()
        gx.square().sum().backward()
        results.append((gx, [p.grad for p in net.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    if isinstance(estimator, Exact):
        for a, b in zip(results[0][1], results[1][1]):
            torch.testing.assert_close(a, b)
    assert all(g is not None and g.isfinite().all() for g in results[1][1])


def test_differentiating_a_probed_weight_gradient_raises():
    _, model = _converted(Probe(2, seed=0))
    w = model[0].weight
    x = _x().requires_grad_()  # a data batch (no history) would take the exact path
    (gw,) = torch.autograd.grad(model(x).square().sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match="cannot differentiate the weight gradient"):
        gw.sum().backward()
    _, exact = _converted(Exact())  # second derivatives in the weights: exact layers work
    (gw,) = torch.autograd.grad(exact(_x()).square().sum(), exact[0].weight, create_graph=True)
    gw.sum().backward()


def test_jit_trace_and_script():
    plain, model = _converted(Exact())
    x = _x()
    torch.testing.assert_close(torch.jit.trace(model, x)(x), plain(x))
    torch.testing.assert_close(torch.jit.script(model)(x), plain(x))
    _, probed = _converted(Probe(2))
    with pytest.raises(TypeError, match="torch.jit.trace"):
        torch.jit.trace(probed, x)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.trace(probed, x)(x), plain(x))
    with pytest.raises(TypeError, match="torch.jit.script"):
        torch.jit.script(probed)


@pytest.mark.parametrize("estimator", [Exact(), Probe(2, seed=0)], ids=["exact", "probe"])
def test_empty_batch_like_plain_torch(estimator):
    plain, model = _converted(estimator)
    assert_empty_batch_like(plain, model, (0, 2, 8, 8))


@pytest.mark.parametrize("estimator", [Exact(), Probe(2)], ids=["exact", "probe"])
def test_meta_device(estimator):
    _, model = _converted(estimator)
    model = model.to("meta")
    out = model(torch.empty(3, 2, 8, 8, dtype=F64, device="meta"))
    assert out.shape == (3, 3) and out.is_meta


def test_torch_compile_exact_and_compact_paths_have_no_graph_breaks():
    torch._dynamo.reset()
    _, model = _converted(Exact())
    explained = torch._dynamo.explain(lambda x: model(x).square().sum())(_x())
    assert explained.graph_count == 1 and explained.graph_break_count == 0


def test_torch_compile_probed_path_matches_eager():
    """Probe's private generator breaks the graph once per probed call (documented)."""
    torch._dynamo.reset()
    grads = []
    for compiled in (False, True):
        _, model = _converted(Probe(2, seed=0))
        fn = torch.compile(model, backend="eager") if compiled else model
        fn(_x()).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_torch_func_on_the_probed_path():
    """grad works; vmap needs randomness="same" (one probe draw for the vmapped batch)."""
    _, model = _converted(Probe(2, seed=0))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi):
        return torch.func.functional_call(model, p, (xi.unsqueeze(0),)).sum()

    x = _x()
    one = torch.func.grad(loss)(params, x[0])
    assert one["0.weight"].shape == model[0].weight.shape
    batched = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="same")(
        params, x)
    assert batched["0.weight"].shape == (3, *model[0].weight.shape)
    # bias gradients are exact (they flow through exact input gradients)
    torch.testing.assert_close(batched["3.bias"][0], one["3.bias"])
