"""Library functions behind the CLI: spec parsing, train, compare, memory, variance."""

import json

import pytest
import torch

from backprobe import Exact, Probe
from backprobe.app.compare import compare
from backprobe.app.memory import memory_report
from backprobe.app.spec import SPECS, SpecFamily, grammar, parse_estimator, parse_list, register
from backprobe.app.training import TrainConfig, load_data, train
from backprobe.app.variance import variance_study

# ----------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize("spec, expected", [
    ("exact", {}),
    ("EXACT", {}),
    ("probe:4", dict(num_probes=4, distribution="rademacher", mode="channel", per_sample=True,
                     orthogonal=False)),
    ("probe:16:gaussian", dict(num_probes=16, distribution="gaussian")),
    ("probe:8:joint", dict(num_probes=8, mode="joint")),
    ("probe:8:joint:uniform:shared:orthogonal",
     dict(num_probes=8, mode="joint", distribution="uniform", per_sample=False, orthogonal=True)),
    ("probe:2:orthogonal:shared:channel:rademacher",
     dict(num_probes=2, mode="channel", distribution="rademacher", per_sample=False,
          orthogonal=True)),
    (" probe:3 : Gaussian ", dict(num_probes=3, distribution="gaussian")),
])
def test_parse_good_specs(spec, expected):
    est = parse_estimator(spec)
    assert isinstance(est, Exact if not expected else Probe)
    for key, value in expected.items():
        assert getattr(est, key) == value


@pytest.mark.parametrize("spec", [
    "", "probe", "probe:0", "probe:-3", "probe:x", "probe:4:foo", "probe:4:gaussian:uniform",
    "probe:4:joint:channel", "probe:4:shared:shared", "exact:4", "nope", "probe:1.5",
])
def test_parse_bad_specs_list_the_grammar(spec):
    with pytest.raises(ValueError) as info:
        parse_estimator(spec)
    assert "probe:R[:OPTION...]" in str(info.value) and "exact" in str(info.value)


def test_spec_table_is_extensible():
    register(SpecFamily("twice", "twice:R", lambda args: Probe(2 * int(args[0]))))
    try:
        assert parse_estimator("twice:3").num_probes == 6
        assert "twice:R" in grammar()
    finally:
        SPECS.pop("twice")


def test_parse_list():
    assert parse_list("exact, probe:4,probe:16") == ["exact", "probe:4", "probe:16"]
    with pytest.raises(ValueError):
        parse_list("exact,probe:0")
    with pytest.raises(ValueError):
        parse_list(" , ")


# ----------------------------------------------------------------------------- training

SMALL = dict(model="mnist_cnn", data="digits", image_size=8)


@pytest.fixture(scope="module")
def digits8():
    return load_data("digits", image_size=8)


def test_train_one_epoch_records_everything(digits8):
    cfg = TrainConfig(**SMALL, estimator="probe:4", batch_size=128, epochs=2, seed=1,
                      optimizer="sgd", lr=0.1)
    r = train(cfg, split=digits8)
    assert len(r.train_loss) == len(r.epoch_seconds) == len(r.test_accuracy_per_epoch) == 2
    assert r.steps == 24 and r.train_loss[1] < r.train_loss[0]
    assert r.test_accuracy > 0.3  # chance is 0.1
    assert 0 < r.saved_activation_bytes < r.exact_saved_activation_bytes
    d = r.to_json()
    json.dumps(d)
    for key in ("model", "data", "estimator", "seed", "test_accuracy", "train_loss",
                "epoch_seconds", "saved_activation_bytes"):
        assert key in d


def test_train_is_reproducible(digits8):
    cfg = TrainConfig(**SMALL, estimator="probe:4:joint", batch_size=32, epochs=1, seed=3,
                      max_steps=4)
    a, b = train(cfg, split=digits8), train(cfg, split=digits8)
    assert a.train_loss == b.train_loss
    for pa, pb in zip(a.model_obj.parameters(), b.model_obj.parameters()):
        assert torch.equal(pa, pb)
    c = train(TrainConfig(**{**cfg.__dict__, "seed": 4}), split=digits8)
    assert c.train_loss != a.train_loss


def test_train_adam_and_max_steps(digits8):
    cfg = TrainConfig(**SMALL, estimator="exact", optimizer="adam", batch_size=64, epochs=3,
                      max_steps=5)
    r = train(cfg, split=digits8)
    assert r.steps == 5 and r.lr == 2e-3 and len(r.train_loss) == 1


def test_bad_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        _ = TrainConfig(optimizer="lbfgs").learning_rate


def test_compare_tiny_grid(tmp_path):
    res = compare("mnist_cnn", "digits", ["exact", "probe:2"], [512], seeds=[0, 1], epochs=1,
                  image_size=8)
    assert len(res.runs) == 4
    table = res.table()
    assert "exact" in table and "probe:2" in table and "±" in table and "B=512" in table
    rows = res.summary()
    assert [r["estimator"] for r in rows] == ["exact", "probe:2"]
    assert rows[0]["memory_ratio"] == pytest.approx(1.0)
    assert rows[1]["memory_ratio"] > 1.0
    png = res.plot(tmp_path / "c.png")
    assert png.stat().st_size > 1000


def test_memory_report_totals():
    rep = memory_report("mnist_cnn", (8, 1, 28, 28), 10, "probe:16")
    assert rep.exact_total == sum(r[2] for r in rep.rows)
    assert rep.ratio > 5
    text = str(rep)
    assert "total" in text and "Conv2d" in text and "ReLU" in text


def test_variance_study_tiny(tmp_path):
    res = variance_study("mnist_cnn", "digits", [2, 8], out=tmp_path, batch_size=8, draws=10,
                         minibatches=3, image_size=8, hist_layers=1, weights_per_layer=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["variance.json", "variance_hist_images.png", "variance_hist_normal.png",
                     "variance_std.png"]
    assert set(res.histograms) == {"normal", "images"}
    assert len(res.std) == 3 and set(res.std["0"]) == {"exact", "probe:2", "probe:8"}
    assert "probe:8" in res.table()
