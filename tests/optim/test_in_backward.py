"""Optimizer step inside backward: same steps as the plain optimizer, gradients freed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import backprobe
from backprobe.optim.in_backward import step_in_backward


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5))


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}),
     (torch.optim.Adam, {"lr": 1e-2}), (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1})],
)
def test_steps_equal_the_plain_optimizer(cls: type, kwargs: dict) -> None:
    plain_net = _net().double()
    inbwd_net = copy.deepcopy(plain_net)
    plain = cls(plain_net.parameters(), foreach=False, **kwargs)
    inbwd = step_in_backward(inbwd_net, cls, foreach=False, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(4):
        x = torch.randn(8, 2, 6, 6, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 5, (8,), generator=gen)
        plain.zero_grad()
        loss_fn(plain_net(x), y).backward()
        plain.step()
        inbwd.zero_grad()
        loss_fn(inbwd_net(x), y).backward()
        inbwd.step()
        assert all(p.grad is None for p in inbwd_net.parameters())
    for p, q in zip(plain_net.parameters(), inbwd_net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_state_round_trip_and_remove() -> None:
    net = _net()
    opt = step_in_backward(net, torch.optim.Adam, lr=1e-2)
    net(torch.randn(3, 2, 6, 6)).sum().backward()
    state = copy.deepcopy(opt.state_dict())
    net2 = copy.deepcopy(net)
    opt2 = step_in_backward(net2, torch.optim.Adam, lr=1e-2)
    opt2.load_state_dict(state)
    x = torch.randn(3, 2, 6, 6)
    net(x).sum().backward()
    net2(x).sum().backward()
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    opt.remove()
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert len(opt.param_groups) == 4


def test_lower_peak_than_plain_step() -> None:
    # weight gradients (4 MB) dominate this step: stepping in backward never holds them all
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(500, 1000), nn.ReLU(), nn.Linear(1000, 500))
    x, y = torch.randn(16, 500), torch.randn(16, 500)
    net2 = copy.deepcopy(net)
    plain = backprobe.peak_memory(net, x, y, nn.MSELoss(),
                                  optimizer=torch.optim.SGD(net.parameters(), lr=1e-3))
    fused = backprobe.peak_memory(net2, x, y, nn.MSELoss(),
                                  optimizer=step_in_backward(net2, torch.optim.SGD, lr=1e-3))
    one_weight = 500 * 1000 * 4
    assert plain.peak >= 2 * one_weight
    assert fused.peak < plain.peak - 0.9 * one_weight
    assert fused.end == 0


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="optimizer_cls"):
        step_in_backward(_net(), object)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LBFGS"):
        step_in_backward(_net(), torch.optim.LBFGS)
    with pytest.raises(ValueError, match="no parameter"):
        step_in_backward(nn.ReLU(), torch.optim.SGD, lr=0.1)
    opt = step_in_backward(_net(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)
