"""backprobe.app.compare: the estimators x batch sizes x seeds grid."""

import pytest

from backprobe.app.compare import compare


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
