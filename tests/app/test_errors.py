"""Every invalid value is one line on stderr and exit status 2, before any work starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backprobe.app import cli, training
from backprobe.app.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _usage_error(capsys, argv: list[str]) -> str:
    """Run ``backprobe argv``; check status 2 and one line on stderr; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"backprobe {argv[0]}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a run starts: every check must come before the work."""
    def boom(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr(training, "train", boom)


TRAIN = ["train", "--image-size", "8", "--no-progress"]


@pytest.mark.parametrize("flags, words", [
    (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["--epochs", "-1"], "--epochs must be a positive integer, got -1"),
    (["--max-steps", "0"], "--max-steps must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--batch-size", "-1"], "--batch-size must be a positive integer, got -1"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--threads", "-1"], "--threads must be a positive integer, got -1"),
])
def test_train_bad_counts(capsys, no_training, flags, words):
    assert words in _usage_error(capsys, [*TRAIN, *flags])


def test_batch_larger_than_the_training_set_says_the_sizes(capsys):
    line = _usage_error(capsys, [*TRAIN, "--batch-size", "5000"])
    assert "--batch-size 5000 is larger than the training set (1437 examples of digits)" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(capsys, no_training):
    line = _usage_error(capsys, [*TRAIN, "--device", "cuda"])
    assert "CUDA is not available" in line


def test_ddp_without_torchrun(capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert "torchrun" in _usage_error(capsys, [*TRAIN, "--ddp"])


def test_resume_of_a_missing_or_foreign_file(capsys, tmp_path):
    assert "no such file" in _usage_error(capsys, [*TRAIN, "--resume", str(tmp_path / "x.pt")])
    weights = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(1)}, weights)
    assert "not a training checkpoint" in _usage_error(capsys, [*TRAIN, "--resume", str(weights)])


def test_output_paths_are_checked_before_training(capsys, tmp_path, no_training):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    line = _usage_error(capsys, [*TRAIN, "--json", str(tmp_path)])
    assert "--json" in line and "is a directory" in line
    line = _usage_error(capsys, [*TRAIN, "--save", str(a_file / "model.pt")])
    assert "--save" in line and "which is a file" in line
    line = _usage_error(capsys, [*TRAIN, "--checkpoint", str(a_file / "sub" / "c.pt")])
    assert "--checkpoint" in line and "which is a file" in line
    line = _usage_error(capsys, ["compare", "--out", str(a_file), "--no-progress"])
    assert "--out" in line and "is a file" in line
    line = _usage_error(capsys, ["variance", "--out", str(a_file / "v"), "--no-progress"])
    assert "--out" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_folder(capsys, tmp_path, no_training):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = _usage_error(capsys, [*TRAIN, "--json", str(locked / "run.json")])
        assert "permission denied" in line
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("flags, words", [
    (["--draws", "0"], "--draws must be a positive integer, got 0"),
    (["--minibatches", "1"], "--minibatches must be at least 2"),
    (["--probes", "0,4"], "--probes must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
])
def test_variance_bad_counts(capsys, tmp_path, flags, words):
    line = _usage_error(capsys, ["variance", "--image-size", "8", "--out", str(tmp_path),
                                 "--no-progress", *flags])
    assert words in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape", ["0,3,32,32", "4,3,-1,32", "4,0,8,8"])
def test_memory_input_shape_must_be_positive(capsys, shape):
    assert "--input-shape dimensions must be positive" in _usage_error(
        capsys, ["memory", "--input-shape", shape])


@pytest.mark.parametrize("flags, words", [
    (["--repeats", "0"], "--repeats must be a positive integer, got 0"),
    (["--threads", "0"], "--threads must be a positive integer, got 0"),
    (["--r", "0"], "--r must be a positive integer"),
    (["--warmup", "-1"], "--warmup must be 0 or more"),
    (["--budget", "0"], "--budget must be a positive number"),
])
def test_bench_bad_values_start_nothing(capsys, monkeypatch, tmp_path, flags, words):
    def boom(*args, **kwargs):
        raise AssertionError("the benchmark script was started")
    monkeypatch.setattr(subprocess, "run", boom)
    assert words in _usage_error(capsys, ["bench", "layers", "--out", str(tmp_path), *flags])


def test_bench_script_unknown_network_overwrites_nothing(tmp_path):
    previous = tmp_path / "networks_quick.json"
    previous.write_text('{"previous": true}')
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_networks.py"), "--networks", "zzz",
         "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if "error" in line]
    assert "--networks zzz matches no network" in proc.stderr and "resnet18" in proc.stderr
    assert previous.read_text() == '{"previous": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["networks_quick.json"]


def test_compare_merge_of_a_json_without_runs(capsys, tmp_path):
    empty = tmp_path / "e.json"
    empty.write_text(json.dumps({"model": "mnist_cnn"}))
    line = _usage_error(capsys, ["compare", "--merge", str(empty), "--out", str(tmp_path / "m")])
    assert "holds no runs" in line and "e.json" in line
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not readable JSON" in _usage_error(
        capsys, ["compare", "--merge", str(bad), "--out", str(tmp_path / "m")])
    assert "no such file" in _usage_error(
        capsys, ["compare", "--merge", str(tmp_path / "nope.json"), "--out", str(tmp_path)])


@pytest.mark.parametrize("module", ["tqdm", "matplotlib"])
def test_missing_cli_extra(capsys, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import tqdm` now raises ImportError
    line = _usage_error(capsys, ["memory", "--input-shape", "2,1,8,8"])
    assert module in line and "pip install 'backprobe[cli]'" in line


def test_ctrl_c_elsewhere_is_one_line_and_status_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser.set_defaults(func=interrupted)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=interrupted)
    assert main(["memory"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "backprobe memory: interrupted" and "Traceback" not in err
