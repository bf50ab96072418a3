"""Drop-in affine layers: generated from the op registry, one per registered affine type."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import backprobe
from backprobe.estimators import Exact, Probe, choose
from backprobe.layers import bind, module_types
from tests.cases import LAYERS, layer_ids


def test_a_dropin_for_every_affine_op():
    assert set(backprobe.nn.AFFINE_SWAPS) == set(module_types("affine"))
    for torch_type, dropin in backprobe.nn.AFFINE_SWAPS.items():
        assert issubclass(dropin, torch_type) and issubclass(dropin, backprobe.nn.EstimatedLayer)
        assert getattr(backprobe.nn, torch_type.__name__) is dropin
        assert torch_type.__name__ in backprobe.nn.__all__


@pytest.mark.parametrize("case", LAYERS, ids=layer_ids(LAYERS))
def test_dropin_keeps_torch_parameters_and_pickles(case):
    torch.manual_seed(0)
    plain = case.make()
    dropin = backprobe.nn.AFFINE_SWAPS[case.module_type](**case.kwargs, estimator=Probe(2))
    assert set(dropin.state_dict()) == set(plain.state_dict()) | {"estimator.generator"}
    dropin.load_state_dict(plain.state_dict())  # strict: the generator's key may be absent
    x = case.input(dtype=torch.float32)
    torch.testing.assert_close(dropin(x), plain.float()(x))
    copy = pickle.loads(pickle.dumps(dropin))
    assert type(copy) is type(dropin) and repr(copy.estimator) == repr(dropin.estimator)


def test_choose_falls_back_to_exact_where_probing_keeps_more():
    layer = backprobe.nn.Conv2d(3, 4, 3, padding=1)
    probe = Probe(16)
    small, big = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 16, 16)
    est, path = choose(probe, *reversed(bind(layer, small)))
    assert path == "exact" and isinstance(est, Exact)
    est, path = choose(probe, *reversed(bind(layer, big)), module=layer)
    assert path == "estimator" and est is probe
    layer.exact_held_inputs = True  # as convert sets it: the data batch is kept exactly
    est, path = choose(probe, *reversed(bind(layer, big)), module=layer)
    assert path == "held" and isinstance(est, Exact)
    est, path = choose(probe, *reversed(bind(layer, big.requires_grad_())), module=layer)
    assert path == "estimator" and est is probe


def test_conv_transpose_dropin_takes_output_size():
    torch.manual_seed(0)
    plain = nn.ConvTranspose2d(2, 3, 3, stride=2).double()
    dropin = backprobe.convert(copy.deepcopy(plain), Exact(), layers=(nn.ConvTranspose2d,))
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    outs = [m(x, output_size=(12, 12)) for m in (plain, dropin)]
    assert outs[1].shape == outs[0].shape == (2, 3, 12, 12)
    torch.testing.assert_close(outs[1], outs[0])
    for out in outs:
        out.square().sum().backward()
    torch.testing.assert_close(dropin.weight.grad, plain.weight.grad)


def test_replay_source_recomputes_rows_of_a_held_input_layer():
    from backprobe.estimators import replay_source

    torch.manual_seed(0)
    model = backprobe.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)),
                              Probe(2, seed=0))
    x = torch.randn(5, 3, 9, 9, dtype=torch.float64)
    model.double()
    y = model[0](x)
    recipe = replay_source(y)
    assert recipe is not None and torch.equal(recipe(1, 3), y[1:3].detach())
    assert replay_source(model[2](model[1](y))) is None  # probed: nothing to replay
    assert replay_source(y.relu()) is None  # not the layer's output any more
    assert replay_source(model[0](x.clone().requires_grad_())) is None  # input has history
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        recipe(0, 1)
