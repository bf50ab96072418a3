"""backprobe.optim._base: the validator, the randomness convention, momentum, state round-trip."""

import copy

import pytest
import torch

from backprobe.optim import SAGA, SGLD, PreconditionedSGD, diag_ggn_sgd
from backprobe.optim._base import add_weight_decay, apply_momentum, check, make_generator


@pytest.mark.parametrize("value, rule, error", [
    (0.0, "positive", ValueError), (float("inf"), "nonnegative", ValueError),
    (1.0, "fraction", ValueError), (-0.1, "fraction", ValueError), ("1", "positive", TypeError),
    (True, "nonnegative", TypeError), (0, "count", ValueError), (2.0, "count", TypeError),
])
def test_check_rejects(value, rule, error):
    with pytest.raises(error, match="lr"):
        check("lr", value, rule)


@pytest.mark.parametrize("value, rule", [(1e-9, "positive"), (0, "nonnegative"),
                                         (0.0, "fraction"), (0.99, "fraction"), (1, "count")])
def test_check_accepts(value, rule):
    check("lr", value, rule)


def test_make_generator_convention():
    g = torch.Generator().manual_seed(3)
    assert make_generator(g) is g
    a, b = make_generator(7), make_generator(7)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    c = make_generator(None)
    assert not torch.equal(torch.get_rng_state(), state)  # seeded once from the global RNG
    state = torch.get_rng_state()
    torch.rand(3, generator=c)
    assert torch.equal(torch.get_rng_state(), state)  # drawing never touches it again
    with pytest.warns(DeprecationWarning, match="generator="):
        d = make_generator(None, seed=7)
    assert torch.equal(torch.rand(4, generator=d), torch.rand(4, generator=make_generator(7)))
    with pytest.raises(TypeError, match="generator"):
        make_generator("7")  # type: ignore[arg-type]


def test_momentum_and_weight_decay_match_torch_sgd():
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    ref = w.detach().clone().requires_grad_(True)
    sgd = torch.optim.SGD([ref], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    state: dict = {}
    for _ in range(4):
        g = torch.randn(5)
        ref.grad = g.clone()
        sgd.step()
        with torch.no_grad():
            d = apply_momentum(state, add_weight_decay(g, w, 0.01), 0.9, nesterov=True)
            w.add_(d, alpha=-0.1)
    torch.testing.assert_close(w, ref)


@pytest.mark.parametrize("make", [
    lambda p: SAGA(p, lr=0.1, num_examples=3, generator=0),
    lambda p: SGLD(p, lr=0.1, generator=0),
    lambda p: diag_ggn_sgd(p, lr=0.1, generator=0),
])
def test_state_round_trip_keeps_the_generator_and_rejects_foreign_dicts(make):
    p = [torch.zeros(2, requires_grad=True)]
    opt = make(p)
    sd = copy.deepcopy(opt.state_dict())
    assert "backprobe" in sd
    gen = opt.generator
    expected = torch.rand(3, generator=gen)
    opt.load_state_dict(sd)
    assert torch.equal(torch.rand(3, generator=gen), expected)
    with pytest.raises(ValueError, match="state dict"):
        opt.load_state_dict(torch.optim.SGD(p, lr=0.1).state_dict())


def test_preconditioned_checks_its_groups():
    from backprobe.optim import DiagonalPreconditioner

    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="lr"):
        PreconditionedSGD(p, 0.0, DiagonalPreconditioner("diag_ggn_exact"))
    with pytest.raises(ValueError, match="momentum"):
        PreconditionedSGD(p, 0.1, DiagonalPreconditioner("diag_ggn_exact"), momentum=1.0)
