"""backprobe.app.training: one training run (DDP: test_ddp.py)."""

import json

import pytest
import torch

from backprobe.app.training import TrainConfig, load_data, train

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
