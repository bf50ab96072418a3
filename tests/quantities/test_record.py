"""record's contract: the objective actually backpropagated, and several backward passes.

Curvature is that of ``c * loss_fn(output, target)`` (``c`` read at backward) or raises;
a second backward in one context raises unless ``accumulate=True``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backprobe.quantities import (
    KFLR,
    BatchDiagGGNExact,
    BatchGrad,
    BatchL2Grad,
    DiagGGNExact,
    DiagHessian,
    HutchinsonDiagHessian,
    SqrtGGNExact,
    SumGradSquared,
    Variance,
    clear,
    record,
)

pytestmark = pytest.mark.usefixtures("float64_default")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))


def _data(n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _hessian_diag(model: nn.Module, objective) -> torch.Tensor:
    """Diagonal of the Hessian of ``objective(model)`` in all parameters (float64 oracle)."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in model.parameters()])

    def f(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {k: v.view(s) for k, v, s in zip(names, parts, shapes)}
        return objective(lambda x: torch.func.functional_call(model, params, (x,)))

    return torch.autograd.functional.hessian(f, flat0).diagonal()


@pytest.mark.parametrize("c", [2.0, 0.25, -1.5])
def test_scaled_loss_gives_the_curvature_of_the_scaled_loss(c):
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    x, y = _data()
    with record(model, DiagHessian(), DiagGGNExact(), loss_fn=loss_fn):
        (c * loss_fn(model(x), y)).backward()
    true = _hessian_diag(model, lambda net: c * loss_fn(net(x), y))
    for field in ("diag_h", "diag_ggn_exact"):
        got = torch.cat([getattr(p, field).flatten() for p in model.parameters()])
        torch.testing.assert_close(got, true)


def test_scaled_loss_scales_kronecker_and_hutchinson():
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    x, y = _data()
    results = {}
    for c in (1.0, 3.0):
        with record(model, KFLR(), HutchinsonDiagHessian(seed=0), SqrtGGNExact(),
                    loss_fn=loss_fn):
            (loss_fn(model(x), y) * c).backward()
        w = model[0].weight
        results[c] = (w.kflr[0], w.kflr[1], w.diag_h_hutchinson, w.sqrt_ggn_exact)
    one, three = results[1.0], results[3.0]
    torch.testing.assert_close(three[0], 3 * one[0])  # G scales, A does not
    torch.testing.assert_close(three[1], one[1])
    torch.testing.assert_close(three[2], 3 * one[2])
    torch.testing.assert_close(three[3], 3 ** 0.5 * one[3])
    with pytest.raises(ValueError, match="square root"), \
            record(model, SqrtGGNExact(), loss_fn=loss_fn):
        (-loss_fn(model(x), y)).backward()


def _l2_on_outputs(model, loss_fn, x, y):
    out = model(x)
    return loss_fn(out, y) + 0.1 * out.square().sum()


def _penalty_on_activations(model, loss_fn, x, y):
    hidden = model[0](x)
    return loss_fn(model[2](model[1](hidden)), y) + hidden.square().mean()


def _second_head(model, loss_fn, x, y):
    return loss_fn(model(x), y) + model[0](x).sum()


def _functional_loss(model, loss_fn, x, y):
    return F.cross_entropy(model(x), y)


def _two_calls(model, loss_fn, x, y):
    return loss_fn(model(x[:2]), y[:2]) + loss_fn(model(x[2:]), y[2:])


def _squared_output_reused(model, loss_fn, x, y):
    out = model(x)
    return loss_fn(out, y) + loss_fn(out.detach(), y) + (out * 0 + out).std()


@pytest.mark.parametrize("objective", [_l2_on_outputs, _penalty_on_activations, _second_head,
                                       _functional_loss, _two_calls, _squared_output_reused])
@pytest.mark.parametrize("quantity", [DiagGGNExact, DiagHessian, KFLR])
def test_other_objectives_raise_and_store_nothing(objective, quantity):
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    x, y = _data()
    q = quantity()
    with pytest.raises(ValueError, match="loss_fn"), record(model, q, loss_fn=loss_fn):
        objective(model, loss_fn, x, y).backward()
    assert not any(hasattr(p, q.savefield) for p in model.parameters())


def test_hutchinson_alone_checks_the_model_output():
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    x, y = _data()
    with pytest.raises(ValueError, match="model output"), \
            record(model, HutchinsonDiagHessian(), loss_fn=loss_fn):
        _l2_on_outputs(model, loss_fn, x, y).backward()


def test_a_loss_never_backpropagated_does_not_count():
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    x, y = _data()
    xv, yv = _data(seed=1)
    with record(model, DiagGGNExact(), loss_fn=loss_fn):
        loss = loss_fn(model(x), y)
        loss_fn(model(xv), yv)  # e.g. a validation loss with grad enabled
        loss.backward()
    true = _hessian_diag(model, lambda net: loss_fn(net(x), y))
    got = torch.cat([p.diag_ggn_exact.flatten() for p in model.parameters()])
    torch.testing.assert_close(got, true)


def test_second_backward_raises_by_default():
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    x, y = _data(6)
    for q in (BatchGrad(), DiagGGNExact()):
        with pytest.raises(ValueError, match="accumulate=True"), \
                record(model, q, loss_fn=loss_fn):
            for sl in (slice(0, 3), slice(3, 6)):
                loss_fn(model(x[sl]), y[sl]).backward()


def test_accumulate_combines_micro_batches_like_grad():
    model, loss_fn = _mlp(), nn.CrossEntropyLoss(reduction="sum")
    x, y = _data(6)
    full = {}
    with record(model, BatchGrad(), BatchL2Grad(), SumGradSquared(), DiagGGNExact(),
                BatchDiagGGNExact(), loss_fn=loss_fn):
        loss_fn(model(x), y).backward()
    for k, p in model.named_parameters():
        full[k] = (p.grad_batch, p.batch_l2, p.sum_grad_squared, p.diag_ggn_exact,
                   p.diag_ggn_exact_batch)
    model.zero_grad()
    with record(model, BatchGrad(), BatchL2Grad(), SumGradSquared(), DiagGGNExact(),
                BatchDiagGGNExact(), loss_fn=loss_fn, accumulate=True):
        for sl in (slice(0, 2), slice(2, 6)):
            loss_fn(model(x[sl]), y[sl]).backward()
    for k, p in model.named_parameters():
        got = (p.grad_batch, p.batch_l2, p.sum_grad_squared, p.diag_ggn_exact,
               p.diag_ggn_exact_batch)
        for a, b in zip(got, full[k]):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(p.grad_batch.sum(0), p.grad)


def test_accumulate_refuses_quantities_that_do_not_combine():
    with pytest.raises(ValueError, match="Variance"):
        record(_mlp(), Variance(), accumulate=True)


def test_results_stay_after_the_context_until_cleared():
    model, loss_fn = _mlp(), nn.CrossEntropyLoss()
    x, y = _data()
    with record(model, BatchGrad(), DiagGGNExact(), loss_fn=loss_fn):
        loss_fn(model(x), y).backward()
    assert all(hasattr(p, "grad_batch") and hasattr(p, "diag_ggn_exact")
               for p in model.parameters())
    assert clear(model) is model
    assert not any(hasattr(p, "grad_batch") or hasattr(p, "diag_ggn_exact")
                   for p in model.parameters())


class _WithOutputSize(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, output_size=(12, 12)).flatten(1)


def test_conv_transpose_called_with_output_size():
    torch.manual_seed(0)
    net = _WithOutputSize(nn.ConvTranspose2d(2, 3, 3, stride=2))
    x = torch.randn(4, 2, 5, 5)
    with record(net, BatchGrad()):
        net(x).square().sum().backward()
    for p in net.parameters():
        torch.testing.assert_close(p.grad_batch.sum(0), p.grad)
