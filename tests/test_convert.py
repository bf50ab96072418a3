"""convert / revert / report / set_estimator on whole networks."""

import pytest
import torch
from torch import nn

import backprobe
from backprobe import Exact, Probe


def small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 10),
    )


def test_convert_swaps_in_place_and_reports():
    model = small_net()
    params = [id(p) for p in model.parameters()]
    x = torch.randn(4, 3, 8, 8)
    out = backprobe.convert(model, Probe(8), example_input=x)
    assert out is model and [id(p) for p in model.parameters()] == params
    assert isinstance(model[0], backprobe.nn.Conv2d) and type(model[9]) is nn.Linear
    assert isinstance(model[1], backprobe.nn.ReLU) and isinstance(model[2], backprobe.nn.MaxPool2d)
    rep = backprobe.report(model)
    actions = {e.name: e.action for e in rep.entries}
    # the first conv's input is the data batch the caller holds: exact costs nothing extra
    assert actions["0"] == "exact (held input)" and actions["3"] == "converted"
    # the last conv sees 2x2 maps (4 positions < 8 probes): falls back to exact, and says so
    assert actions["6"] == "exact (fallback)"
    assert "6" in rep.skipped and "3" in rep.converted
    assert "Conv2d" in str(rep) and "held" in str(rep)


def test_held_input_layer_is_exact_and_can_be_probed_on_request():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    plain = small_net()
    nn.functional.cross_entropy(plain(x), y).backward()
    model = backprobe.convert(small_net(), Probe(2, seed=0))
    model.load_state_dict(plain.state_dict(), strict=False)
    nn.functional.cross_entropy(model(x), y).backward()
    assert model[0].last_path == "held" and model[3].last_path == "estimator"
    torch.testing.assert_close(model[0].weight.grad, plain[0].weight.grad)
    assert not torch.allclose(model[3].weight.grad, plain[3].weight.grad)
    # an input with history (or requiring grad) is probed as before
    model.zero_grad()
    nn.functional.cross_entropy(model(x.clone().requires_grad_()), y).backward()
    assert model[0].last_path == "estimator"
    # opt out: the first layer is probed on the data batch too
    probed = backprobe.convert(small_net(), Probe(2, seed=0), exact_held_inputs=False)
    nn.functional.cross_entropy(probed(x), y).backward()
    assert probed[0].last_path == "estimator"
    assert backprobe.revert(probed) is probed and not hasattr(probed[0], "exact_held_inputs")


def test_convert_layers_skip_first_and_subclasses():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(3, 4, 3), MyConv(4, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2))
    backprobe.convert(model, Probe(4), skip_first=True, layers=(nn.Conv2d, nn.Linear))
    assert type(model[0]) is nn.Conv2d and type(model[1]) is MyConv
    assert isinstance(model[2], backprobe.nn.Conv2d) and isinstance(model[3], backprobe.nn.Linear)
    reasons = {e.name: e.reason for e in backprobe.report(model).entries}
    assert reasons["0"] == "skip_first" and "subclass" in reasons["1"]


def test_revert_and_state_dict_compatibility():
    model = small_net()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    backprobe.convert(model, Probe(4))
    # torch's keys plus each probed layer's generator state
    assert set(model.state_dict()) == set(sd) | {"0.estimator.generator", "3.estimator.generator",
                                                 "6.estimator.generator"}
    plain = small_net()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.endswith("estimator.generator") for k in unexpected)
    model.load_state_dict(sd, strict=True)  # a plain checkpoint keeps the estimator's state
    backprobe.revert(model)
    assert all(type(m).__module__.startswith("torch.nn") for m in model.modules())
    assert not hasattr(model[0], "estimator")
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), plain(x))


def test_converted_network_trains_with_exact_gradients_under_exact():
    torch.manual_seed(0)
    model = small_net().double()
    ref = small_net().double()
    ref.load_state_dict(model.state_dict())
    backprobe.convert(model, Exact(), layers=(nn.Conv2d, nn.Linear))
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    for net in (model, ref):
        nn.functional.cross_entropy(net(x), y).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_set_estimator_anneals_r():
    model = backprobe.convert(small_net(), Probe(8))
    backprobe.set_estimator(model, Probe(2))
    assert all(m.estimator.num_probes == 2 for m in model.modules()
               if isinstance(m, backprobe.nn.EstimatedLayer))


def test_whole_network_memory_drops():
    model = small_net()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model[9] = nn.Linear(8 * 8 * 8, 10)
    loss = nn.CrossEntropyLoss()
    exact = backprobe.saved_activation_bytes(model, x, y, loss)
    backprobe.convert(model, Probe(4))
    probed = backprobe.saved_activation_bytes(model, x, y, loss)
    assert probed * 8 < exact


def test_bad_arguments():
    with pytest.raises(ValueError, match="LSTM"):
        backprobe.convert(small_net(), Probe(4), layers=(nn.LSTM,))
    with pytest.raises(TypeError):
        backprobe.convert(small_net(), "probe:4")
    for flag in ("skip_first", "compact_activations", "exact_held_inputs"):
        with pytest.raises(TypeError, match=flag):
            backprobe.convert(small_net(), Probe(4), **{flag: "no"})
    with pytest.raises(ValueError, match="not converted"):
        backprobe.report(small_net())


def _resume_net(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3))
    backprobe.convert(model, Probe(3))
    backprobe.convert(model, backprobe.AOP(2, policy="randk", memory=True),
                      layers=(nn.Linear,))
    return model


def _resume_steps(model, opt, steps):
    for step in steps:
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 2, 6, 6, generator=gen), torch.randint(0, 3, (5,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_checkpoint_of_state_dict_and_optimizer_resumes_bit_for_bit():
    """Probe's and AOP's generators (and AOP's memory) travel in model.state_dict()."""
    import copy

    model = _resume_net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _resume_steps(model, opt, range(2))
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    assert "0.estimator.generator" in checkpoint["model"]
    assert "3.estimator.generator" in checkpoint["model"]
    _resume_steps(model, opt, range(2, 4))

    fresh = _resume_net(1)  # other weights, other generator seeds
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(checkpoint["model"])
    fresh_opt.load_state_dict(checkpoint["opt"])
    _resume_steps(fresh, fresh_opt, range(2, 4))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), fresh.state_dict().items(),
                                  strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1


def _mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_converting_nothing_raises_and_names_layers():
    model = _mlp()
    with pytest.raises(ValueError, match=r"layers=\(nn\.Linear,\)"):
        backprobe.convert(model, Probe(16))
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.ReLU  # left unchanged
    with pytest.raises(ValueError, match="no layer of a supported type"):
        backprobe.convert(nn.Sequential(nn.ReLU(), nn.Tanh()), Exact())


def test_convert_twice_replaces_the_estimator():
    model = backprobe.convert(_mlp(), backprobe.AOP(2, memory=True), layers=(nn.Linear,))
    assert hasattr(model[0], backprobe.estimators.aop.BUFFER_X)
    second = Probe(2)
    backprobe.convert(model, second, layers=(nn.Linear,))
    assert all(m.estimator is second for m in (model[0], model[2]))
    assert not hasattr(model[0], backprobe.estimators.aop.BUFFER_X)  # old estimator detached
    third = Probe(3)
    backprobe.convert(model, third, layers=(nn.Linear,), skip_first=True)
    assert type(model[0]) is nn.Linear and model[2].estimator is third
    assert backprobe.report(model).entries[0].reason == "skip_first"


def test_revert_and_set_estimator_need_a_converted_model():
    with pytest.raises(ValueError, match="never converted|no backprobe module"):
        backprobe.revert(_mlp())
    with pytest.raises(ValueError, match="convert"):
        backprobe.set_estimator(_mlp(), Probe(2))
