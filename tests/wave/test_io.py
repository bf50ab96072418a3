"""Raw velocity files and SEG-Y shot gathers: round trips on small files, clear errors."""

import numpy as np
import pytest
import torch

from backprobe.wave.io import read_raw, read_segy, write_raw, write_segy

segyio = pytest.importorskip("segyio")


def _model(shape):
    g = torch.Generator().manual_seed(1)
    return 1500.0 + 3000.0 * torch.rand(shape, generator=g)


@pytest.mark.parametrize("axes,byteorder", [("zx", "little"), ("xz", "big"), ("zx", "native")])
def test_raw_2d_round_trip(tmp_path, axes, byteorder):
    v = _model((7, 11))
    path = tmp_path / "v.bin"
    write_raw(path, v, axes=axes, byteorder=byteorder)
    assert path.stat().st_size == 7 * 11 * 4
    file_shape = (7, 11) if axes == "zx" else (11, 7)
    assert torch.equal(read_raw(path, file_shape, axes=axes, byteorder=byteorder), v)


def test_raw_layout_is_what_numpy_writes(tmp_path):
    # A Marmousi-style file: big-endian, depth fastest (stored [nx, nz]).
    v = _model((5, 8))
    path = tmp_path / "marm.bin"
    v.numpy().T.astype(">f4").tofile(path)
    assert torch.equal(read_raw(path, (8, 5), axes="xz", byteorder="big"), v)


def test_raw_3d_round_trip_any_axis_order(tmp_path):
    v = _model((3, 4, 5))
    path = tmp_path / "v3.bin"
    write_raw(path, v, axes="xyz", dtype="float64")
    assert path.stat().st_size == 60 * 8
    back = read_raw(path, (5, 4, 3), axes="xyz", dtype="float64")
    assert torch.equal(back, v)
    raw = np.fromfile(path, dtype="<f8").reshape(5, 4, 3)
    assert raw[4, 1, 2] == pytest.approx(float(v[2, 1, 4]))


def test_raw_errors(tmp_path):
    v = _model((6, 4))
    path = tmp_path / "v.bin"
    write_raw(path, v)
    with pytest.raises(ValueError, match="holds 96 bytes"):
        read_raw(path, (6, 5))
    with pytest.raises(ValueError, match="byteorder"):
        read_raw(path, (6, 4), byteorder="big")  # wrong byte order: garbage values detected
    with pytest.raises(ValueError, match="byteorder must be"):
        read_raw(path, (6, 4), byteorder="middle")
    with pytest.raises(ValueError, match="axes"):
        read_raw(path, (6, 4), axes="zy")
    with pytest.raises(ValueError, match="shape"):
        read_raw(path, (24,))
    with pytest.raises(ValueError, match="v must be"):
        write_raw(path, torch.ones(3))


def _positions(shots, n_rec, ndim):
    src = torch.stack([torch.full((shots,), 2.0), *([torch.full((shots,), 3.0)] if ndim == 3 else []),
                       torch.linspace(1.0, 9.5, shots)], dim=-1)
    rx = torch.arange(n_rec, dtype=torch.float64) * 0.5
    rec = torch.stack([torch.full((n_rec,), 1.25), *([torch.full((n_rec,), 3.0)] if ndim == 3 else []),
                       rx], dim=-1)
    return src.double(), rec


@pytest.mark.parametrize("ndim", [2, 3])
def test_segy_round_trip(tmp_path, ndim):
    shots, n_rec, nt = 3, 5, 17
    data = torch.randn(shots, n_rec, nt, generator=torch.Generator().manual_seed(0))
    src, rec = _positions(shots, n_rec, ndim)
    path = tmp_path / "shots.sgy"
    write_segy(path, data, dt=2e-3, dx=12.5, src_pos=src, rec_pos=rec)
    g = read_segy(path, dx=12.5, ndim=ndim)
    assert torch.equal(g.data, data)
    assert g.dt == pytest.approx(2e-3)
    # Coordinates are stored in whole centimetres.
    torch.testing.assert_close(g.src_pos, src, rtol=0, atol=0.005 / 12.5)
    torch.testing.assert_close(g.rec_pos, rec.expand(shots, -1, -1), rtol=0, atol=0.005 / 12.5)
    with segyio.open(path, "r", ignore_geometry=True) as f:
        assert f.tracecount == shots * n_rec
        assert f.header[n_rec][segyio.TraceField.FieldRecord] == 2
        assert f.header[0][segyio.TraceField.SourceGroupScalar] == -100


def test_segy_per_shot_receivers(tmp_path):
    data = torch.randn(2, 3, 8)
    src = torch.tensor([[1.0, 2.0], [1.0, 6.0]], dtype=torch.float64)
    rec = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]],
                        [[0.0, 5.0], [0.0, 6.0], [0.0, 7.0]]], dtype=torch.float64)
    write_segy(tmp_path / "a.sgy", data, dt=1e-3, dx=10.0, src_pos=src, rec_pos=rec)
    g = read_segy(tmp_path / "a.sgy", dx=10.0)
    torch.testing.assert_close(g.rec_pos, rec)


def test_segy_errors(tmp_path):
    data = torch.randn(2, 3, 8)
    src, rec = _positions(2, 3, 2)
    with pytest.raises(ValueError, match="data must be"):
        write_segy(tmp_path / "x.sgy", data[0], dt=1e-3, dx=10.0, src_pos=src, rec_pos=rec)
    with pytest.raises(ValueError, match="src_pos"):
        write_segy(tmp_path / "x.sgy", data, dt=1e-3, dx=10.0, src_pos=src[:1], rec_pos=rec)
    with pytest.raises(ValueError, match="rec_pos"):
        write_segy(tmp_path / "x.sgy", data, dt=1e-3, dx=10.0, src_pos=src, rec_pos=rec[:2])
    with pytest.raises(ValueError, match="dt and dx"):
        write_segy(tmp_path / "x.sgy", data, dt=0.0, dx=10.0, src_pos=src, rec_pos=rec)
    # Shots with different receiver counts: written with segyio directly.
    spec = segyio.spec()
    spec.format, spec.samples, spec.tracecount = 5, list(range(4)), 5
    path = tmp_path / "uneven.sgy"
    with segyio.create(path, spec) as f:
        for i, record in enumerate([1, 1, 1, 2, 2]):
            f.header[i] = {segyio.TraceField.FieldRecord: record}
            f.trace[i] = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="different receiver counts"):
        read_segy(path, dx=10.0)
    with pytest.raises(ValueError, match="ndim"):
        read_segy(path, dx=10.0, ndim=4)
