"""Readers and writers: raw float32 velocity files and SEG-Y shot gathers.

Raw velocity files (Marmousi, SEG/EAGE overthrust, ...) are headerless arrays of 4-byte floats;
their shape, byte order and axis order come from their documentation, so the caller passes
them. The velocity is returned in the propagator's convention ``[nz, nx]`` / ``[nz, ny, nx]``::

    v = read_raw("marmousi_vp.bin", shape=(751, 2301), axes="xz")  # stored x-slowest

SEG-Y shot gathers go through ``segyio`` (an optional dependency, imported when called): one
file holds every shot, its traces ordered shot by shot, with source and receiver coordinates
in the trace headers (metres, scaled by ``SourceGroupScalar``)::

    write_segy("shots.sgy", data, dt=1e-3, dx=10.0, src_pos=src, rec_pos=rec)
    gathers = read_segy("shots.sgy", dx=10.0)   # gathers.data [shots, n_rec, nt]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ShotGathers", "read_raw", "read_segy", "write_raw", "write_segy"]

_BYTEORDER = {"little": "<", "big": ">", "native": "="}
_COORD_SCALE = 100  # coordinates stored in centimetres (SourceGroupScalar = -100)


def _axes_perm(axes: str, ndim: int) -> list[int]:
    """Permutation from the file's axis order to the propagator's ``z[y]x`` order."""
    target = "zx" if ndim == 2 else "zyx"
    if len(axes) != ndim or sorted(axes) != sorted(target):
        raise ValueError(
            f"axes must be a permutation of {target!r} for a {ndim}-D shape, got {axes!r}")
    return [axes.index(a) for a in target]


def _dtype_str(byteorder: str, dtype: str) -> str:
    if byteorder not in _BYTEORDER:
        raise ValueError(f"byteorder must be one of {sorted(_BYTEORDER)}, got {byteorder!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return _BYTEORDER[byteorder] + ("f4" if dtype == "float32" else "f8")


def read_raw(path: str | os.PathLike[str], shape: Sequence[int], *, axes: str | None = None,
             byteorder: str = "little", dtype: str = "float32",
             check: bool = True) -> torch.Tensor:
    """Read a headerless binary velocity file.

    Args:
        path: the file.
        shape: the array's shape in the file's own axis order (slowest axis first), 2 or 3
            numbers.
        axes: the file's axis order, slowest first: a permutation of ``"zx"`` (2-D) or
            ``"zyx"`` (3-D). ``"zx"`` (default) is C order ``[nz, nx]``; ``"xz"`` is a file
            written trace by trace (depth fastest, e.g. Marmousi's ``[nx, nz]``).
        byteorder: ``"little"``, ``"big"`` or ``"native"``.
        dtype: ``"float32"`` (default) or ``"float64"``: what the file stores.
        check: raise if the values are not finite and positive (the usual symptom of a wrong
            byte order, shape or dtype).

    Returns:
        float32 velocity ``[nz, nx]`` or ``[nz, ny, nx]`` (contiguous).

    Raises:
        ValueError: when the file size does not match ``shape`` and ``dtype``, for a bad
            ``axes``/``byteorder``, or (with ``check``) for non-finite or non-positive values.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ValueError(f"shape must be 2 or 3 positive integers, got {shape}")
    axes = axes or ("zx" if len(shape) == 2 else "zyx")
    perm = _axes_perm(axes, len(shape))
    dt = np.dtype(_dtype_str(byteorder, dtype))
    size = os.path.getsize(path)
    expected = math.prod(shape) * dt.itemsize
    if size != expected:
        raise ValueError(
            f"{os.fspath(path)!r} holds {size} bytes but shape {shape} of {dtype} needs "
            f"{expected} ({size / dt.itemsize:.0f} values); check shape and dtype")
    arr = np.fromfile(path, dtype=dt).reshape(shape).transpose(perm)
    v = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if check and not bool(torch.isfinite(v).all() and (v > 0).all()):
        raise ValueError(
            f"{os.fspath(path)!r} has non-finite or non-positive values (min {v.min().item():g}, "
            f"max {v.max().item():g}); check byteorder={byteorder!r}, dtype and shape")
    return v


def write_raw(path: str | os.PathLike[str], v: torch.Tensor, *, axes: str | None = None,
              byteorder: str = "little", dtype: str = "float32") -> None:
    """Write a velocity model as a headerless binary file (the inverse of :func:`read_raw`).

    Args:
        path: the file (overwritten).
        v: velocity ``[nz, nx]`` or ``[nz, ny, nx]``.
        axes: the file's axis order, slowest first (see :func:`read_raw`).
        byteorder: ``"little"``, ``"big"`` or ``"native"``.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Raises:
        ValueError: for a tensor that is not 2-D/3-D or bad ``axes``/``byteorder``/``dtype``.
    """
    if v.dim() not in (2, 3):
        raise ValueError(f"v must be [nz, nx] or [nz, ny, nx], got shape {tuple(v.shape)}")
    axes = axes or ("zx" if v.dim() == 2 else "zyx")
    perm = _axes_perm(axes, v.dim())
    inverse = [perm.index(i) for i in range(v.dim())]
    arr = v.detach().cpu().numpy().transpose(inverse)
    np.ascontiguousarray(arr, dtype=np.dtype(_dtype_str(byteorder, dtype))).tofile(path)


@dataclass
class ShotGathers:
    """Shot records read from SEG-Y.

    Attributes:
        data: ``[shots, n_rec, nt]`` float32.
        dt: sample interval in seconds.
        src_pos: ``[shots, ndim]`` source positions in grid-index coordinates (``z[, y], x``).
        rec_pos: ``[shots, n_rec, ndim]`` receiver positions in grid-index coordinates.
    """

    data: torch.Tensor
    dt: float
    src_pos: torch.Tensor
    rec_pos: torch.Tensor


def _segyio() -> Any:
    try:
        import segyio
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("SEG-Y support needs segyio: pip install segyio") from err
    return segyio


def write_segy(path: str | os.PathLike[str], data: torch.Tensor, *, dt: float, dx: float,
               src_pos: torch.Tensor, rec_pos: torch.Tensor) -> None:
    """Write shot gathers to one SEG-Y file (IEEE float, traces ordered shot by shot).

    Headers per trace: ``FieldRecord`` (shot, from 1), ``TraceNumber`` (receiver, from 1),
    ``SourceX/SourceY/GroupX/GroupY`` (metres x 100 with ``SourceGroupScalar = -100``),
    ``SourceDepth`` and ``ReceiverGroupElevation = -depth`` (whole centimetres, through
    ``ElevationScalar``), ``TRACE_SAMPLE_INTERVAL`` in microseconds.

    Args:
        path: the file (overwritten).
        data: ``[shots, n_rec, nt]``.
        dt: sample interval in seconds (stored in whole microseconds).
        dx: grid spacing in metres (grid-index coordinates are multiplied by it).
        src_pos: ``[shots, ndim]`` grid-index coordinates ``z[, y], x``.
        rec_pos: ``[n_rec, ndim]`` or ``[shots, n_rec, ndim]`` grid-index coordinates.

    Raises:
        ValueError: for inconsistent shapes or non-positive ``dt``/``dx``.
    """
    segyio = _segyio()
    if data.dim() != 3:
        raise ValueError(f"data must be [shots, n_rec, nt], got shape {tuple(data.shape)}")
    shots, n_rec, nt = data.shape
    if not (dt > 0 and dx > 0):
        raise ValueError(f"dt and dx must be positive, got dt={dt}, dx={dx}")
    if src_pos.dim() != 2 or src_pos.shape[0] != shots or src_pos.shape[1] not in (2, 3):
        raise ValueError(f"src_pos must be [shots={shots}, 2|3], got {tuple(src_pos.shape)}")
    ndim = src_pos.shape[1]
    if rec_pos.dim() == 2:
        rec_pos = rec_pos.unsqueeze(0).expand(shots, -1, -1)
    if tuple(rec_pos.shape) != (shots, n_rec, ndim):
        raise ValueError(
            f"rec_pos must be [n_rec={n_rec}, {ndim}] or [shots={shots}, n_rec={n_rec}, {ndim}], "
            f"got {tuple(rec_pos.shape)}")
    spec = segyio.spec()
    spec.format = 5
    spec.samples = list(range(nt))
    spec.tracecount = shots * n_rec
    interval = int(round(dt * 1e6))
    src_m = (src_pos.detach().double().cpu() * dx * _COORD_SCALE).round().long().tolist()
    rec_m = (rec_pos.detach().double().cpu() * dx * _COORD_SCALE).round().long().tolist()
    traces = data.detach().cpu().numpy().astype(np.float32)
    f = segyio.TraceField
    with segyio.create(os.fspath(path), spec) as out:
        out.bin.update({segyio.BinField.Interval: interval, segyio.BinField.Samples: nt})
        for s in range(shots):
            sz, sx = src_m[s][0], src_m[s][-1]
            sy = src_m[s][1] if ndim == 3 else 0
            for r in range(n_rec):
                i = s * n_rec + r
                rz, rx = rec_m[s][r][0], rec_m[s][r][-1]
                ry = rec_m[s][r][1] if ndim == 3 else 0
                out.header[i] = {
                    f.FieldRecord: s + 1, f.TraceNumber: r + 1,
                    f.SourceGroupScalar: -_COORD_SCALE, f.ElevationScalar: -_COORD_SCALE,
                    f.SourceX: sx, f.SourceY: sy, f.SourceDepth: sz,
                    f.GroupX: rx, f.GroupY: ry, f.ReceiverGroupElevation: -rz,
                    f.TRACE_SAMPLE_COUNT: nt, f.TRACE_SAMPLE_INTERVAL: interval,
                }
                out.trace[i] = traces[s, r]


def _unscale(values: np.ndarray, scalar: np.ndarray) -> np.ndarray:
    """SEG-Y coordinate scalars: negative divides, positive multiplies, 0 means 1."""
    scalar = scalar.astype(np.float64)
    factor = np.where(scalar < 0, -1.0 / np.where(scalar == 0, 1, scalar),
                      np.where(scalar == 0, 1.0, scalar))
    return values.astype(np.float64) * factor


def read_segy(path: str | os.PathLike[str], *, dx: float, ndim: int = 2) -> ShotGathers:
    """Read shot gathers written by :func:`write_segy` (or any file with the same headers).

    Traces are grouped by ``FieldRecord`` in file order; every shot must have the same number
    of receivers.

    Args:
        path: the SEG-Y file.
        dx: grid spacing in metres (coordinates are divided by it).
        ndim: 2 (positions ``z, x``) or 3 (``z, y, x``).

    Returns:
        :class:`ShotGathers` with data ``[shots, n_rec, nt]`` and positions in grid-index
        coordinates.

    Raises:
        ValueError: for a bad ``dx``/``ndim``, or shots with different receiver counts.
    """
    segyio = _segyio()
    if not dx > 0:
        raise ValueError(f"dx must be positive, got {dx}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    f = segyio.TraceField
    with segyio.open(os.fspath(path), "r", ignore_geometry=True) as src:
        traces = segyio.tools.collect(src.trace[:]).astype(np.float32)
        dt = segyio.tools.dt(src) * 1e-6

        def field(key: int) -> np.ndarray:
            return np.asarray(src.attributes(key)[:], dtype=np.int64)

        record = field(f.FieldRecord)
        sc, ec = field(f.SourceGroupScalar), field(f.ElevationScalar)
        sx, sy = _unscale(field(f.SourceX), sc), _unscale(field(f.SourceY), sc)
        gx, gy = _unscale(field(f.GroupX), sc), _unscale(field(f.GroupY), sc)
        sz = _unscale(field(f.SourceDepth), ec)
        gz = -_unscale(field(f.ReceiverGroupElevation), ec)
    _, first, counts = np.unique(record, return_index=True, return_counts=True)
    order = np.argsort(first)
    counts = counts[order]
    if len(set(counts.tolist())) != 1:
        raise ValueError(
            f"{os.fspath(path)!r}: shots have different receiver counts {sorted(set(counts))}")
    n_rec = int(counts[0])
    starts = first[order]
    idx = (starts[:, None] + np.arange(n_rec)[None, :])
    if not np.array_equal(record[idx], np.repeat(record[starts][:, None], n_rec, axis=1)):
        raise ValueError(f"{os.fspath(path)!r}: traces of a shot must be contiguous")
    data = torch.from_numpy(traces[idx])
    if ndim == 2:
        src_xyz = np.stack([sz, sx], axis=-1)
        rec_xyz = np.stack([gz, gx], axis=-1)
    else:
        src_xyz = np.stack([sz, sy, sx], axis=-1)
        rec_xyz = np.stack([gz, gy, gx], axis=-1)
    src_pos = torch.from_numpy(src_xyz[starts] / dx)
    rec_pos = torch.from_numpy(rec_xyz[idx] / dx)
    return ShotGathers(data=data, dt=float(dt), src_pos=src_pos, rec_pos=rec_pos)
