"""Preconditioned SGD: every optimizer on every problem, state round-trips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from backprobe.optim import (
    DiagonalPreconditioner,
    KroneckerPreconditioner,
    PreconditionedSGD,
    diag_ggn_sgd,
    kfac_sgd,
    second_moment_sgd,
)
from backprobe.quantities import record

OPTIMIZERS = {
    "diag_ggn_mc": lambda ps: diag_ggn_sgd(ps, lr=0.1, damping=1e-2, generator=0),
    "diag_ggn_exact": lambda ps: diag_ggn_sgd(ps, lr=0.1, exact=True, damping=1e-2),
    "kfac": lambda ps: kfac_sgd(ps, lr=0.1, damping=1e-2, update_every=2, generator=0),
    "kflr": lambda ps: kfac_sgd(ps, lr=0.1, exact=True, damping=1e-2),
    "second_moment": lambda ps: second_moment_sgd(ps, lr=0.01, damping=1e-8),
    "momentum": lambda ps: PreconditionedSGD(
        ps, 0.05, DiagonalPreconditioner("diag_ggn_mc", damping=1e-2, generator=0), momentum=0.5,
        weight_decay=1e-4,
    ),
}


def classification():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, nn.CrossEntropyLoss(), x, y


def regression():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 4, 4, generator=g)
    y = torch.stack([x.mean((1, 2, 3)), x[:, 0, 0, 0]], 1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    return model, nn.MSELoss(), x, y


PROBLEMS = {"classification": classification, "regression": regression}


def train(model, loss_fn, x, y, opt, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with record(model, *opt.quantities(), loss_fn=loss_fn):
            loss = loss_fn(model(x), y)
            loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_decreases_loss(name, problem):
    torch.manual_seed(0)
    model, loss_fn, x, y = PROBLEMS[problem]()
    opt = OPTIMIZERS[name](model.parameters())
    losses = train(model, loss_fn, x, y, opt, 40)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", ["diag_ggn_mc", "kfac", "second_moment", "momentum"])
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    model, loss_fn, x, y = classification()
    opt = OPTIMIZERS[name](model.parameters())
    train(model, loss_fn, x, y, opt, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, loss_fn, x, y, opt, 3)

    model2, *_ = classification()
    model2.load_state_dict(saved_model)
    opt2 = OPTIMIZERS[name](model2.parameters())
    opt2.load_state_dict(saved_opt)
    train(model2, loss_fn, x, y, opt2, 3)
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b)


def test_typed_state():
    model, loss_fn, x, y = classification()
    opt = kfac_sgd(model.parameters(), lr=0.1, generator=0)
    train(model, loss_fn, x, y, opt, 1)
    st = opt.typed_state(model[0].weight)
    assert [f.shape for f in st.factors] == [(16, 16), (6, 6)]
    assert len(st.inverses) == 2


def test_missing_quantity_is_explained():
    model, loss_fn, x, y = classification()
    opt = PreconditionedSGD(model.parameters(), 0.1, KroneckerPreconditioner("kflr"))
    loss_fn(model(x), y).backward()
    with pytest.raises(RuntimeError, match="record"):
        opt.step()


def test_bad_arguments():
    with pytest.raises(ValueError):
        DiagonalPreconditioner("diag_h")
    with pytest.raises(ValueError):
        KroneckerPreconditioner("kfac", update_every=0)
