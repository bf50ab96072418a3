"""Built-in velocity models: shapes, ranges, geology; Gaussian smoothing."""

import pytest
import torch

from backprobe.wave.velocity_models import MODELS, layered, overthrust, smooth, water_rows


@pytest.mark.parametrize("shape", [(40, 80), (9, 13), (12, 10, 14)])
def test_layered_shape_range_and_features(shape):
    v = layered(shape)
    assert v.shape == shape and v.dtype == torch.float32
    assert float(v.min()) == 1500.0 and float(v.max()) == 4200.0
    assert torch.isfinite(v).all()
    if min(shape) >= 12:
        # The water layer on top, the high-velocity body, velocity growing with depth on average.
        assert water_rows(v) >= 1
        assert (v == 4200.0).sum() > 0
        assert v[-1].mean() > v[shape[0] // 3].mean() > 1500.0


def test_layered_fault_and_body_switches():
    with_fault = layered((60, 120))
    no_fault = layered((60, 120), fault=False)
    assert not torch.equal(with_fault, no_fault)
    assert float(layered((60, 120), body=False).max()) < 4200.0


@pytest.mark.parametrize("shape", [(50, 100), (10, 12, 16)])
def test_overthrust_shape_and_range(shape):
    v = overthrust(shape)
    assert v.shape == shape
    assert float(v.min()) >= 2300.0 and float(v.max()) == 6000.0
    assert float(overthrust(shape, water_depth=0.2).min()) == 1500.0
    # Layers repeat across the thrust: more distinct velocities than a monotone depth profile.
    assert torch.unique(v).numel() >= 8


def test_models_any_size_and_dtype():
    v = MODELS["layered"]((30, 31), dtype=torch.float64)
    assert v.dtype == torch.float64 and v.shape == (30, 31)


@pytest.mark.parametrize("bad", [(10,), (1, 10), (3, 4, 5, 6)])
def test_bad_shapes_raise(bad):
    with pytest.raises(ValueError, match="shape"):
        layered(bad)
    with pytest.raises(ValueError, match="shape"):
        overthrust(bad)


def test_bad_water_depth_and_dtype_raise():
    with pytest.raises(ValueError, match="water_depth"):
        layered((10, 10), water_depth=1.0)
    with pytest.raises(TypeError, match="dtype"):
        layered((10, 10), dtype=torch.int32)


def test_smooth_keeps_fixed_rows_constants_and_range():
    v = layered((40, 60), dtype=torch.float64)
    rows = water_rows(v)
    s = smooth(v, 4.0, fixed_rows=rows)
    assert s.shape == v.shape and s.dtype == v.dtype
    assert torch.equal(s[:rows], v[:rows])
    # No water smeared below the fixed rows; a convex combination stays within the range.
    assert float(s[rows:].min()) >= float(v[rows:].min()) - 1e-9
    assert float(s.max()) <= float(v.max()) + 1e-9
    # It really smooths: total variation drops.
    tv = lambda m: (m[1:] - m[:-1]).abs().sum() + (m[:, 1:] - m[:, :-1]).abs().sum()  # noqa: E731
    assert tv(s) < 0.8 * tv(v)
    const = torch.full((10, 12, 14), 2000.0, dtype=torch.float64)
    torch.testing.assert_close(smooth(const, (1.0, 2.0, 3.0)), const)
    torch.testing.assert_close(smooth(v, 0.0), v)


def test_smooth_is_a_normalised_gaussian():
    v = torch.zeros(41, 41, dtype=torch.float64)
    v[20, 20] = 1.0
    s = smooth(v, 2.0)
    assert float(s.sum()) == pytest.approx(1.0, abs=1e-12)
    var_z = float((s.sum(1) * (torch.arange(41.0, dtype=torch.float64) - 20) ** 2).sum())
    assert var_z == pytest.approx(4.0, rel=0.02)  # the kernel is truncated at 3 sigma


def test_smooth_errors():
    v = torch.ones(5, 5)
    with pytest.raises(ValueError, match="sigma"):
        smooth(v, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        smooth(v, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="fixed_rows"):
        smooth(v, 1.0, fixed_rows=5)
    with pytest.raises(ValueError, match="v must be"):
        smooth(torch.ones(5), 1.0)
