"""Acquisition for full-waveform inversion: the :class:`Survey`, a surface survey, synthetic data.

A :class:`Survey` holds the grid spacing, recording interval, wavelet(s) and source/receiver
positions that every modelling call of :mod:`backprobe.wave.fwi` shares;
:func:`surface_survey` builds the usual line of surface sources and receivers and
:func:`simulate` models the observed records for a velocity model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

__all__ = ["Survey", "simulate", "surface_survey"]


@dataclass(frozen=True)
class Survey:
    """Acquisition and modelling settings shared by every call of the misfit.

    Attributes:
        dx: grid spacing in metres.
        dt: recording interval in seconds.
        wavelet: ``[nt]`` (every shot) or ``[shots, nt]``.
        src_pos: ``[shots, ndim]`` grid-index coordinates ``z[, y], x`` (interior grid).
        rec_pos: ``[n_rec, ndim]`` (every shot) or ``[shots, n_rec, ndim]``.
        space_order: finite-difference order in space (2, 4 or 8).
        pml_width: absorbing layer width in cells.
        substeps: ``"auto"`` or an integer number of internal time steps per ``dt``.
        boundary: absorbing layer kind, ``"cpml"`` (default) or ``"damping"`` (see
            :func:`backprobe.wave.model`).

    Raises:
        ValueError: for inconsistent shapes or non-positive ``dx``/``dt``.
    """

    dx: float
    dt: float
    wavelet: torch.Tensor
    src_pos: torch.Tensor
    rec_pos: torch.Tensor
    space_order: int = 8
    pml_width: int = 20
    substeps: int | str = "auto"
    boundary: str = "cpml"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dx) and self.dx > 0):
            raise ValueError(f"dx must be positive, got {self.dx}")
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt must be positive, got {self.dt}")
        if self.src_pos.dim() != 2 or self.src_pos.shape[1] not in (2, 3):
            raise ValueError(f"src_pos must be [shots, 2|3], got {tuple(self.src_pos.shape)}")
        shots, ndim = self.src_pos.shape
        if self.wavelet.dim() not in (1, 2) or (
                self.wavelet.dim() == 2 and self.wavelet.shape[0] != shots):
            raise ValueError(
                f"wavelet must be [nt] or [shots={shots}, nt], got {tuple(self.wavelet.shape)}")
        ok = (self.rec_pos.dim() == 2 and self.rec_pos.shape[1] == ndim) or (
            self.rec_pos.dim() == 3 and self.rec_pos.shape[0] == shots
            and self.rec_pos.shape[2] == ndim)
        if not ok:
            raise ValueError(f"rec_pos must be [n_rec, {ndim}] or [shots={shots}, n_rec, {ndim}], "
                             f"got {tuple(self.rec_pos.shape)}")

    @property
    def n_shots(self) -> int:
        """Number of shots."""
        return int(self.src_pos.shape[0])

    @property
    def n_rec(self) -> int:
        """Receivers per shot."""
        return int(self.rec_pos.shape[-2])

    @property
    def nt(self) -> int:
        """Recorded time samples."""
        return int(self.wavelet.shape[-1])

    @property
    def ndim(self) -> int:
        """Spatial dimensions (2 or 3)."""
        return int(self.src_pos.shape[1])

    def data_shape(self, shots: int | None = None) -> tuple[int, int, int]:
        """``(shots, n_rec, nt)``: the shape of the records (all shots by default)."""
        return (self.n_shots if shots is None else shots, self.n_rec, self.nt)

    def select(self, shots: Sequence[int] | range) -> Survey:
        """The same survey restricted to the shots ``shots`` (indices, in order)."""
        idx = torch.as_tensor(list(shots), dtype=torch.long)
        return replace(self, src_pos=self.src_pos[idx],
                       wavelet=self.wavelet[idx] if self.wavelet.dim() == 2 else self.wavelet,
                       rec_pos=self.rec_pos[idx] if self.rec_pos.dim() == 3 else self.rec_pos)

    def model(self, v: torch.Tensor, imaging: Any = None,
              observed: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`backprobe.wave.model` with this survey's settings: ``[shots, n_rec, nt]``."""
        from backprobe.wave import Exact, model

        return model(v, self.dx, self.dt, self.wavelet.to(v.dtype), self.src_pos,
                     self.rec_pos, imaging=Exact() if imaging is None else imaging,
                     space_order=self.space_order, pml_width=self.pml_width,
                     boundary=self.boundary,
                     substeps=self.substeps, observed=observed)


def surface_survey(shape: Sequence[int], *, dx: float, dt: float, nt: int, freq: float,
                   shots: int, receivers: int | None = None, depth: float = 1.0,
                   space_order: int = 8, pml_width: int = 20, boundary: str = "cpml",
                   dtype: torch.dtype = torch.float32) -> Survey:
    """A surface survey: ``shots`` sources evenly spread along x, receivers on the surface.

    In 3-D the sources run along the centre line in y and the receivers cover a line along x
    at the centre y (a 2-D line in a 3-D model, enough for tests and demos).

    Args:
        shape: the velocity grid, ``(nz, nx)`` or ``(nz, ny, nx)``.
        dx: grid spacing in metres.
        dt: recording interval in seconds.
        nt: recorded samples.
        freq: Ricker peak frequency in Hz.
        shots: number of sources (>= 1).
        receivers: number of receivers, evenly spread over the whole x range (default: one
            per grid column).
        depth: source and receiver depth in cells (grid-index coordinate).
        space_order: finite-difference order.
        pml_width: absorbing layer width in cells.
        boundary: absorbing layer kind, ``"cpml"`` or ``"damping"``.
        dtype: dtype of the wavelet and positions.

    Returns:
        The :class:`Survey`.

    Raises:
        ValueError: for a bad shape, counts below 1 or a depth outside the grid.
    """
    from backprobe.wave import ricker

    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise ValueError(f"shape must be (nz, nx) or (nz, ny, nx) with >= 2 cells, got {shape}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    nx = shape[-1]
    receivers = nx if receivers is None else receivers
    if receivers < 1:
        raise ValueError(f"receivers must be >= 1, got {receivers}")
    if not 0 <= depth <= shape[0] - 1:
        raise ValueError(f"depth must be in [0, {shape[0] - 1}] cells, got {depth}")
    sx = torch.linspace(0, nx - 1, shots + 2, dtype=dtype)[1:-1] if shots > 1 else torch.tensor(
        [(nx - 1) / 2], dtype=dtype)
    rx = torch.linspace(0, nx - 1, receivers, dtype=dtype)
    cols: list[torch.Tensor] = [torch.full_like(sx, depth)]
    rcols: list[torch.Tensor] = [torch.full_like(rx, depth)]
    if len(shape) == 3:
        cols.append(torch.full_like(sx, (shape[1] - 1) / 2))
        rcols.append(torch.full_like(rx, (shape[1] - 1) / 2))
    src = torch.stack([*cols, sx], dim=-1)
    rec = torch.stack([*rcols, rx], dim=-1)
    return Survey(dx=dx, dt=dt, wavelet=ricker(freq, nt, dt, dtype=dtype), src_pos=src,
                  rec_pos=rec, space_order=space_order, pml_width=pml_width,
                  boundary=boundary)


def _chunks(indices: Sequence[int], size: int | None) -> list[list[int]]:
    idx = list(indices)
    size = len(idx) if not size else size
    return [idx[i:i + size] for i in range(0, len(idx), size)]


def simulate(v: torch.Tensor, survey: Survey, *,
             shots_per_batch: int | None = None) -> torch.Tensor:
    """Synthetic observed data: the survey's records for model ``v`` (no gradient).

    Args:
        v: velocity ``[nz, nx]`` or ``[nz, ny, nx]`` in m/s.
        survey: the acquisition.
        shots_per_batch: shots per modelling call (default: all at once).

    Returns:
        ``[shots, n_rec, nt]`` records, ``v``'s dtype.
    """
    out = []
    with torch.no_grad():
        for chunk in _chunks(range(survey.n_shots), shots_per_batch):
            out.append(survey.select(chunk).model(v.detach()))
    return torch.cat(out)
