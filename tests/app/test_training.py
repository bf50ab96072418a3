"""backprobe.app.training: one training run (DDP: test_ddp.py)."""

import json

import pytest
import torch

from backprobe.app.training import TrainConfig, load_data, train

SMALL = dict(model="mnist_cnn", data="digits", image_size=8)


@pytest.fixture(scope="module")
def digits8():
    return load_data("digits", image_size=8)


@pytest.fixture(scope="module")
def subset(digits8):
    """256 training and 100 test digits: 4 steps per epoch at batch 64."""
    from dataclasses import replace

    return replace(digits8, x_train=digits8.x_train[:256], y_train=digits8.y_train[:256],
                   x_test=digits8.x_test[:100], y_test=digits8.y_test[:100])


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


def _interrupt_at(k):
    """An ``on_step`` that sends this process SIGINT (a real Ctrl-C) after step ``k``."""
    import os
    import signal

    def on_step(result):
        if result.steps == k:
            os.kill(os.getpid(), signal.SIGINT)
    return on_step


@pytest.mark.parametrize("spec, k", [("probe:4", 3), ("probe:4:gaussian:joint", 4)])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(subset, tmp_path, spec, k):
    # 4 steps per epoch: k = 3 stops mid-epoch, k = 4 at an epoch's end
    cfg = TrainConfig(**SMALL, estimator=spec, batch_size=64, epochs=2, seed=5,
                      optimizer="adam")
    full = train(cfg, split=subset)
    ckpt = tmp_path / "run.ckpt"
    part = train(cfg, split=subset, on_step=_interrupt_at(k), checkpoint=ckpt)
    assert part.interrupted and part.steps == k and ckpt.is_file()
    assert json.loads(json.dumps(part.to_json()))["interrupted"] is True
    resumed = train(cfg, split=subset, resume=ckpt)
    assert not resumed.interrupted and resumed.steps == full.steps == 8
    assert resumed.train_loss == full.train_loss
    assert resumed.test_accuracy_per_epoch == full.test_accuracy_per_epoch
    a, b = full.model_obj.state_dict(), resumed.model_obj.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert resumed.saved_activation_bytes == full.saved_activation_bytes


def test_checkpoint_holds_every_estimators_state(subset, tmp_path):
    from backprobe.app.training import CHECKPOINT_FORMAT

    cfg = TrainConfig(**SMALL, estimator="probe:4", batch_size=64, epochs=1, seed=5,
                      max_steps=2)
    r = train(cfg, split=subset, checkpoint=tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=False)
    assert ck["format"] == CHECKPOINT_FORMAT and ck["epoch"] == 2 and ck["step_in_epoch"] == 0
    layers = {n for n, m in r.model_obj.named_modules() if hasattr(m, "estimator")}
    assert layers and {f"{n}.estimator.generator" for n in layers} <= set(ck["model"])
    assert set(ck["optimizer"]) == {"state", "param_groups"}


def test_resume_rejects_another_runs_checkpoint(subset, tmp_path):
    cfg = TrainConfig(**SMALL, estimator="probe:4", batch_size=64, epochs=1, max_steps=1)
    train(cfg, split=subset, checkpoint=tmp_path / "c.pt")
    other = TrainConfig(**{**cfg.__dict__, "batch_size": 32, "seed": 1})
    with pytest.raises(ValueError, match="--batch-size 64 there, 32 here.*--seed"):
        train(other, split=subset, resume=tmp_path / "c.pt")


def test_ctrl_c_on_the_command_line_saves_json_weights_and_checkpoint(
        tmp_path, capsys, monkeypatch):
    from backprobe.app import training
    from backprobe.app.cli import main

    real = training.train
    monkeypatch.setattr(training, "train",
                        lambda *a, **kw: real(*a, **kw, on_step=_interrupt_at(2)))
    argv = ["train", *("--image-size 8 --estimator probe:4 --batch-size 512 --epochs 1 "
                       "--no-progress").split()]
    files = {f: tmp_path / f"r.{f}" for f in ("json", "save", "checkpoint")}
    flags = [x for f, p in files.items() for x in (f"--{f}", str(p))]
    assert main([*argv, *flags]) == 130
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "interrupted after 2 steps" in out.out
    assert f"--resume {files['checkpoint']}" in out.out
    d = json.loads(files["json"].read_text())  # strict JSON: no NaN
    assert d["interrupted"] is True and d["steps"] == 2 and d["test_accuracy"] is None
    assert files["save"].is_file() and files["checkpoint"].is_file()
    monkeypatch.setattr(training, "train", real)
    assert main([*argv, "--resume", str(files["checkpoint"]), "--json", str(files["json"])]) == 0
    d = json.loads(files["json"].read_text())
    assert "interrupted" not in d or d["interrupted"] is False
    assert d["steps"] == 3 and len(d["train_loss"]) == 1 and d["test_accuracy"] is not None
