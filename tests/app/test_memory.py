"""backprobe.app.memory: saved activation bytes per layer, step peak, budget fit."""

import pytest

from backprobe.app import _checks as checks
from backprobe.app import models
from backprobe.app.cli import main
from backprobe.app.memory import memory_report
from backprobe.peak import largest_batch


def test_memory_report_totals():
    rep = memory_report("mnist_cnn", (8, 1, 28, 28), 10, "probe:16")
    assert rep.exact_total == sum(r[2] for r in rep.rows)
    assert rep.ratio > 5
    text = str(rep)
    assert "total" in text and "Conv2d" in text and "ReLU" in text


@pytest.mark.parametrize("text,expected", [
    ("2GiB", 2 * 2**30), ("512MiB", 512 * 2**20), ("1.5GB", 1_500_000_000),
    ("100B", 100), ("1.5 kib", 1536), (" 3KB ", 3000),
])
def test_size_bytes_parses(text, expected):
    assert checks.size_bytes("--budget", text) == expected


@pytest.mark.parametrize(
    "text", ["2", "2G", "GiB", "-1GiB", "0MiB", "1.2.3GB", "2GiBs", "", "1e3MB"])
def test_size_bytes_rejects(text):
    with pytest.raises(ValueError, match="--budget"):
        checks.size_bytes("--budget", text)


def test_cli_bad_budget_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["memory", "--budget", "2G"])
    assert exc.value.code == 2
    assert "--budget" in capsys.readouterr().err


def test_largest_batch_rule():
    assert largest_batch((8, 1_000), (16, 1_800), 10_000) == 98  # 200 + 100 b
    assert largest_batch((8, 1_000), (16, 1_800), 100) == 0  # not even the fixed part
    assert largest_batch((8, 1_000), (16, 1_000), 10_000) == -1  # does not grow
    with pytest.raises(ValueError, match="batch"):
        largest_batch((16, 1), (8, 2), 10)
    with pytest.raises(ValueError, match="budget"):
        largest_batch((8, 1), (16, 2), -1)


def test_peak_and_budget_fit_deterministic_and_monotone():
    shape = (4, 1, 8, 8)
    rep = memory_report("mnist_cnn", shape, 10, "probe:4", budget=2**20)
    assert set(rep.peaks) == {"exact", "probe:4"}
    for p in rep.peaks.values():
        assert p.peak > 0 and p.fixed > 0 and p.peak_2x is not None and p.peak_2x > p.peak
        assert p.max_batch is not None and p.max_batch > 0
    again = memory_report("mnist_cnn", shape, 10, "probe:4", budget=2**20)
    assert {k: vars(v) for k, v in again.peaks.items()} == {
        k: vars(v) for k, v in rep.peaks.items()}
    text = str(rep)
    assert "peak of a step" in text and "linear extrapolation" in text
    assert rep.to_json()["peaks"]["exact"]["max_batch_in_budget"] == rep.peaks["exact"].max_batch
    # the fitted batch grows with the budget (same two measurements, refitted)
    p = rep.peaks["exact"]
    assert p.fixed_2x is not None and p.peak_2x is not None
    fits = [largest_batch((4, p.total), (8, p.fixed_2x + p.peak_2x), b)
            for b in (2**18, 2**20, 2**22, 2**24)]
    assert fits == sorted(fits) and fits[-1] > fits[0]
    assert fits[1] == p.max_batch


def test_memory_report_without_peak_measures_none():
    rep = memory_report("mnist_cnn", (2, 1, 8, 8), 10, "probe:4")
    assert rep.peaks == {} and "peak of a step" not in str(rep)
    with pytest.raises(ValueError, match="budget"):
        memory_report("mnist_cnn", (2, 1, 8, 8), 10, "probe:4", budget=0)


def test_segmentation_model_gets_per_pixel_labels():
    # per-pixel logits [N, 3, 8, 8]: labels [N] would make CrossEntropyLoss raise
    rep = memory_report("unet", (2, 1, 8, 8), 3, "probe:4", peak=True)
    assert rep.exact_total > rep.estimator_total > 0
    assert rep.peaks["exact"].peak > 0 and rep.peaks["exact"].max_batch is None
    weights = sum(p.numel() * 4 for p in models.unet(1, 3, 8).parameters())
    # weights + momentum + x (float32) + y (int64, one label per pixel)
    assert rep.peaks["exact"].fixed == 2 * weights + 2 * 64 * 4 + 2 * 64 * 8
