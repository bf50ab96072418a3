"""Finite-difference acoustic propagator and its exact discrete adjoint (torch only).

The scheme, on the computational domain ``D`` (interior plus absorbing layer), with
``p_n`` the pressure at time ``n dt``, ``L`` the centred ``order``-th order Laplacian
(zero outside ``D``), ``sigma >= 0`` the damping profile and ``m = v^2 dt^2``::

    (1 + sigma dt / 2) p_{n+1} = 2 p_n - (1 - sigma dt / 2) p_{n-1} + m L p_n + dt^2 P_s^T f_n

i.e. ``p_{n+1} = A p_n - B p_{n-1} + C m L p_n + C dt^2 P_s^T f_n`` with ``C = 1 / (1 +
sigma dt / 2)``, ``A = 2 C``, ``B = (1 - sigma dt / 2) C``; receivers record
``d_n = P_r p_{n+1}``. ``L`` is symmetric, so the adjoint recursion reads

    lambda_k = A lambda_{k+1} - B lambda_{k+2} + L (C m lambda_{k+1}) + P_r^T g_{k-1}

and the gradient with respect to ``v^2`` is ``dt^2 sum_n (L p_n) * (C lambda_{n+1})``: the
forward quantity ``a_n = L p_n`` (``u_tt / v^2`` away from sources and the absorbing layer)
correlated with the adjoint quantity ``b_n = C lambda_{n+1}``. Imaging strategies decide
how ``a_n`` is kept and how ``sum_n a_n * b_n`` is formed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from backprobe.wave._cpml import CPML

#: Centred second-derivative coefficients ``(c_0, c_1, ..., c_h)`` by accuracy order.
COEFFICIENTS: dict[int, tuple[float, ...]] = {
    2: (-2.0, 1.0),
    4: (-5 / 2, 4 / 3, -1 / 12),
    6: (-49 / 18, 3 / 2, -3 / 20, 1 / 90),
    8: (-205 / 72, 8 / 5, -1 / 5, 8 / 315, -1 / 560),
}


def cfl_dt(order: int, ndim: int, dx: float, vmax: float) -> float:
    """Largest stable leapfrog step for the ``order``-th order Laplacian.

    The Laplacian's largest eigenvalue magnitude is ``ndim * |c_0 + 2 sum_k (-1)^k c_k| /
    dx^2`` (the checkerboard mode); leapfrog is stable while ``vmax^2 dt^2 mu <= 4``.
    """
    c = COEFFICIENTS[order]
    mu = ndim * abs(c[0] + 2 * sum((-1) ** k * ck for k, ck in enumerate(c) if k)) / dx**2
    return 2.0 / (vmax * math.sqrt(mu))


def damping_profile(
    shape: tuple[int, ...], pml: int, dx: float, vmax: float, reflection: float = 1e-3,
) -> Tensor:
    """Quadratic damping ``sigma_max (d / W)^2`` in a layer of ``W = pml`` cells, float64.

    ``sigma_max = 3 vmax ln(1 / R) / (2 W dx)`` (the classic choice for a target
    reflection ``R``); zero in the interior.
    """
    sigma = torch.zeros(shape, dtype=torch.float64)
    if pml == 0:
        return sigma
    smax = 3.0 * vmax * math.log(1.0 / reflection) / (2.0 * pml * dx)
    for axis, n in enumerate(shape):
        i = torch.arange(n, dtype=torch.float64)
        d = torch.clamp(torch.maximum(pml - i, i - (n - 1 - pml)), min=0) / pml
        view = [1] * len(shape)
        view[axis] = n
        sigma = sigma + smax * (d**2).view(view)
    return sigma


def dominant_frequency(wavelet: Tensor, dt: float) -> float:
    """Peak of the mean wavelet's amplitude spectrum (Hz), at least one frequency bin."""
    w = wavelet.detach().double().mean(0)
    spec = torch.fft.rfft(w).abs()
    df = 1.0 / (w.shape[0] * dt)
    return max(float(spec.argmax()) * df, df)


class Propagator:
    """One modelling call's fields, coefficients and buffers (no autograd inside).

    Args:
        v: Velocity on the domain ``D`` (interior plus absorbing layer), ``[*D]``, detached.
        dx: Grid spacing (m).
        dt: Internal time step (s).
        order: Spatial accuracy order (2, 4, 6 or 8).
        pml: Absorbing-layer width in cells.
        vmax: Velocity used for the damping strength.
        wavelet: Source time functions at the internal rate, ``[S, N]``.
        src_index: Flat indices into ``D`` of the source interpolation corners, ``[S, K]``.
        src_weight: Their interpolation weights, ``[S, K]``.
        rec_index: Flat indices into ``D`` of receiver corners, ``[S, R, K]``.
        rec_weight: Their weights, ``[S, R, K]``.
    """

    def __init__(
        self, v: Tensor, dx: float, dt: float, order: int, pml: int, vmax: float,
        wavelet: Tensor, src_index: Tensor, src_weight: Tensor, rec_index: Tensor,
        rec_weight: Tensor, boundary: str = "damping", pml_freq: float | None = None,
    ) -> None:
        self.dtype, self.device = v.dtype, v.device
        self.dom = tuple(v.shape)
        self.ndim = v.dim()
        self.order = order
        self.halo = h = order // 2
        self.shots, self.n_steps = wavelet.shape
        self.dt = dt
        self.n_rec, self.k_corners = rec_index.shape[1], rec_index.shape[2]
        self.boundary = boundary
        if boundary == "cpml":
            sigma = torch.zeros(self.dom, dtype=torch.float64, device=self.device)
        else:
            sigma = damping_profile(self.dom, pml, dx, vmax).to(self.device)
        c = 1.0 / (1.0 + 0.5 * dt * sigma)
        self.m = (v.double() ** 2) * dt**2
        self.C = c.to(self.dtype)
        self.A = (2.0 * c).to(self.dtype)
        self.Bn = (-(1.0 - 0.5 * dt * sigma) * c).to(self.dtype)
        self.Cm = (c * self.m).to(self.dtype)
        self.v = v
        coeff = COEFFICIENTS[order]
        self.c0 = self.ndim * coeff[0] / dx**2
        self.ck = [ck / dx**2 for ck in coeff[1:]]
        pad = tuple(n + 2 * h for n in self.dom)
        self.pad = pad
        # Index maps from D to the padded layout.
        strides_d = [math.prod(self.dom[a + 1:]) for a in range(self.ndim)]
        strides_p = [math.prod(pad[a + 1:]) for a in range(self.ndim)]

        def to_padded(idx: Tensor) -> Tensor:
            out = torch.zeros_like(idx)
            rem = idx
            for a in range(self.ndim):
                q = torch.div(rem, strides_d[a], rounding_mode="floor")
                rem = rem - q * strides_d[a]
                out = out + (q + h) * strides_p[a]
            return out

        s = self.shots
        self.src_index_d = src_index.contiguous()
        self.src_index_p = to_padded(src_index).contiguous()
        self.rec_index_d = rec_index.reshape(s, -1).contiguous()
        self.rec_index_p = to_padded(rec_index).reshape(s, -1).contiguous()
        self.rec_weight = rec_weight
        c_src = self.C.reshape(-1)[src_index]
        self.src_scale = c_src * src_weight * dt**2  # [S, K]
        # Per-step injected values, [N, S, K] so that step n reads a contiguous block.
        self.src_values = (wavelet.t()[:, :, None] * self.src_scale[None]).contiguous()
        # Two padded pressure buffers (halos stay zero), and a scratch Laplacian.
        self.bufs = [torch.zeros((s, *pad), dtype=self.dtype, device=self.device)
                     for _ in range(2)]
        self.flat = [b.view(s, -1) for b in self.bufs]
        inner = (slice(None),) + tuple(slice(h, h + n) for n in self.dom)
        self.inner = [b[inner] for b in self.bufs]
        self.views = [self._stencil_views(b) for b in self.bufs]
        self.scratch = torch.empty((s, *self.dom), dtype=self.dtype, device=self.device)
        self.cur = 0
        self.cpml: CPML | None = None
        if boundary == "cpml":
            freq = pml_freq if pml_freq is not None else dominant_frequency(wavelet, dt)
            self.cpml = CPML(self.dom, h, order, dx, dt, pml, vmax, freq, s, self.dtype,
                             self.device, coeff)
        #: The state (pressure now and before, plus the CPML's memory variables on its
        #: strips), flattened: ``state_numel`` numbers per shot.
        self._state_parts = 2 * [math.prod(self.dom)] + (
            [t[0].numel() for t in self.cpml.state] if self.cpml is not None else [])
        self.state_numel = sum(self._state_parts)

    def _stencil_views(self, buf: Tensor) -> tuple[Tensor, list[tuple[float, Tensor, Tensor]]]:
        h = self.halo
        centre = buf[(slice(None),) + tuple(slice(h, h + n) for n in self.dom)]
        terms = []
        for k, ck in enumerate(self.ck, start=1):
            for a, n in enumerate(self.dom):
                plus = [slice(None)] + [slice(h, h + m) for m in self.dom]
                minus = list(plus)
                plus[a + 1] = slice(h + k, h + k + n)
                minus[a + 1] = slice(h - k, h - k + n)
                terms.append((ck, buf[tuple(plus)], buf[tuple(minus)]))
        return centre, terms

    def laplacian(self, which: int, out: Tensor) -> Tensor:
        """``out = L p`` for padded buffer ``which``.

        With a CPML: ``L_pml p``, which advances the memory variables to the current step.
        """
        self._apply_laplacian(self.views[which], out, False)
        if self.cpml is not None:
            self.cpml.correct(self.bufs[which], out)
        return out

    def _apply_laplacian(
        self, views: tuple[Tensor, list[tuple[float, Tensor, Tensor]]], out: Tensor,
        accumulate: bool,
    ) -> Tensor:
        centre, terms = views
        if accumulate:
            out.add_(centre, alpha=self.c0)
        else:
            torch.mul(centre, self.c0, out=out)
        for ck, plus, minus in terms:
            out.add_(plus, alpha=ck)
            out.add_(minus, alpha=ck)
        return out

    # ----------------------------------------------------------------- forward
    def reset(self) -> None:
        """Zero state: ``p_0 = p_{-1} = 0``, positioned before step 0."""
        for b in self.bufs:
            b.zero_()
        if self.cpml is not None:
            self.cpml.reset()
        self.cur = 0

    def step(self, n: int, lap_out: Tensor | None, record: Tensor | None = None) -> Tensor:
        """Advance ``p_n -> p_{n+1}``; ``L p_n`` is written into ``lap_out`` (or scratch).

        Args:
            n: Step index.
            lap_out: Where to write ``a_n = L p_n`` (``[S, *D]``), or ``None``.
            record: Optional ``[S, R*K]`` buffer receiving the corner values of ``p_{n+1}``.

        Returns:
            The tensor holding ``a_n``.
        """
        a = self.scratch if lap_out is None else lap_out
        cur, nxt = self.cur, 1 - self.cur
        self.laplacian(cur, a)
        new = self.inner[nxt]
        new.mul_(self.Bn).addcmul_(self.A, self.inner[cur]).addcmul_(self.Cm, a)
        self.flat[nxt].scatter_add_(1, self.src_index_p, self.src_values[n])
        if record is not None:
            torch.gather(self.flat[nxt], 1, self.rec_index_p, out=record)
        self.cur = nxt
        return a

    def current_laplacian(self, out: Tensor) -> Tensor:
        """``L p_n`` for the current state, exactly as ``step`` would compute it.

        With a CPML this advances the memory variables: reload a state before stepping on.
        """
        return self.laplacian(self.cur, out)

    def empty_state(self, *lead: int) -> Tensor:
        """An uninitialised ``[*lead, S, state_numel]`` tensor for ``save_state``."""
        return torch.empty((*lead, self.shots, self.state_numel), dtype=self.dtype,
                           device=self.device)

    def _state_fields(self) -> list[Tensor]:
        fields = [self.inner[self.cur], self.inner[1 - self.cur]]
        return fields + (self.cpml.state if self.cpml is not None else [])

    def _state_views(self, flat: Tensor) -> list[Tensor]:
        """``flat`` (``[S, state_numel]``) cut into views shaped like the state's fields."""
        views, off = [], 0
        for t, n in zip(self._state_fields(), self._state_parts):
            views.append(flat[:, off:off + n].view(t.shape))
            off += n
        return views

    def save_state(self, into: Tensor) -> None:
        """Copy the state into ``into`` (``[S, state_numel]``, from ``empty_state``)."""
        for dst, src in zip(self._state_views(into), self._state_fields()):
            dst.copy_(src)

    def load_state(self, state: Tensor | None) -> None:
        """Restore a state saved by ``save_state`` (``None``: the zero initial state)."""
        self.cur = 0
        if state is None:
            self.reset()
            return
        for src, dst in zip(self._state_views(state), self._state_fields()):
            dst.copy_(src)

    def forward(
        self, slot: Callable[[int], Tensor | None], commit: Callable[[int], None],
        after: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Run all steps from rest, recording receivers; returns data ``[S, R, N]``.

        ``slot(n)`` says where to write ``a_n`` (``None``: scratch); ``commit(n)`` is
        called once it is written; ``after(n)`` once the state holds ``p_{n+1}``.
        """
        self.reset()
        s, n_steps = self.shots, self.n_steps
        rec = torch.empty((n_steps, s, self.rec_index_p.shape[1]), dtype=self.dtype,
                          device=self.device)
        for n in range(n_steps):
            out = slot(n)
            self.step(n, out, rec[n])
            if out is not None:
                commit(n)
            if after is not None:
                after(n)
        data = (rec.view(n_steps, s, self.n_rec, self.k_corners) * self.rec_weight).sum(-1)
        return data.permute(1, 2, 0)

    # ----------------------------------------------------------------- adjoint
    def adjoint(
        self, grad_data: Tensor, history: Callable[[int], Tensor | None] | None,
        want_wavelet: bool,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Run the adjoint recursion backwards in time.

        Args:
            grad_data: ``dJ/dd``, ``[S, R, N]``.
            history: ``history(n)`` returns ``a_n`` (or an estimate), or ``None`` to skip
                step ``n``; called for ``n = N-1, ..., 0`` in that order. ``None``: no
                velocity gradient.
            want_wavelet: Whether to form the gradient with respect to the wavelet.

        Returns:
            ``sum_n a_n * b_n`` per shot (``[S, *D]``, unscaled) or ``None``, and the
            wavelet gradient ``[S, N]`` or ``None``.
        """
        s, n_steps, dom = self.shots, self.n_steps, self.dom
        h = self.halo
        g = (grad_data.to(self.dtype).permute(2, 0, 1)[..., None] * self.rec_weight)
        g = g.reshape(n_steps, s, -1).contiguous()
        q = [torch.zeros((s, *dom), dtype=self.dtype, device=self.device) for _ in range(2)]
        tmp = torch.zeros((s, *self.pad), dtype=self.dtype, device=self.device)
        tmp_inner = tmp[(slice(None),) + tuple(slice(h, h + n) for n in dom)]
        tmp_views = self._stencil_views(tmp)
        acc = (torch.zeros((s, *dom), dtype=self.dtype, device=self.device)
               if history is not None else None)
        b = torch.empty((s, *dom), dtype=self.dtype, device=self.device)
        gw = (torch.empty((n_steps, s, self.src_index_d.shape[1]), dtype=self.dtype,
                          device=self.device) if want_wavelet else None)
        if self.cpml is not None:
            self.cpml.adjoint_setup()
        na = 0
        for n in range(n_steps - 1, -1, -1):
            q1, new = q[na], q[1 - na]  # lambda_{n+2}; storage of lambda_{n+3}
            torch.mul(q1, self.Cm, out=tmp_inner)
            new.mul_(self.Bn)
            self._apply_laplacian(tmp_views, new, accumulate=True)
            if self.cpml is not None:
                self.cpml.adjoint_terms(tmp, new)
            new.addcmul_(self.A, q1)
            new.view(s, -1).scatter_add_(1, self.rec_index_d, g[n])
            na = 1 - na  # q[na] = lambda_{n+1}
            if gw is not None:
                torch.gather(new.view(s, -1), 1, self.src_index_d, out=gw[n])
            if acc is not None and history is not None:
                a = history(n)
                if a is not None:
                    torch.mul(new, self.C, out=b)
                    acc.addcmul_(a, b)
        grad_w = None
        if gw is not None:
            grad_w = (gw * self.src_scale[None]).sum(-1).t()
        return acc, grad_w
