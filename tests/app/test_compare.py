"""backprobe.app.compare: the estimators x batch sizes x seeds grid."""

import pytest

from backprobe.app.compare import compare


def test_compare_tiny_grid(tmp_path):
    from dataclasses import replace

    from backprobe.app.training import load_data

    full = load_data("digits", image_size=8)  # 200 training examples: one step per run
    split = replace(full, x_train=full.x_train[:200], y_train=full.y_train[:200])
    res = compare("mnist_cnn", "digits", ["exact", "probe:2"], [200], seeds=[0, 1], epochs=1,
                  image_size=8, split=split)
    assert len(res.runs) == 4 and all(r.steps == 1 for r in res.runs)
    table = res.table()
    assert "exact" in table and "probe:2" in table and "±" in table and "B=200" in table
    rows = res.summary()
    assert [r["estimator"] for r in rows] == ["exact", "probe:2"]
    assert rows[0]["memory_ratio"] == pytest.approx(1.0)
    assert rows[1]["memory_ratio"] > 1.0
    png = res.plot(tmp_path / "c.png")
    assert png.stat().st_size > 1000


def _doc(seeds, accuracy=lambda spec, b, seed: 0.5 + 0.1 * seed + (0.01 if spec == "exact" else 0)):
    """A compare.json document without training (runs made up, every field present)."""
    from backprobe.app.compare import CompareResult
    from backprobe.app.training import TrainResult

    runs = [TrainResult("mnist_cnn", "digits", spec, seed, b, False, 1, 0.002, "adam", 1,
                        accuracy(spec, b, seed), train_loss=[1.0 + seed],
                        test_accuracy_per_epoch=[accuracy(spec, b, seed)],
                        epoch_seconds=[0.5 + seed], saved_activation_bytes=100 if
                        spec == "exact" else 40, exact_saved_activation_bytes=100, steps=3)
            for seed in seeds for b in (32,) for spec in ("exact", "probe:4")]
    return CompareResult("mnist_cnn", "digits", ["exact", "probe:4"], [32], list(seeds), 1,
                         "adam", 0.002, runs).to_json()


def test_merge_counts_overlapping_runs_once():
    from backprobe.app.compare import CompareResult

    one, three = _doc([0]), _doc([0, 1, 2])
    for r in one["runs"]:
        r["epoch_seconds"] = [9.9]  # a rerun on another machine: timings differ, results not
    merged = CompareResult.from_json([one, three], ["one.json", "three.json"])
    assert len(merged.runs) == 6 and merged.duplicates == 2 and merged.seeds == [0, 1, 2]
    rows = {r["estimator"]: r for r in merged.summary()}
    assert rows["exact"]["accuracies"] == pytest.approx([51.0, 61.0, 71.0])
    assert rows["exact"]["accuracy_mean"] == pytest.approx(61.0)
    assert "seeds 0,1,2 " in merged.table()


def test_merge_header_lists_the_seeds_the_runs_have():
    from backprobe.app.compare import CompareResult

    a, b = _doc([0]), _doc([2])
    b["seeds"] = [0, 1, 2]  # a document that claims more seeds than it holds
    merged = CompareResult.from_json([a, b])
    assert merged.seeds == [0, 2]
    assert "seeds 0,2 " in merged.table()
    partial = CompareResult.from_json([_doc([0, 1]), {**_doc([2]), "runs": _doc([2])["runs"][:1]}])
    table = partial.table()
    assert "seeds 0,1,2" in table and "(n=2)" in table  # probe:4 has seeds 0 and 1 only


def test_merge_reports_conflicting_runs():
    from backprobe.app.compare import CompareResult

    a = _doc([0, 1])
    b = _doc([1], accuracy=lambda spec, b, seed: 0.25)
    with pytest.raises(ValueError) as info:
        CompareResult.from_json([a, b], ["a.json", "b.json"])
    msg = str(info.value)
    assert "2 conflicting run(s)" in msg
    assert "exact B=32 seed 1: test accuracy 61.00% in a.json, 25.00% in b.json" in msg
    assert "probe:4 B=32 seed 1" in msg


def test_table_wording_never_says_one_x_less():
    from backprobe.app.compare import CompareResult

    table = CompareResult.from_json([_doc([0])]).table()
    assert "same as exact" in table and "2.5x less" in table
    assert "1.0x" not in table


def test_ctrl_c_keeps_the_finished_runs(monkeypatch):
    import os
    import signal
    from dataclasses import replace

    from backprobe.app import compare as compare_mod
    from backprobe.app.training import load_data

    full = load_data("digits", image_size=8)
    split = replace(full, x_train=full.x_train[:200], y_train=full.y_train[:200])
    real, calls = compare_mod.train, []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C during the second run's first step
            kwargs["on_step"] = lambda r: os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(compare_mod, "train", train)
    res = compare("mnist_cnn", "digits", ["exact", "probe:2"], [100], seeds=[0], epochs=2,
                  image_size=8, split=split)
    assert res.interrupted and [r.estimator for r in res.runs] == ["exact"]
    assert res.to_json()["interrupted"] is True and len(calls) == 2
