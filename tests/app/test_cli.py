"""The ``backprobe`` command line, run in-process with ``main([...])``."""

import json

import pytest

from backprobe.app.cli import build_parser, main


def test_train_writes_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(["train", "--model", "mnist_cnn", "--data", "digits", "--image-size", "8",
                 "--estimator", "probe:4:gaussian", "--batch-size", "256", "--epochs", "1",
                 "--max-steps", "2",
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


def test_bench_runs_the_benchmark_script(tmp_path, capsys, monkeypatch):
    import subprocess

    calls = {}

    def fake_run(argv, **kwargs):
        calls["argv"] = argv
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert main(["bench", "layers", "--r", "4,16", "--repeats", "2", "--clock", "cpu",
                 "--out", str(tmp_path)]) == 0
    argv = calls["argv"]
    assert argv[1].endswith("benchmarks/bench_layers.py")
    flags = argv[2:]
    assert "--quick" in flags and "--networks" not in flags
    assert flags[flags.index("--r") + 1] == "4,16"
    assert flags[flags.index("--repeats") + 1] == "2"
    assert flags[flags.index("--clock") + 1] == "cpu"
    assert flags[flags.index("--out") + 1] == str(tmp_path)


def test_bench_without_a_checkout_points_at_make_bench(tmp_path, capsys, monkeypatch):
    from backprobe.app import bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "__file__", str(tmp_path / "a" / "b" / "bench.py"))
    with pytest.raises(SystemExit) as info:
        main(["bench", "networks"])
    assert info.value.code == 2
    assert "make bench" in capsys.readouterr().err


@pytest.mark.parametrize("old, new", [
    ("backprobe.cli", "backprobe.app.cli"), ("backprobe.spec", "backprobe.app.spec"),
    ("backprobe.data", "backprobe.app.data"), ("backprobe.models", "backprobe.app.models"),
])
def test_moved_modules_warn_and_alias(old, new):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_old_train_module_warns_and_reexports():
    import importlib
    import sys

    from backprobe.app.training import train

    sys.modules.pop("backprobe.train", None)
    with pytest.warns(DeprecationWarning, match="backprobe.app"):
        old = importlib.import_module("backprobe.train")
    assert old.train is train and callable(old.compare) and callable(old.write_json)


def test_import_backprobe_imports_no_app():
    import subprocess
    import sys

    # torch itself imports tqdm (torch.hub: `import torch` alone has it in sys.modules when it
    # is installed). So after importing torch, forget the app's dependencies and refuse any
    # further import of them: backprobe must import without asking for one.
    code = """
import sys, torch
APP = ("matplotlib", "tqdm", "sklearn")
for m in [m for m in sys.modules if m.split(".")[0] in APP]:
    del sys.modules[m]
asked = []
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in APP or name.startswith("backprobe.app"):
            asked.append(name)
            raise ImportError(name)
        return None
sys.meta_path.insert(0, Refuse())
import backprobe
print(sorted(set(asked)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_version(capsys):
    import backprobe

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"backprobe {backprobe.__version__}"


def test_model_help_lists_the_model_names():
    from backprobe.app.models import MODELS

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    for command in ("train", "compare", "variance", "memory"):
        text = " ".join(sub[command].format_help().split())
        assert all(name in text for name in MODELS), command


def test_memory_table_has_no_zero_ratio_rows(capsys):
    assert main(["memory", "--model", "lenet5", "--input-shape", "2,1,28,28",
                 "--estimator", "probe:8"]) == 0
    text = capsys.readouterr().out
    import re

    assert not re.search(r"(?<![\d.])0\.0x", text) and " 0 B " not in text
    assert "shared*" in text and "one storage, counted there" in text


def test_train_summary_wording(tmp_path, capsys):
    assert main(["train", "--image-size", "8", "--batch-size", "512", "--max-steps", "1",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "(same as exact)" in text and "1.0x less" not in text
