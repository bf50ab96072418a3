"""Spectrally shaped probes: a running power spectrum per layer weights what the probes see.

Used by :class:`backprobe.Probe` with ``shaping="dct"``. For one sketched row ``x`` (one
example's channel in channel mode; one example in joint mode; one input row of a Linear),
with ``Phi`` a fixed orthogonal basis (the orthonormal DCT-II over each spatial axis of a
convolution input, applied separably axis by axis, never as a dense ``P x P`` matrix; the
standard basis for a Linear, whose features have no order) and coefficients ``c = Phi^T x``:

* forward keeps ``s = Z^T D c`` (``r`` numbers) with ``D = diag(d)``,
  ``d_i = (lambda_i + eps * mean(lambda))^(-1/4)``;
* backward forms ``x_hat = Phi D^{-1} (1/r) Z s = Phi D^{-1} (1/r) Z Z^T D Phi^T x``.

Since ``E[Z Z^T] = r I`` and ``D`` does not depend on the probes,
``E[x_hat] = Phi D^{-1} D Phi^T x = x``: the weight gradient (linear in ``x_hat``) stays
unbiased for *any* fixed spectrum ``lambda``. Why ``lambda^(-1/4)``: for an output-gradient
direction ``v`` that is isotropic in the basis, the estimate's variance is proportional to
``(sum_i d_i^2 lambda_i) (sum_i d_i^-2)``, minimised (Cauchy-Schwarz) by
``d_i^2 ~ lambda_i^(-1/2)``; the variance then falls from ``P sum_i lambda_i`` (plain probes,
``D = I``) to ``(sum_i sqrt(lambda_i))^2``: a predicted error ratio of
``sqrt((sum sqrt(lambda))^2 / (P sum lambda))``.

Deflation (``deflate=k``): the ``k`` coefficients of highest running energy (per sketched
row) are kept exactly and the other ``P - k`` are sketched with ``r - k`` shaped probes,
so the numbers kept per row stay ``r``. Still unbiased (the split is fixed by ``lambda``).

The spectrum ``lambda`` (``[C, *spatial]`` for a convolution, ``[D_in]`` for a Linear) is a
buffer ``probe_spectrum`` of the layer, with ``probe_spectrum_updates`` counting updates,
both in the layer's ``state_dict`` and moved by ``.to()``. Each training forward first
sketches with the spectrum of earlier batches, then updates it like BatchNorm's running
statistics: ``lambda <- (1 - momentum) lambda + momentum * mean_n c_n^2`` (the first update
copies). Until the first update the layer probes plainly. A new tensor replaces the buffer
at each update, so a forward's own weights stay with it until its backward.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from backprobe.estimators._base import Estimator
from backprobe.layers import AffineOp
from backprobe.linalg._probes import draw_probes, orthonormalise

if TYPE_CHECKING:
    from backprobe.estimators.probe import Probe

SPECTRUM = "probe_spectrum"
UPDATES = "probe_spectrum_updates"
#: Relative floor of the spectrum (``eps``): keeps ``d`` finite where ``lambda`` vanishes.
FLOOR = 1e-4


@lru_cache(maxsize=64)
def _dct_matrix_cpu(n: int) -> Tensor:
    """Orthonormal DCT-II matrix ``M [n, n]`` (float64): ``c = M x``, ``x = M^T c``."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def dct_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Orthonormal DCT-II matrix of size ``n`` on ``device`` in ``dtype``."""
    return _dct_matrix_cpu(n).to(device=device, dtype=dtype)


def transform(x: Tensor, inverse: bool = False) -> Tensor:
    """DCT-II of ``x [rows, C, *spatial]`` along every spatial axis (separable), or its inverse.

    Tensors with two dimensions (Linear rows ``[rows, D]``) are returned unchanged (the
    standard basis).
    """
    for axis in range(2, x.dim()):
        m = dct_matrix(x.shape[axis], x.dtype, x.device)
        x = (x.movedim(axis, -1) @ (m if inverse else m.mT)).movedim(-1, axis)
    return x


def register(module: nn.Module) -> None:
    """Give ``module`` empty spectrum buffers (filled by the first training forward)."""
    if SPECTRUM not in module._buffers:
        module.register_buffer(SPECTRUM, torch.zeros(0))
        module.register_buffer(UPDATES, torch.zeros((), dtype=torch.int64))
        module._probe_spectrum_hook = module.register_load_state_dict_pre_hook(  # type: ignore[assignment]
            _resize_before_load)


def unregister(module: nn.Module) -> None:
    """Remove the spectrum buffers of ``module`` (it no longer uses shaped probes)."""
    for name in (SPECTRUM, UPDATES):
        module._buffers.pop(name, None)
    handle = module.__dict__.pop("_probe_spectrum_hook", None)
    if handle is not None:
        handle.remove()


def _resize_before_load(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                        *args: Any) -> None:
    """Let a checkpoint's spectrum (any size) load; a plain checkpoint keeps the empty one."""
    for name in (SPECTRUM, UPDATES):
        key = prefix + name
        if key not in state_dict:
            state_dict[key] = module._buffers[name]
        elif name == SPECTRUM:
            own = module._buffers[name]
            device = own.device if own is not None else None
            module._buffers[name] = torch.empty_like(state_dict[key], device=device)


class ShapedProbe(Estimator):
    """:class:`Probe` with ``shaping="dct"`` bound to one layer's spectrum buffers."""

    def __init__(self, parent: Probe, module: nn.Module) -> None:
        self.parent, self.module = parent, module

    def saved_numbers(self, op: AffineOp, x: Tensor) -> int:
        return self.parent.saved_numbers(op, x)

    # -- helpers -------------------------------------------------------------------------
    def _weights(self, lam: Tensor, cv: int, q: int, dtype: torch.dtype) -> Tensor:
        """``d [Cv, Q]`` from a spectrum of ``Cv * Q`` numbers (see module docstring)."""
        lam = lam.reshape(cv, q).to(dtype)
        mean = lam.mean(dim=1, keepdim=True)
        lam = lam + FLOOR * mean + (mean == 0).to(dtype)  # an all-zero row: plain probes
        return lam.pow(-0.25)

    def _draw(self, seed: int, rows: int, r: int, q: int, dtype: torch.dtype,
              device: torch.device) -> tuple[Tensor, Tensor | None]:
        p = self.parent
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        z = draw_probes((r, q), p.distribution, gen, device, dtype)
        if p.orthogonal:
            z = orthonormalise(z)
        flips = draw_probes((rows, 1, q), "rademacher", gen, device, dtype) if p.per_sample \
            else None
        return z, flips

    # -- estimator interface -------------------------------------------------------------
    def pack(self, op: AffineOp, x: Tensor) -> tuple[tuple[Tensor, ...], Any]:
        from backprobe.estimators.probe import _compute_dtype

        p, module = self.parent, self.module
        cdt = _compute_dtype(x.dtype)
        xr = op.rows(x).to(cdt)
        lam_shape = tuple(xr.shape[1:])
        lam: Tensor = module._buffers[SPECTRUM]  # type: ignore[assignment]
        updates: Tensor = module._buffers[UPDATES]  # type: ignore[assignment]
        fresh = tuple(lam.shape) != lam_shape or int(updates) == 0
        coef = transform(xr)
        if fresh:
            saved, meta = p.pack(op, x)  # plain probes until the first update
            out_meta: Any = ("plain", meta)
        else:
            saved, out_meta = self._pack_shaped(op, coef, lam, tuple(xr.shape))
        self._update(coef, lam, updates, fresh)
        return saved, out_meta

    def _pack_shaped(self, op: AffineOp, coef: Tensor, lam: Tensor,
                     row_shape: tuple[int, ...]) -> tuple[tuple[Tensor, ...], Any]:
        p = self.parent
        cview = p._view(op, coef)
        b, cv, q = cview.shape
        d = self._weights(lam, cv, q, cview.dtype)
        k = min(p.deflate, q)
        r = p.num_probes - k
        seed = p.next_seed()
        tensors: tuple[Tensor, ...]
        if k:
            order = torch.argsort(lam.reshape(cv, q), dim=1, descending=True).to(cview.device)
            idx = order.unsqueeze(0).expand(b, cv, q)
            ordered = cview.gather(2, idx)
            kept, rest = ordered[..., :k].contiguous(), ordered[..., k:]
            d_rest = d.gather(1, order)[:, k:]
        else:
            order, kept, rest, d_rest = None, None, cview, d
        sketch = rest.new_zeros(b, cv, 0)
        if r > 0:
            z, flips = self._draw(seed, b, r, q - k, cview.dtype, cview.device)
            y = rest * d_rest
            sketch = (y if flips is None else y * flips) @ z.mT
        seed_t = torch.tensor(seed, dtype=torch.int64)
        tensors = (sketch, seed_t, d_rest)
        if k:
            assert kept is not None and order is not None
            tensors += (kept, order)
        return tensors, ("shaped", row_shape, tuple(coef.shape), k)

    def _update(self, coef: Tensor, lam: Tensor, updates: Tensor, fresh: bool) -> None:
        with torch.no_grad():
            batch = coef.detach().square().mean(dim=0).to(torch.float32)
            if fresh:
                new = batch
            else:
                m = self.parent.momentum
                new = lam.to(batch.dtype).mul(1 - m).add_(batch, alpha=m)
            self.module._buffers[SPECTRUM] = new.to(lam.device)
            self.module._buffers[UPDATES] = (updates + 1) if not fresh else \
                torch.ones((), dtype=torch.int64, device=updates.device)

    def weight_grad(self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor) -> Tensor:
        if meta[0] == "plain":
            return self.parent.weight_grad(op, saved, meta[1], g)
        _, row_shape, coef_shape, k = meta
        sketch, seed_t, d_rest = saved[:3]
        b, cv, r = sketch.shape
        g = op.rows(g.to(sketch.dtype))
        q_rest = d_rest.shape[1]
        if r > 0:
            z, flips = self._draw(int(seed_t), b, r, q_rest, sketch.dtype, g.device)
            rest = (sketch @ z).div_(r)
            if flips is not None:
                rest.mul_(flips)
            rest.div_(d_rest)
        else:
            rest = sketch.new_zeros(b, cv, q_rest)
        if k:
            kept, order = saved[3], saved[4]
            coef = torch.empty(b, cv, k + q_rest, dtype=rest.dtype, device=rest.device)
            coef.scatter_(2, order.unsqueeze(0).expand(b, cv, -1), torch.cat([kept, rest], 2))
        else:
            coef = rest
        x_hat = transform(coef.reshape(coef_shape), inverse=True)
        return op.weight_grad(x_hat.reshape(row_shape), g)
