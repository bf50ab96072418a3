"""SAG, SAGA, SAGA-LD and SVRG in torch.optim's closure form equal their step(indices) form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backprobe.optim import SAG, SAGA, SAGALD, SVRG, LowRank, full_gradient

N = 12
BATCHES = [[0, 3, 5, 7], [1, 2, 4, 6], [8, 9, 10, 11], [0, 1, 8, 9], [3, 4, 10, 11]]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 1, 5, 5, generator=g), torch.randint(0, 3, (N,), generator=g)


def _loss(model, x, y, idx):
    return nn.functional.cross_entropy(model(x[idx]), y[idx])


def _indices_form(cls, kwargs):
    model, (x, y) = _model(), _data()
    opt = cls(model.parameters(), lr=0.1, num_examples=N, **kwargs)
    for b in BATCHES:
        idx = torch.tensor(b)
        opt.zero_grad()
        with opt.record(model):
            _loss(model, x, y, idx).backward()
        opt.step(idx)
    return model


@pytest.mark.parametrize("cls, kwargs", [
    (SAGA, {}), (SAG, {}), (SAGA, {"momentum": 0.9, "nesterov": True}),
    (SAGA, {"storage": LowRank(1), "generator": 3}), (SAGALD, {"generator": 5}),
])
@pytest.mark.parametrize("form", ["returns_indices", "set_indices", "closure_records"])
def test_closure_form_equals_indices_form(cls, kwargs, form):
    ref = _indices_form(cls, kwargs)
    model, (x, y) = _model(), _data()
    records = form == "closure_records"
    opt = cls(model.parameters(), lr=0.1, num_examples=N, **kwargs,
              **({} if records else {"model": model}))
    for b in BATCHES:
        idx = torch.tensor(b)

        def closure(idx=idx):
            opt.zero_grad()
            if records:
                with opt.record(model):
                    loss = _loss(model, x, y, idx)
                    loss.backward()
            else:
                loss = _loss(model, x, y, idx)
                loss.backward()
            return loss if form == "set_indices" else (loss, idx)

        if form == "set_indices":
            opt.set_indices(idx)
        loss = opt.step(closure)
        assert torch.is_tensor(loss) and loss.dim() == 0
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_closure_form_errors():
    model, (x, y) = _model(), _data()
    opt = SAGA(model.parameters(), lr=0.1, num_examples=N, model=model)

    def loss_only():
        opt.zero_grad()
        loss = _loss(model, x, y, [0, 1])
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="needs the batch's dataset indices"):
        opt.step(loss_only)
    opt.set_indices([0, 1])
    opt.step(loss_only)
    with pytest.raises(ValueError, match="needs the batch's dataset indices"):
        opt.step(loss_only)  # set_indices names one step only
    with pytest.raises(ValueError, match="differ"):
        opt.step(torch.tensor([2, 3]), lambda: (loss_only(), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="num_examples"):
        opt.set_indices([N])
    with pytest.raises(TypeError, match="nn.Module"):
        SAGA(model.parameters(), lr=0.1, num_examples=N, model="model")


def test_svrg_accepts_the_same_closure():
    (x, y) = _data()
    runs = []
    for with_indices in (False, True):
        model = _model()

        full = full_gradient(model, nn.functional.cross_entropy,
                             [(x[i:i + 4], y[i:i + 4]) for i in range(0, N, 4)], N)
        opt = SVRG(model.parameters(), lr=0.1, full_gradient=full, snapshot_every=3)
        for b in BATCHES:
            idx = torch.tensor(b)

            def closure(opt=opt, model=model, idx=idx, with_indices=with_indices):
                opt.zero_grad()
                loss = _loss(model, x, y, idx)
                loss.backward()
                return (loss, idx) if with_indices else loss

            loss = opt.step(closure)
            assert torch.is_tensor(loss)
        runs.append(model)
    for p, q in zip(*(m.parameters() for m in runs)):
        assert torch.equal(p, q)
