"""backprobe.app.memory: saved activation bytes per layer."""

from backprobe.app.memory import memory_report


def test_memory_report_totals():
    rep = memory_report("mnist_cnn", (8, 1, 28, 28), 10, "probe:16")
    assert rep.exact_total == sum(r[2] for r in rep.rows)
    assert rep.ratio > 5
    text = str(rep)
    assert "total" in text and "Conv2d" in text and "ReLU" in text
