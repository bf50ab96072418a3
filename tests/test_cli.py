"""The ``backprobe`` command line, run in-process with ``main([...])``."""

import json

import pytest

from backprobe.cli import build_parser, main


def test_train_writes_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(["train", "--model", "mnist_cnn", "--data", "digits", "--image-size", "8",
                 "--estimator", "probe:4:gaussian", "--batch-size", "256", "--epochs", "1",
                 "--lr", "0.05", "--optimizer", "sgd", "--seed", "2", "--threads", "1",
                 "--json", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "epoch 1/1" in text and "train loss" in text and "test acc" in text
    assert "saved activations" in text and "exact" in text
    d = json.loads(out.read_text())
    for key in ("model", "data", "estimator", "seed", "test_accuracy", "train_loss",
                "epoch_seconds", "saved_activation_bytes"):
        assert key in d
    assert d["estimator"] == "probe:4:gaussian" and d["seed"] == 2 and d["lr"] == 0.05
    assert len(d["train_loss"]) == len(d["epoch_seconds"]) == 1


def test_bad_spec_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--estimator", "probe:four"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "probe:R[:OPTION...]" in err and "--estimator" in err


def test_compare_writes_png_and_json(tmp_path, capsys):
    code = main(["compare", "--model", "mnist_cnn", "--data", "digits", "--image-size", "8",
                 "--estimators", "exact,probe:2", "--batch-sizes", "512", "--seeds", "0",
                 "--epochs", "1", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "acc % B=512" in text and "probe:2" in text and "vs exact" in text
    assert (tmp_path / "compare.png").stat().st_size > 1000
    d = json.loads((tmp_path / "compare.json").read_text())
    assert len(d["runs"]) == 2 and len(d["summary"]) == 2
    # a second seed run separately, then merged without training
    other = json.loads(json.dumps(d))
    other["seeds"] = [1]
    for r in other["runs"]:
        r["seed"], r["test_accuracy"] = 1, r["test_accuracy"] / 2
    (tmp_path / "other.json").write_text(json.dumps(other))
    merged = tmp_path / "merged"
    assert main(["compare", "--merge", str(tmp_path / "compare.json"), str(tmp_path / "other.json"),
                 "--out", str(merged)]) == 0
    m = json.loads((merged / "compare.json").read_text())
    assert m["seeds"] == [0, 1] and len(m["runs"]) == 4
    assert all(s["accuracy_std"] > 0 for s in m["summary"])


def test_memory_prints_a_table(capsys):
    assert main(["memory", "--model", "mnist_cnn", "--input-shape", "4,3,32,32",
                 "--num-classes", "10", "--estimator", "probe:8"]) == 0
    text = capsys.readouterr().out
    assert "layer" in text and "Conv2d" in text and "total" in text and "probe:8" in text


def test_variance_writes_pngs(tmp_path, capsys):
    assert main(["variance", "--model", "mnist_cnn", "--data", "digits", "--image-size", "8",
                 "--probes", "2", "--draws", "5", "--minibatches", "2", "--batch-size", "4",
                 "--hist-layers", "1", "--weights-per-layer", "1",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    assert len(list(tmp_path.glob("variance_*.png"))) == 3
    assert "std of each conv layer" in capsys.readouterr().out


def test_unknown_model_is_a_clean_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["memory", "--model", "nope", "--estimator", "exact"])
    assert info.value.code == 2
    assert "unknown model" in capsys.readouterr().err


def test_parser_has_all_subcommands():
    text = build_parser().format_help()
    for cmd in ("train", "compare", "memory", "variance", "bench"):
        assert cmd in text


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "backprobe", "--help"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "compare" in out and "probe:R[:OPTION...]" in out


def test_bench_calls_backprobe_bench(tmp_path, capsys, monkeypatch):
    import backprobe.bench as bench

    calls = {}

    def fake_run_layers(grid, **kwargs):
        calls["layers"] = (grid, kwargs)
        return {"config": {"cases": [{"batch": 2, "channels": 4, "image_size": 8}]}, "rows": []}

    monkeypatch.setattr(bench, "run_layers", fake_run_layers)
    monkeypatch.setattr(bench, "layers_markdown", lambda result: "LAYER TABLE")
    monkeypatch.setattr(bench, "plot_layers", lambda rows, path, **kw: path)
    assert main(["bench", "layers", "--r", "4,16", "--repeats", "2", "--clock", "cpu",
                 "--out", str(tmp_path)]) == 0
    grid, kwargs = calls["layers"]
    assert grid == "quick" and kwargs["rs"] == [4, 16] and kwargs["repeats"] == 2
    assert kwargs["clock"] == "cpu"
    assert "LAYER TABLE" in capsys.readouterr().out
    assert (tmp_path / "layers_quick.json").exists()
