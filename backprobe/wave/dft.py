"""On-the-fly discrete Fourier transform imaging."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from backprobe.wave._projected import ProjectedPass
from backprobe.wave._propagator import Propagator
from backprobe.wave.imaging import Imaging, ImagingPass, ModellingInfo, check_stride, kept_steps


class DFT(Imaging):
    """Keep the Fourier coefficients of ``a_t`` at a few frequencies (frequency-domain imaging).

    With ``T = n_kept`` kept steps of spacing ``dt_k = stride * dt_internal`` and angular
    steps ``w_f = 2 pi f dt_k``, forward keeps ``sum_t a_t cos(w_f t)`` and
    ``sum_t a_t sin(w_f t)``; backward forms ``sum_f c_f Re(A_f conj(B_f))`` with
    ``c_f = 1 / T`` at 0 Hz and the Nyquist frequency and ``2 / T`` otherwise. By Parseval,
    all the DFT frequencies ``k / (T dt_k)``, ``k = 0 .. floor(T / 2)``, give the exact
    gradient (of ``Exact(stride)``). Memory: two fields per frequency (one at 0 Hz and
    Nyquist) plus a block buffer, per shot. It is a projection on a deterministic time
    basis, so it shares ``TimeProbe``'s blocked accumulation.

    Args:
        frequencies: Frequencies in Hz, or an integer ``F``: the ``F`` lowest DFT
            frequencies of the kept time axis (all of them when ``F >= T // 2 + 1``).
        stride: Transform every ``stride``-th internal step.
        block: Kept steps accumulated per matrix product; default
            ``min(16, max(1, 512 // n_columns))``.

    Raises:
        ValueError: On an empty or negative frequency list, or frequencies above Nyquist.
    """

    def __init__(self, frequencies: int | Sequence[float] | Tensor, stride: int = 1,
                 block: int | None = None) -> None:
        super().__init__()
        if isinstance(frequencies, int) and not isinstance(frequencies, bool):
            if frequencies < 1:
                raise ValueError(f"frequencies must be >= 1, got {frequencies}")
            self.frequencies: int | list[float] = frequencies
        else:
            fl = torch.as_tensor(frequencies, dtype=torch.float64).reshape(-1).tolist()
            if not fl or any(not math.isfinite(f) or f < 0 for f in fl):
                raise ValueError("frequencies must be a non-empty list of non-negative Hz "
                                 f"or a positive count, got {frequencies!r}")
            self.frequencies = fl
        if block is not None and (isinstance(block, bool) or not isinstance(block, int)
                                  or block < 1):
            raise ValueError(f"block must be a positive integer, got {block!r}")
        self.stride = check_stride(stride)
        self.block = block

    def basis(self, info: ModellingInfo) -> Tensor:
        """The weighted cosine/sine basis ``[1, n_kept, n_columns]`` (float64)."""
        nk = kept_steps(info.n_steps, self.stride)
        dtk = info.dt_internal * self.stride
        if isinstance(self.frequencies, int):
            bins = [float(k) for k in range(min(self.frequencies, nk // 2 + 1))]
        else:
            nyq = 0.5 / dtk
            if max(self.frequencies) > nyq * (1 + 1e-9):
                raise ValueError(f"frequencies must not exceed the Nyquist frequency "
                                 f"{nyq:.6g} Hz of the kept time steps")
            bins = [f * nk * dtk for f in self.frequencies]
        t = torch.arange(nk, dtype=torch.float64)
        cols = []
        for k in bins:
            edge = abs(k) < 1e-9 or abs(2 * k - nk) < 1e-9
            w = math.sqrt((1.0 if edge else 2.0) / nk)
            ang = 2 * math.pi * k / nk * t
            cols.append(w * torch.cos(ang))
            if not edge:
                cols.append(w * torch.sin(ang))
        return torch.stack(cols, -1).unsqueeze(0)

    def start(
        self, prop: Propagator, info: ModellingInfo, observed: Tensor | None, keep: bool,
    ) -> ImagingPass:
        q = self.basis(info).to(device=prop.device, dtype=prop.dtype)
        return self._record(ProjectedPass(prop, q, self.stride, self.block, keep), info)

    def __repr__(self) -> str:
        return f"DFT(frequencies={self.frequencies!r}, stride={self.stride})"
