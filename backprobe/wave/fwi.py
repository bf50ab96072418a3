"""Full-waveform inversion: the L2 misfit over shots, its gradient, preconditioning, the loop.

FWI fits a velocity model ``v`` to observed shot records ``d`` by minimising

    f(v) = 1/2 sum_s || F_s(v) - d_s ||^2,   lower <= v <= upper,

where ``F_s`` is :func:`backprobe.wave.model` for shot ``s``. The gradient is the adjoint-state
correlation that the imaging strategy forms (exactly with ``Exact()``/``Checkpoint``, as an
estimate with ``TimeProbe``/``DFT``), summed over shots. A typical run::

    survey = surface_survey((60, 120), dx=10.0, dt=1e-3, nt=800, freq=10.0, shots=16)
    d = simulate(v_true, survey)
    result = fwi(smooth(v_true, 6), survey, d, imaging=TimeProbe(32, "data"),
                 iterations=20, lower=1400.0, upper=4500.0,
                 precondition=Precondition(water_rows=6, source_radius=3))
    result.v, result.history

Shots are modelled in chunks of ``shots_per_batch`` (bounding memory: a strategy holds its
storage for one chunk at a time) and, under ``torchrun``, sharded across processes with the
misfit and gradient summed by one all-reduce (:mod:`backprobe.wave.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from backprobe.wave.distributed import all_reduce_sum, rank_and_world, shard
from backprobe.wave.optimize import SPG, Bounds, SPGState, lbfgsb
from backprobe.wave.survey import Survey, _chunks, simulate, surface_survey

__all__ = ["FWIResult", "Misfit", "Precondition", "Survey", "fwi", "model_error", "simulate",
           "surface_survey"]


@dataclass
class Precondition:
    """Source-side gradient preconditioning: a fixed mask times a depth scaling.

    ``g <- g * mute * ((z + 1) / nz)^depth_power`` with ``mute`` zero in the top
    ``water_rows`` rows (a known water layer stays fixed: with a zero gradient there, projected
    optimisers never move it) and, around every source, zero within ``source_radius`` cells,
    rising as ``sin^2`` to one at twice that distance (removes the source imprint).

    Attributes:
        water_rows: top rows whose gradient is zeroed.
        source_radius: mute radius in cells around each source (0: none).
        depth_power: exponent of the depth scaling (0: none; 1 or 2 compensate geometric
            spreading).
    """

    water_rows: int = 0
    source_radius: float = 0.0
    depth_power: float = 0.0
    _cache: dict[Any, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.water_rows < 0:
            raise ValueError(f"water_rows must be >= 0, got {self.water_rows}")
        if not (math.isfinite(self.source_radius) and self.source_radius >= 0):
            raise ValueError(f"source_radius must be >= 0, got {self.source_radius}")
        if not math.isfinite(self.depth_power):
            raise ValueError(f"depth_power must be finite, got {self.depth_power}")

    def weight(self, shape: Sequence[int], src_pos: torch.Tensor, *,
               dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
        """The multiplier ``mute * depth scaling`` for a grid ``shape`` (cached).

        Args:
            shape: ``(nz, nx)`` or ``(nz, ny, nx)``.
            src_pos: ``[shots, ndim]`` source positions (grid-index coordinates).
            dtype: result dtype.
            device: result device.

        Returns:
            ``shape``-shaped weights in ``[0, 1]``.
        """
        shape = tuple(int(s) for s in shape)
        key = (shape, tuple(src_pos.flatten().tolist()), dtype, str(device))
        if key in self._cache:
            return self._cache[key]
        axes = [torch.arange(n, dtype=torch.float64) for n in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        w = torch.ones(shape, dtype=torch.float64)
        if self.source_radius > 0 and src_pos.numel():
            pts = grid.reshape(-1, len(shape))
            dist = torch.cdist(pts, src_pos.detach().double().cpu()).min(dim=1).values
            ramp = ((dist.reshape(shape) - self.source_radius) / self.source_radius).clamp(0, 1)
            w = w * torch.sin(0.5 * math.pi * ramp) ** 2
        if self.depth_power:
            z = (axes[0] + 1.0) / shape[0]
            w = w * (z ** self.depth_power).reshape(-1, *([1] * (len(shape) - 1)))
        if self.water_rows:
            w[: self.water_rows] = 0.0
        out = w.to(dtype=dtype, device=device)
        self._cache[key] = out
        return out

    def __call__(self, g: torch.Tensor, src_pos: torch.Tensor) -> torch.Tensor:
        """``g`` times :meth:`weight` (a new tensor)."""
        return g * self.weight(g.shape, src_pos, dtype=g.dtype, device=g.device)


class Misfit:
    """``v -> (f, g)``: the L2 misfit over shots and its (preconditioned) gradient.

    ``f(v) = c/2 sum_s ||F_s(v) - d_s||^2`` summed over every shot of every process, with
    ``c = 1`` or, when ``normalize`` (the default), ``c = 1 / sum_s ||d_s||^2``: the squared
    misfit relative to the data's energy (``f = 1/2`` for zero predicted data), which makes
    optimiser tolerances meaningful whatever the data's amplitude; ``g = P(df/dv)`` with
    ``P`` the optional :class:`Precondition`. Each call models this
    process's shots in chunks of ``shots_per_batch`` (memory: one chunk's wavefield storage
    at a time), back-propagates each chunk's misfit through the imaging strategy, and sums;
    with a process group the local sums are all-reduced, so every process returns the same
    ``(f, g)``.

    Args:
        survey: the acquisition (all shots).
        observed: ``[shots, n_rec, nt]`` records of every shot.
        imaging: the imaging strategy (default ``Exact()``); one instance serves every chunk.
        shots_per_batch: shots per modelling call (default: all of this process's shots).
        precondition: gradient preconditioning, or ``None``.
        shots: the shots this process models (default: its :func:`shard` of all shots).
        group: the process group (default: the world, when one is initialised).
        normalize: divide by the observed data's energy ``sum ||d||^2`` (all shots).

    Attributes:
        scale: the factor ``c``.
        evaluations: calls so far.
        max_nbytes: the most bytes the imaging strategy held for one chunk so far.
        per_shot: the misfit of each local shot at the latest call (float64, ``[len(shots)]``).

    Raises:
        ValueError: when ``observed`` does not have the survey's shape.
    """

    def __init__(self, survey: Survey, observed: torch.Tensor, *, imaging: Any = None,
                 shots_per_batch: int | None = None, precondition: Precondition | None = None,
                 shots: Sequence[int] | None = None,
                 group: torch.distributed.ProcessGroup | None = None,
                 normalize: bool = True) -> None:
        if tuple(observed.shape) != survey.data_shape():
            raise ValueError(f"observed must have shape [shots, n_rec, nt] = "
                             f"{list(survey.data_shape())}, got {list(observed.shape)}")
        if shots_per_batch is not None and shots_per_batch < 1:
            raise ValueError(f"shots_per_batch must be >= 1, got {shots_per_batch}")
        if imaging is None:
            from backprobe.wave import Exact

            imaging = Exact()
        self.survey, self.observed, self.imaging = survey, observed, imaging
        self.shots_per_batch, self.precondition, self.group = shots_per_batch, precondition, group
        if shots is None:
            rank, world = rank_and_world(group)
            shots = shard(survey.n_shots, rank, world)
        self.shots = list(shots)
        if any(not 0 <= s < survey.n_shots for s in self.shots):
            raise ValueError(f"shots must be in [0, {survey.n_shots}), got {self.shots}")
        energy = float(observed.detach().double().pow(2).sum())
        if normalize and not energy > 0:
            raise ValueError("observed data are all zero: nothing to normalise by "
                             "(pass normalize=False)")
        self.scale = 1.0 / energy if normalize else 1.0
        self.evaluations = 0
        self.max_nbytes = 0
        self.per_shot = torch.zeros(len(self.shots), dtype=torch.float64)

    def __call__(self, v: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The misfit and its gradient at ``v``.

        Args:
            v: velocity ``[nz, nx]`` or ``[nz, ny, nx]`` (not modified).

        Returns:
            ``(f, g)``: the global misfit (float) and the gradient (``v``'s shape and dtype).
        """
        grad = torch.zeros_like(v)
        per_shot = []
        for chunk in _chunks(self.shots, self.shots_per_batch):
            sub = self.survey.select(chunk)
            obs = self.observed[torch.as_tensor(chunk)].to(device=v.device, dtype=v.dtype)
            vv = v.detach().clone().requires_grad_(True)
            pred = sub.model(vv, self.imaging, observed=obs)
            residual = pred - obs
            loss = (0.5 * self.scale) * (residual * residual).sum()
            loss.backward()
            self.max_nbytes = max(self.max_nbytes, int(self.imaging.nbytes()))
            assert vv.grad is not None
            grad += vv.grad
            per_shot.append(0.5 * self.scale
                            * residual.detach().double().pow(2).flatten(1).sum(1).cpu())
        self.per_shot = torch.cat(per_shot) if per_shot else torch.zeros(0, dtype=torch.float64)
        total = torch.tensor([float(self.per_shot.sum())], dtype=torch.float64, device=v.device)
        all_reduce_sum(total, self.group)
        all_reduce_sum(grad, self.group)
        if self.precondition is not None:
            grad = self.precondition(grad, self.survey.src_pos)
        self.evaluations += 1
        return float(total.item()), grad


def model_error(v: torch.Tensor, v_true: torch.Tensor) -> float:
    """Relative model error ``||v - v_true|| / ||v_true||`` (Frobenius norms)."""
    return float((v.double() - v_true.double()).norm() / v_true.double().norm())


@dataclass
class FWIResult:
    """What :func:`fwi` returns.

    Attributes:
        v: the inverted model.
        history: the misfit (normalised, see :class:`Misfit`) at the start and after each
            iteration.
        model_errors: :func:`model_error` at the start and after each iteration (empty
            without ``v_true``).
        evaluations: misfit-and-gradient evaluations (line searches included).
        max_nbytes: the most bytes the imaging strategy held for one chunk of shots.
        state: the optimiser's final state (:class:`SPGState`; ``None`` for L-BFGS-B).
    """

    v: torch.Tensor
    history: list[float]
    model_errors: list[float]
    evaluations: int
    max_nbytes: int
    state: SPGState | None = None


def fwi(v0: torch.Tensor, survey: Survey, observed: torch.Tensor, *, imaging: Any = None,
        iterations: int = 20, lower: Bounds = None, upper: Bounds = None,
        method: str = "spg", shots_per_batch: int | None = None,
        precondition: Precondition | None = None, first_step: float | None = None,
        memory: int = 10, v_true: torch.Tensor | None = None,
        callback: Callable[[int, torch.Tensor, float], None] | None = None,
        group: torch.distributed.ProcessGroup | None = None) -> FWIResult:
    """Box-constrained FWI from ``v0``: SPG (default) or L-BFGS-B on :class:`Misfit`.

    Under ``torchrun`` (a process group initialised, e.g. by
    :func:`backprobe.wave.distributed.init_from_env`) each process models its share of the
    shots and every process takes the same steps.

    Args:
        v0: start model ``[nz, nx]`` or ``[nz, ny, nx]`` (m/s).
        survey: the acquisition.
        observed: ``[shots, n_rec, nt]`` records.
        imaging: imaging strategy (default ``Exact()``).
        iterations: optimiser iterations (>= 1).
        lower: lower velocity bound (scalar or tensor), ``None`` for none.
        upper: upper velocity bound.
        method: ``"spg"`` or ``"lbfgsb"`` (needs SciPy).
        shots_per_batch: shots per modelling call.
        precondition: gradient preconditioning.
        first_step: the first update's size in m/s (largest cell); default 2 % of
            ``max(v0)``.
        memory: SPG's non-monotone memory or L-BFGS-B's number of corrections.
        v_true: the true model, to record :func:`model_error` per iteration.
        callback: called after each iteration with ``(iteration, v, misfit)``.
        group: process group for the all-reduce.

    Returns:
        :class:`FWIResult`.

    Raises:
        ValueError: for a bad ``method``, ``iterations``, shapes, or a non-finite or
            non-positive ``v0``.
    """
    if method not in ("spg", "lbfgsb"):
        raise ValueError(f"method must be 'spg' or 'lbfgsb', got {method!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not bool(torch.isfinite(v0).all()) or not bool((v0 > 0).all()):
        raise ValueError("v0 must be finite and positive everywhere")
    if v_true is not None and v_true.shape != v0.shape:
        raise ValueError(f"v_true must have v0's shape {tuple(v0.shape)}, "
                         f"got {tuple(v_true.shape)}")
    misfit = Misfit(survey, observed, imaging=imaging, shots_per_batch=shots_per_batch,
                    precondition=precondition, group=group)
    errors: list[float] = []
    if method == "spg":
        step0 = first_step if first_step is not None else 0.02 * float(v0.max())
        spg = SPG(lower, upper, memory=memory, first_step=step0)
        state = spg.init(v0, misfit)
        if v_true is not None:
            errors.append(model_error(state.x, v_true))
        for it in range(1, iterations + 1):
            state = spg.step(state, misfit)
            if v_true is not None:
                errors.append(model_error(state.x, v_true))
            if callback is not None:
                callback(it, state.x, state.f)
        return FWIResult(v=state.x, history=state.history, model_errors=errors,
                         evaluations=misfit.evaluations, max_nbytes=misfit.max_nbytes,
                         state=state)
    if v_true is not None:
        errors.append(model_error(v0.clamp(min=lower, max=upper)  # type: ignore[arg-type]
                                  if lower is not None or upper is not None else v0, v_true))

    def on_iteration(it: int, v: torch.Tensor, f: float) -> None:
        if v_true is not None:
            errors.append(model_error(v, v_true))
        if callback is not None:
            callback(it, v, f)

    step0 = first_step if first_step is not None else 0.02 * float(v0.max())
    v, history, _ = lbfgsb(misfit, v0, lower=lower, upper=upper, iterations=iterations,
                           memory=memory, first_step=step0, callback=on_iteration)
    return FWIResult(v=v, history=history, model_errors=errors,
                     evaluations=misfit.evaluations, max_nbytes=misfit.max_nbytes)
