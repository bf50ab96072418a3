"""backprobe.app.variance: XConv's validation figures."""

from backprobe.app.variance import variance_study


def test_variance_study_tiny(tmp_path):
    res = variance_study("mnist_cnn", "digits", [2, 8], out=tmp_path, batch_size=8, draws=10,
                         minibatches=3, image_size=8, hist_layers=1, weights_per_layer=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["variance.json", "variance_hist_images.png", "variance_hist_normal.png",
                     "variance_std.png"]
    assert set(res.histograms) == {"normal", "images"}
    assert len(res.std) == 3 and set(res.std["0"]) == {"exact", "probe:2", "probe:8"}
    assert "probe:8" in res.table()
