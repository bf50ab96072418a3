"""Lean BatchNorm drop-ins: torch's values and running statistics, exact gradients, one
activation-sized block in backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import backprobe
from backprobe.layers._base import spec_for
from backprobe.layers.norm import NormOp
from backprobe.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d
from tests.cases import assert_empty_batch_like

F64 = torch.float64
LEAN = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d}

SHAPES = [
    (nn.BatchNorm1d, (7, 3)),  # [N, C]
    (nn.BatchNorm1d, (4, 3, 5)),
    (nn.BatchNorm2d, (4, 3, 5, 6)),
    (nn.BatchNorm3d, (2, 3, 4, 3, 2)),
]
OPTIONS = [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}]


def _pair(torch_type: type[nn.Module], dtype: torch.dtype, **kw) -> tuple[nn.Module, nn.Module]:
    """A torch BatchNorm with random affine parameters, and its lean copy."""
    ref = torch_type(3, **kw).to(dtype)
    if ref.weight is not None:
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            ref.weight.copy_(torch.rand(3, generator=gen, dtype=dtype) + 0.5)
            ref.bias.copy_(torch.randn(3, generator=gen, dtype=dtype))
    lean = copy.deepcopy(ref)
    lean.__class__ = LEAN[torch_type]
    return ref, lean


def _data(shape, dtype, seed=0, memory_format=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 2
    g = torch.randn(shape, generator=gen, dtype=dtype)
    if memory_format is not None:
        x, g = x.contiguous(memory_format=memory_format), g.contiguous(memory_format=memory_format)
    return x, g


def _step(module, x, g):
    """One forward/backward; returns output, input gradient, parameter gradients."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    lean_path = type(out.grad_fn).__name__ == "BatchNormFnBackward"
    assert lean_path == (isinstance(module, tuple(LEAN.values())) and module.training)
    out.backward(g)
    return out.detach(), x.grad, [p.grad for p in module.parameters()]


@pytest.mark.parametrize("torch_type,shape", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: ",".join(kw) or "default")
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_values_running_stats_and_gradients_match_torch(torch_type, shape, kw, dtype):
    ref, lean = _pair(torch_type, dtype, **kw)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-6)
    for seed in range(2):  # two steps: running statistics (and cumulative averages) carry
        x, g = _data(shape, dtype, seed)
        want, got = _step(ref, x, g), _step(lean, x, g)
        assert torch.equal(got[0], want[0])  # torch's own forward
        torch.testing.assert_close(got[1], want[1], **tol)
        for a, b in zip(got[2], want[2]):
            torch.testing.assert_close(a, b, **tol)
        for a, b in zip(lean.buffers(), ref.buffers()):
            assert torch.equal(a, b)
        ref.zero_grad(), lean.zero_grad()


def test_backward_allocates_one_activation():
    """The lean backward's allocation peak is its input gradient; torch's CPU kernel's is two."""
    from torch.profiler import profile

    def peak(module):
        x, g = _data((8, 16, 32, 32), torch.float32)
        x.requires_grad_(True)
        out = module(x)
        with profile(profile_memory=True) as prof:
            out.backward(g)
        current = top = 0
        events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        for e in sorted(events, key=lambda e: e.start_ns()):
            if e.name() == "[memory]":
                current += e.nbytes()
                top = max(top, current)
        return top

    act = 8 * 16 * 32 * 32 * 4
    ref, lean = nn.BatchNorm2d(16), BatchNorm2d(16)
    assert peak(ref) >= 2 * act
    assert act <= peak(lean) < act + act // 8


@pytest.mark.parametrize("fmt", [torch.channels_last, None], ids=["channels_last", "mixed"])
def test_channels_last_input(fmt):
    ref, lean = _pair(nn.BatchNorm2d, F64)
    x, g = _data((4, 3, 5, 6), F64, memory_format=torch.channels_last)
    if fmt is None:  # channels_last input, contiguous output gradient
        g = g.contiguous()
    want, got = _step(ref, x, g), _step(lean, x, g)
    assert got[0].stride() == want[0].stride() and got[1].stride() == want[1].stride()
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(got[2], want[2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_broadcast_output_gradient_and_strided_input():
    """``out.sum().backward()`` hands backward an expanded gradient; a sliced input."""
    ref, lean = _pair(nn.BatchNorm2d, F64)
    base, _ = _data((4, 6, 5, 7), F64)
    grads = []
    for m in (ref, lean):
        x = base.clone().requires_grad_(True)
        m(x[:, ::2, :, 1:]).sum().backward()
        grads.append([x.grad, *[p.grad for p in m.parameters()]])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("torch_type,shape", SHAPES, ids=lambda v: str(v))
def test_gradcheck_and_gradgradcheck(torch_type, shape):
    _, lean = _pair(torch_type, F64)
    x, _ = _data(shape, F64)
    x.requires_grad_(True)
    params = tuple(lean.parameters())

    def fn(x, w, b):
        return torch.func.functional_call(lean, {"weight": w, "bias": b}, (x,))

    # functional_call keeps the lean path (no functorch transform is active)
    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


def test_double_backward_matches_torch():
    ref, lean = _pair(nn.BatchNorm2d, F64)
    x0, _ = _data((3, 3, 4, 5), F64)
    results = []
    for m in (ref, lean):
        x = x0.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(m(x).pow(3).sum(), x, create_graph=True)
        m.zero_grad()
        gx.square().sum().backward()
        results.append([gx, x.grad, *[p.grad for p in m.parameters()]])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_plain_paths_eval_no_grad_meta_and_mixed_precision():
    ref, lean = _pair(nn.BatchNorm2d, torch.float32)
    x, g = _data((4, 3, 5, 6), torch.float32)
    ref.eval(), lean.eval()
    torch.testing.assert_close(_step(lean, x, g)[1], _step(ref, x, g)[1], rtol=0, atol=0)
    ref.train(), lean.train()
    with torch.no_grad():
        assert torch.equal(lean(x), ref(x))
    assert all(torch.equal(a, b) for a, b in zip(lean.buffers(), ref.buffers()))
    meta = copy.deepcopy(lean).to("meta")
    assert meta(torch.empty(4, 3, 5, 6, device="meta", requires_grad=True)).is_meta
    xb = x.to(torch.bfloat16)  # bf16 input, float32 parameters: torch's own backward
    torch.testing.assert_close(_step(lean, xb, g.to(torch.bfloat16))[1],
                               _step(ref, xb, g.to(torch.bfloat16))[1])


def test_training_needs_more_than_one_value_per_channel():
    x = torch.randn(1, 3, requires_grad=True)
    for m in (nn.BatchNorm1d(3), BatchNorm1d(3)):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            m(x)


def test_empty_batch_like_torch():
    ref, lean = _pair(nn.BatchNorm2d, F64)
    assert_empty_batch_like(ref, lean, (0, 3, 4, 4), equal_nan=True)


def test_torch_func_and_jit():
    ref, lean = _pair(nn.BatchNorm2d, F64, track_running_stats=False)  # func: no mutation
    x, _ = _data((4, 3, 5, 6), F64)
    params = {k: v.detach() for k, v in lean.named_parameters()}

    def loss(net):
        return lambda p: torch.func.functional_call(net, p, (x,)).pow(2).sum()

    got, want = torch.func.grad(loss(lean))(params), torch.func.grad(loss(ref))(params)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    x.requires_grad_(True)  # traced and scripted: torch's modules, same values
    torch.testing.assert_close(torch.jit.trace(lean, x)(x), ref(x))
    scripted = torch.jit.script(lean)
    torch.testing.assert_close(scripted(x), ref(x))


def test_state_dict_and_convert_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    keys = list(model.state_dict())
    backprobe.convert(model, backprobe.Exact())
    assert type(model[1]) is BatchNorm2d and type(model[5]) is BatchNorm1d
    assert list(model.state_dict()) == keys
    assert isinstance(model[1], nn.BatchNorm2d) and spec_for(model[1]).op is NormOp
    backprobe.revert(model)
    assert type(model[1]) is nn.BatchNorm2d and type(model[5]) is nn.BatchNorm1d
    backprobe.convert(model, backprobe.Exact(), compact_activations=False)
    assert type(model[1]) is nn.BatchNorm2d


def test_convert_leaves_sync_batchnorm_and_subclasses():
    class MyBN(nn.BatchNorm2d):
        pass

    model = nn.Sequential(nn.Conv2d(2, 4, 3), MyBN(4), nn.SyncBatchNorm(4), nn.Conv2d(4, 2, 1))
    backprobe.convert(model, backprobe.Exact())
    assert type(model[1]) is MyBN and type(model[2]) is nn.SyncBatchNorm


def test_quantities_see_a_lean_batchnorm_as_batchnorm():
    """Per-example quantities (eval-mode BatchNorm) bind the lean module like torch's."""
    ref, lean = _pair(nn.BatchNorm2d, F64)
    ref.eval(), lean.eval()
    x, _ = _data((4, 3, 5, 6), F64)
    (xhat_ref, op_ref), (xhat, op) = NormOp.bind(ref, x), NormOp.bind(lean, x)
    assert op == op_ref and torch.equal(xhat, xhat_ref)
    lean.train()
    with pytest.raises(ValueError, match="train mode"):
        NormOp.bind(lean, x)


def _conv_bn() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).double()
    return plain, backprobe.convert(copy.deepcopy(plain), backprobe.Exact())


def test_batchnorm_after_a_layer_on_the_data_batch_recomputes_its_input():
    """The first conv sees the data batch (held by the caller): the BatchNorm after it keeps
    no input and recomputes it in backward; gradients and second derivatives stay exact."""
    plain, model = _conv_bn()
    x = torch.randn(5, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert model[1](model[0](x)).grad_fn.replay is not None
    assert model[4](model[3](model[2](model[1](model[0](x))))).grad_fn.replay is None
    with backprobe.saved_tensors() as lean_log:
        model(x)
    with backprobe.saved_tensors() as plain_log:
        plain(x)
    assert plain_log.bytes - lean_log.bytes >= 5 * 4 * 6 * 6 * 8  # the first conv's output
    grads = []
    for net in (plain, model):
        net(x).square().sum().backward()
        grads.append([p.grad for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    second = []
    for net in (plain, model):  # gradient-norm penalty: through the replay, differentiably
        net.zero_grad()
        gs = torch.autograd.grad(net(x).square().sum(), list(net.parameters()), create_graph=True)
        sum(g.square().sum() for g in gs).backward()
        second.append([p.grad for p in net.parameters()])
    for a, b in zip(*second):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_replayed_input_modified_in_place_raises():
    _, model = _conv_bn()
    x = torch.randn(5, 3, 8, 8, dtype=F64)
    out = model(x)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()
