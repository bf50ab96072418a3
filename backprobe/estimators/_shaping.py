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
from backprobe.layers._base import chunks

if TYPE_CHECKING:
    from backprobe.estimators.probe import Probe, Signs

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
              device: torch.device) -> tuple[Tensor, Signs | None]:
        from backprobe.estimators.probe import draw

        p = self.parent
        return draw(seed, r, rows, q, p.distribution, p.orthogonal, p.per_sample, dtype,
                    device)

    # -- estimator interface -------------------------------------------------------------
    def pack(self, op: AffineOp, x: Tensor) -> tuple[tuple[Tensor, ...], Any]:
        """Sketch (shaped once the layer has a spectrum) and update the running spectrum.

        The DCT coefficients of a chunk of rows at a time (about ``CHUNK_BYTES``) feed both
        the sketch and the spectrum's batch statistics: no input-sized transform exists.
        """
        from backprobe.estimators.probe import _compute_dtype

        p, module = self.parent, self.module
        cdt = _compute_dtype(x.dtype)
        xr = op.rows(x)
        lam_shape = tuple(xr.shape[1:])
        lam: Tensor = module._buffers[SPECTRUM]  # type: ignore[assignment]
        updates: Tensor = module._buffers[UPDATES]  # type: ignore[assignment]
        fresh = tuple(lam.shape) != lam_shape or int(updates) == 0
        if fresh:
            saved, meta = p.pack(op, x)  # plain probes until the first update
            out_meta: Any = ("plain", meta)
            power = self._power(op, xr, cdt)
        else:
            saved, out_meta, power = self._pack_shaped(op, xr, lam, cdt)
        self._update(power / max(xr.shape[0], 1), lam, updates, fresh)
        return saved, out_meta

    def _power(self, op: AffineOp, xr: Tensor, cdt: torch.dtype,
               sink: Any = None) -> Tensor:
        """``sum_n c_n^2`` (``[*xr.shape[1:]]``) over the rows' DCT coefficients ``c_n``.

        ``sink(sl, coef)``, if given, also receives each chunk's coefficients.
        """
        power = torch.zeros(xr.shape[1:], dtype=cdt, device=xr.device)
        row_bytes = math.prod(xr.shape[1:]) * torch.empty((), dtype=cdt).element_size()
        for sl in chunks(xr.shape[0], 3 * row_bytes):
            coef = transform(xr[sl].to(cdt))
            if sink is not None:
                sink(sl, coef)  # keeps nothing of coef
            # a transform's result is fresh and may be squared in place; a Linear's rows are
            # the layer input itself
            power += (coef.square_() if coef.dim() > 2 else coef.square()).sum(0)
            del coef
        return power

    def _pack_shaped(self, op: AffineOp, xr: Tensor, lam: Tensor, cdt: torch.dtype
                     ) -> tuple[tuple[Tensor, ...], Any, Tensor]:
        p = self.parent
        rows = xr.shape[0]
        _, cv, q = p._view(op, xr[:1]).shape
        d = self._weights(lam, cv, q, cdt)
        k = min(p.deflate, q)
        r = p.num_probes - k
        seed = p.next_seed()
        order: Tensor | None = None
        d_rest = d
        if k:
            order = torch.argsort(lam.reshape(cv, q), dim=1, descending=True).to(xr.device)
            d_rest = d.gather(1, order)[:, k:]
        z, signs = (self._draw(seed, rows, r, q - k, cdt, xr.device) if r > 0
                    else (None, None))
        sketches: list[Tensor] = []
        kepts: list[Tensor] = []

        def sink(sl: slice, coef: Tensor) -> None:
            cview = p._view(op, coef)
            rest = cview
            if order is not None:
                ordered = cview.gather(2, order.unsqueeze(0).expand(cview.shape[0], cv, q))
                kepts.append(ordered[..., :k].clone())
                rest = ordered[..., k:]
            if z is not None:
                y = rest * d_rest
                if signs is not None:
                    y.mul_(signs.rows(sl, cdt))
                sketches.append(y @ z.mT)
            else:
                sketches.append(rest.new_zeros(rest.shape[0], cv, 0))

        power = self._power(op, xr, cdt, sink)
        seed_t = torch.tensor(seed, dtype=torch.int64)
        tensors: tuple[Tensor, ...] = (torch.cat(sketches), seed_t, d_rest)
        if order is not None:
            tensors += (torch.cat(kepts), order)
        return tensors, ("shaped", tuple(xr.shape), k), power

    def _update(self, batch_power: Tensor, lam: Tensor, updates: Tensor, fresh: bool) -> None:
        """Fold one batch's mean power ``mean_n c_n^2`` into the running spectrum."""
        with torch.no_grad():
            batch = batch_power.to(torch.float32)
            if fresh:
                new = batch
            else:
                m = self.parent.momentum
                new = lam.to(batch.dtype).mul(1 - m).add_(batch, alpha=m)
            self.module._buffers[SPECTRUM] = new.to(lam.device)
            self.module._buffers[UPDATES] = (updates + 1) if not fresh else \
                torch.ones((), dtype=torch.int64, device=updates.device)

    def weight_grad(self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor) -> Tensor:
        """``x_hat = Phi D^{-1} (1/r) Z Z^T D Phi^T x``'s weight gradient, a chunk at a time."""
        from backprobe.estimators.probe import chunked_weight_grad

        if meta[0] == "plain":
            return self.parent.weight_grad(op, saved, meta[1], g)
        _, row_shape, k = meta
        sketch, seed_t, d_rest = saved[:3]
        b, cv, r = sketch.shape
        g = op.rows(g)
        q_rest = d_rest.shape[1]
        z, signs = (self._draw(int(seed_t), b, r, q_rest, sketch.dtype, g.device) if r > 0
                    else (None, None))

        def reconstruct(sl: slice) -> Tensor:
            if z is not None:
                rest = (sketch[sl] @ z).div_(r)
                if signs is not None:
                    rest.mul_(signs.rows(sl, rest.dtype))
                rest.div_(d_rest)
            else:
                rest = sketch.new_zeros(sl.stop - sl.start, cv, q_rest)
            if k:
                kept, order = saved[3], saved[4]
                coef = torch.empty(rest.shape[0], cv, k + q_rest, dtype=rest.dtype,
                                   device=rest.device)
                coef.scatter_(2, order.unsqueeze(0).expand(rest.shape[0], cv, -1),
                              torch.cat([kept[sl], rest], 2))
            else:
                coef = rest
            return transform(coef.reshape(-1, *row_shape[1:]), inverse=True)

        return chunked_weight_grad(op, reconstruct, b, row_shape, g, sketch.dtype)
