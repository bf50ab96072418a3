"""Time probing (TimeProbeSeismic; Louboutin et al.): the gradient's trace estimated in time.

The velocity gradient is ``g[x] = sum_t a_t[x] b_t[x] = tr(A_x B_x^T)`` over time.
``TimeProbe`` keeps ``U = Q^T A`` (``r`` numbers per cell instead of ``N``) and estimates
``g ~ sum_j (Q^T A)_j (Q^T B)_j = a^T Q Q^T b``:

* ``"rademacher"`` / ``"gaussian"``: i.i.d. entries of variance ``1 / r``, so
  ``E[Q Q^T] = I``: unbiased.
* ``"orthogonal"``: Gaussian columns orthonormalised in blocks of ``n_kept`` (sign-fixed QR)
  and scaled by ``sqrt(n_kept / r)``: unbiased, and exact when ``r = n_kept``.
* ``"data"``: ``Q = orth(D D^T S)`` per shot, ``D`` the observed record on the kept time
  steps, ``S`` random signs: orthonormal columns spanning the data's dominant time range
  (a projection, biased; exact as ``r -> n_kept``).
* ``"hutchpp"``: ``ceil(r / 2)`` data directions ``Q_d`` plus ``r - ceil(r / 2)`` Rademacher
  probes projected off them, ``(I - Q_d Q_d^T) G / sqrt(g)``: Hutch++-style deflation,
  unbiased because ``E[G G^T] / g = I`` on the complement.

Randomness comes from a private generator (``seed`` or ``generator``): each call draws one
integer seed from it (kept as ``last_seed``) and derives its probes from that seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from backprobe._random import SEED_HIGH, private_generator
from backprobe.wave._projected import ProjectedPass
from backprobe.wave._propagator import Propagator
from backprobe.wave.imaging import Imaging, ImagingPass, ModellingInfo, check_stride, kept_steps

PROBES = ("rademacher", "gaussian", "orthogonal", "data", "hutchpp")


def _signs(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen, dtype=torch.float64).mul_(2).sub_(1)


def _orth(y: Tensor) -> Tensor:
    """Orthonormal columns of ``y [..., n, k]`` (``k <= n``), sign-fixed (``diag(R) >= 0``)."""
    q, r = torch.linalg.qr(y)
    d = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return q * d.unsqueeze(-2)


def observed_on_kept_steps(observed: Tensor, info: ModellingInfo, stride: int) -> Tensor:
    """Observed data ``[S, R, nt]`` linearly interpolated to the kept internal steps.

    Sample ``i`` is the field at ``(i + 1) dt``; kept step ``n`` is at ``n dt_internal``.

    Returns:
        ``[S, R, n_kept]`` in float64.
    """
    d = observed.double()
    d = torch.cat([torch.zeros_like(d[..., :1]), d], -1)  # index 0: the field at t = 0
    nk = kept_steps(info.n_steps, stride)
    pos = torch.arange(nk, dtype=torch.float64, device=d.device) * stride / info.substeps
    i0 = torch.clamp(torch.floor(pos).long(), max=d.shape[-1] - 1)
    i1 = torch.clamp(i0 + 1, max=d.shape[-1] - 1)
    f = pos - i0
    return d[..., i0] * (1 - f) + d[..., i1] * f


class TimeProbe(Imaging):
    """Estimate the gradient from ``r`` probes in time (``r`` numbers kept per cell).

    Example:
        >>> imaging = TimeProbe(32, probes="rademacher", stride=4, seed=0)

    Args:
        r: Number of probe vectors (``>= 1``).
        probes: ``"rademacher"``, ``"gaussian"``, ``"orthogonal"``, ``"data"`` or
            ``"hutchpp"`` (the last two need ``observed=`` in :func:`model`).
        stride: Probe only every ``stride``-th internal step (the estimate is scaled by
            ``stride``, so its mean is ``Exact(stride)``'s gradient).
        seed: Seed of the private generator (default: one draw from the global RNG).
        generator: A ``torch.Generator`` to draw from instead of ``seed``.
        block: Kept steps accumulated per matrix product (the block buffer holds ``block``
            fields per shot); default ``min(16, max(1, 512 // r))``.

    Memory: ``S * (r + block) * |D|`` numbers plus the ``n_kept x r`` probes per shot.

    Raises:
        ValueError: If ``r < 1``, ``stride < 1``, ``block < 1`` or ``probes`` is unknown.
    """

    def __init__(
        self, r: int, probes: str = "rademacher", stride: int = 1, seed: int | None = None,
        generator: torch.Generator | None = None, block: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive integer number of probes, got {r!r}")
        if probes not in PROBES:
            raise ValueError(f"probes must be one of {PROBES}, got {probes!r}")
        if block is not None and (isinstance(block, bool) or not isinstance(block, int)
                                  or block < 1):
            raise ValueError(f"block must be a positive integer, got {block!r}")
        self.r, self.probes, self.block = r, probes, block
        self.stride = check_stride(stride)
        self.generator = generator if generator is not None else private_generator(seed)
        self.last_seed: int | None = None

    def validate(self, observed: Tensor | None, shots: int, n_rec: int, nt: int) -> None:
        if self.probes in ("data", "hutchpp") and observed is None:
            raise ValueError(f"observed is required by TimeProbe(probes={self.probes!r}): "
                             "pass observed=[shots, n_rec, nt] to model()")

    def basis(self, info: ModellingInfo, observed: Tensor | None, seed: int) -> Tensor:
        """The probes ``Q`` ``[S, n_kept, r]`` (float64, CPU or observed's device)."""
        gen = torch.Generator().manual_seed(seed)
        nk = kept_steps(info.n_steps, self.stride)
        s, r = info.shots, self.r
        if self.probes == "rademacher":
            return _signs((s, nk, r), gen) / math.sqrt(r)
        if self.probes == "gaussian":
            return torch.randn((s, nk, r), generator=gen, dtype=torch.float64) / math.sqrt(r)
        if self.probes == "orthogonal":
            g = torch.randn((s, nk, r), generator=gen, dtype=torch.float64)
            cols = [_orth(g[..., c:c + nk]) for c in range(0, r, nk)]
            return torch.cat(cols, -1) * math.sqrt(nk / r)
        if observed is None:  # validated earlier; keeps mypy honest
            raise ValueError("observed is required by data-informed probes")
        if r > nk:
            raise ValueError(f"r={r} exceeds the {nk} kept time steps: data-informed probes "
                             "need r <= n_kept")
        dk = observed_on_kept_steps(observed, info, self.stride).cpu()  # [S, R, nk]
        rq = r if self.probes == "data" else (r + 1) // 2
        sk = _signs((s, nk, rq), gen)
        y = dk.mT @ (dk @ sk)  # D D^T S, [S, nk, rq]
        qd = _orth(y)
        if self.probes == "data" or rq == r:
            return qd
        gcount = r - rq
        g = _signs((s, nk, gcount), gen)
        g = (g - qd @ (qd.mT @ g)) / math.sqrt(gcount)
        return torch.cat([qd, g], -1)

    def start(
        self, prop: Propagator, info: ModellingInfo, observed: Tensor | None, keep: bool,
    ) -> ImagingPass:
        seed = int(torch.randint(0, SEED_HIGH, (), generator=self.generator))
        self.last_seed = seed
        if keep:
            q = self.basis(info, observed, seed).to(device=prop.device, dtype=prop.dtype)
        else:
            q = torch.empty((1, kept_steps(info.n_steps, self.stride), self.r))
        return self._record(ProjectedPass(prop, q, self.stride, self.block, keep), info)

    def __repr__(self) -> str:
        return (f"TimeProbe(r={self.r}, probes={self.probes!r}, stride={self.stride}, "
                f"block={self.block})")
