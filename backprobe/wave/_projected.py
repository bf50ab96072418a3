"""Imaging by projection on a time basis (shared by ``TimeProbe`` and ``DFT``).

Forward keeps ``U = Q^T A`` per shot: ``A[t, x] = a_{n_t}[x]`` over the kept steps
``n_t = t * stride``, ``Q`` an ``[n_kept, r]`` basis. It accumulates in blocks of ``B``
kept steps: step ``n`` writes ``a_n`` straight into a block buffer and each full block
costs one batched matrix product ``U += Q_blk^T A_blk``. Backward rebuilds, block by block,
``A_hat_blk = Q_blk U`` (one product per block, into the same buffer) and correlates it
with the adjoint field, so the estimate is

    g = stride * sum_t (Q Q^T A)_t * b_t = stride * sum_j (Q^T A)_j * (Q^T B)_j,

exact when ``Q Q^T = I`` and unbiased when ``E[Q Q^T] = I``; it needs no second
``r x |D|`` buffer for the projected adjoint field. Memory: ``S * (r + B) * |D|`` numbers
plus the basis (``B`` from :func:`default_block` unless given). ``Q`` is padded with zero
rows to a whole number of blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from backprobe.wave._propagator import Propagator
from backprobe.wave.imaging import ImagingPass, kept_steps


def default_block(r: int) -> int:
    """Block length for ``r`` basis vectors: ``min(16, max(1, 512 // r))``.

    Longer blocks amortise the read-modify-write of ``U`` (``r x |D|``) over more steps;
    capping ``block * r`` keeps the buffer small next to ``U`` when ``r`` is large (16 for
    ``r <= 32``, 8 for ``r = 64``, 4 for ``r = 128``).
    """
    return min(16, max(1, 512 // r))


class ProjectedPass(ImagingPass):
    """Blocked projection on ``basis`` (``[S or 1, n_kept, r]``, rows ``t``)."""

    def __init__(
        self, prop: Propagator, basis: Tensor, stride: int, block: int | None, keep: bool,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.scale = float(stride)
        s, ncell = prop.shots, prop.scratch[0].numel()
        nk = kept_steps(prop.n_steps, stride)
        if basis.shape[1] != nk:
            raise ValueError(f"basis must have {nk} rows, got {basis.shape[1]}")
        if block is None:
            block = default_block(basis.shape[2])
        self.block = b = max(1, min(block, nk))
        self.n_kept = nk
        self.keep = keep
        if not keep:
            return
        r = basis.shape[2]
        pad = -nk % b
        if pad:
            basis = torch.cat([basis, basis.new_zeros((basis.shape[0], pad, r))], 1)
        self.q = self.hold(basis.contiguous())
        self.u = self.hold(basis.new_zeros((s, r, ncell)))
        self.buf = self.hold(basis.new_zeros((s, b, ncell)))
        self.field = self.buf.view(s, b, *prop.dom)
        self.shots = s

    def _q_block(self, t0: int) -> Tensor:
        q = self.q[:, t0:t0 + self.block]
        return q.expand(self.shots, -1, -1) if q.shape[0] != self.shots else q

    def slot(self, n: int) -> Tensor | None:
        if not self.keep or n % self.stride:
            return None
        return self.field[:, (n // self.stride) % self.block]

    def commit(self, n: int) -> None:
        t = n // self.stride
        if t % self.block == self.block - 1 or t == self.n_kept - 1:
            t0 = t - t % self.block
            self.u.baddbmm_(self._q_block(t0).mT, self.buf)

    def history(self, n: int) -> Tensor | None:
        if not self.keep or n % self.stride:
            return None
        t = n // self.stride
        j = t % self.block
        if j == self.block - 1 or t == self.n_kept - 1:  # entering a block (time reversed)
            torch.bmm(self._q_block(t - j), self.u, out=self.buf)
        return self.field[:, j]

