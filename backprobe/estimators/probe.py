"""Probed weight gradients by randomized trace estimation (XConv, Louboutin et al. 2022).

Forward keeps a sketch ``Z^T x`` (``r`` numbers per sketched row) and an integer seed;
backward redraws the probes ``Z`` from that seed and forms

    dW ~ (1/r) sum_j sum_n <x[n], z_j> * corr(g[n], z_j)

where ``corr(g, z)`` is the weight gradient the layer would give for input ``z``: the exact
formula applied to the projection ``x_hat = (1/r) Z Z^T x``. Because ``E[z z^T] = I``,
``E[x_hat] = x`` and the estimate is unbiased, whatever the layer's stride, dilation,
groups or padding (torch's own convolution backward evaluates ``corr`` exactly, borders
included; probes live on the unpadded input, so zero padding costs no variance).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from backprobe.estimators import _shaping
from backprobe.estimators._base import Estimator, RandomEstimator
from backprobe.layers import AffineOp, module_types
from backprobe.layers._base import chunks
from backprobe.linalg._probes import (
    draw_probes,
    orthonormalise,
    rademacher_signs,
    rademacher_words,
)

DISTRIBUTIONS = ("rademacher", "gaussian", "uniform")  # of linalg's, those Probe offers
MODES = ("channel", "joint", "auto")
SHAPINGS = (None, "dct")


class Signs:
    """Rademacher signs ``[rows, 1, Q]`` kept as packed random bits, unpacked a chunk at a time.

    The same draw as ``draw_probes((rows, 1, Q), "rademacher", generator)`` (the same words,
    :func:`backprobe.linalg._probes.rademacher_words`), but held in ``rows * Q / 8`` bytes
    instead of a float tensor of ``rows * Q`` numbers (in joint mode, the input's size).

    Args:
        rows: sketched rows ``B``.
        q: probe domain ``Q``.
        generator: private generator (on ``device``, or a CPU generator for CPU draws).
        device: device of the signs.
    """

    def __init__(self, rows: int, q: int, generator: torch.Generator,
                 device: torch.device) -> None:
        self.q = q
        self.words = rademacher_words(rows * q, generator, device)

    def rows(self, sl: slice, dtype: torch.dtype) -> Tensor:
        """The signs of rows ``sl`` (a step-1 slice) as ``[len, 1, Q]`` in ``dtype``."""
        signs = rademacher_signs(self.words, sl.start * self.q, sl.stop * self.q, dtype)
        return signs.reshape(-1, 1, self.q)


def draw(seed: int, num_probes: int, rows: int, q: int, distribution: str, orthogonal: bool,
         per_sample: bool, dtype: torch.dtype, device: torch.device
         ) -> tuple[Tensor, Signs | None]:
    """Probes ``z [num_probes, q]`` and, with ``per_sample``, per-row sign flips.

    The same seed and shapes always give the same draw (forward and backward).
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    z = draw_probes((num_probes, q), distribution, gen, device, dtype)
    if orthogonal:
        z = orthonormalise(z)
    return z, (Signs(rows, q, gen, device) if per_sample else None)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sketches accumulate in float32 for half-precision inputs."""
    if not dtype.is_floating_point:
        raise TypeError(f"Probe needs a floating-point input, got {dtype}")
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class Probe(RandomEstimator):
    """Unbiased low-memory weight gradient from ``num_probes`` random probes.

    Shapes (batch ``N``, input channels ``C``, input positions ``P``): ``mode="channel"``
    sketches each input channel over positions and keeps ``N * C * r`` numbers;
    ``mode="joint"`` sketches channels and positions together (the paper's multi-channel
    estimator) and keeps ``N * r``; ``mode="auto"`` uses channel mode where it keeps fewer
    numbers than the input and joint mode elsewhere (small late feature maps). On
    ``nn.Linear`` the features are the domain and it keeps ``r`` numbers per row (``N * r``
    for a ``[N, D]`` input), in every mode. Plus one int64 seed per call.

    Estimate: ``dW = (1/r) sum_{n,j} <x[n], z_nj> corr(g[n], z_nj)``, i.e. the exact formula
    on the projection ``x_hat[n] = (1/r) sum_j <x[n], z_nj> z_nj``; unbiased because the
    probes are independent of ``x`` and ``g`` and ``E[z z^T] = I``. Variance shrinks as
    ``1/r``. ``orthogonal=True`` orthonormalises the probe block (exact once ``r`` reaches
    the domain size). Input and bias gradients stay exact.

    Per-example probes (``per_sample=True``, the default) are one shared probe set with
    independent random sign flips per example, ``z_nj = d_n * z_j`` (``d_n`` Rademacher).
    For the symmetric distributions offered, each example's probes are then i.i.d. from the
    chosen distribution, and estimates from different examples are uncorrelated
    (``E[estimate_n | z] = exact_n``): the variance of fully independent probes, from
    ``(N + r) * Q`` random numbers instead of ``N * r * Q``, and with sketch and projection
    as single matrix products. ``per_sample=False`` shares the probes across the batch:
    estimates of different examples are correlated (more variance), but backward is
    cheaper (below).

    Randomness: the estimator owns a ``torch.Generator`` seeded once at construction from
    the global RNG (or from ``seed``). Forward draws an integer seed from it and keeps only
    the sketch and that seed (one 0-d int64 tensor, 8 bytes); backward redraws the probes
    on the tensor's device. The global RNG is never touched after construction.

    Compute: with shared probes backward evaluates all correlations as one convolution
    backward of cost ``r/C`` of the exact one (channel mode, ``r <= C``) or ``r/N`` (joint
    mode, ``r < N``); with per-example probes in channel mode (``r < C``, one group) as one
    grouped convolution backward over the examples' probe images, again ``r/C`` of the
    exact cost; otherwise it costs one exact weight gradient on ``x_hat``.

    Memory beyond the sketch: forward and backward run over the batch in chunks of about
    ``backprobe.layers._base.CHUNK_BYTES`` (8 MiB), so the flipped input, the probe images
    and the reconstruction ``x_hat`` exist only a chunk at a time; the per-example sign
    flips are kept as packed bits (``rows * Q / 8`` bytes) for the duration of a call.

    Args:
        num_probes: probes ``r`` per sketch (>= 1).
        distribution: ``"rademacher"``, ``"gaussian"`` or ``"uniform"``.
        mode: ``"channel"``, ``"joint"`` or ``"auto"`` (see above).
        per_sample: independent probes for each example (sign-flipped, see above).
        orthogonal: orthonormalised probe blocks.
        seed: seed of the private generator (default: drawn from the global RNG).
        shaping: ``None`` (plain probes) or ``"dct"``: spectrally shaped probes. Each layer
            keeps a running power spectrum ``lambda`` of its input in a fixed orthogonal
            basis ``Phi`` (separable DCT-II over positions; the standard basis for Linear
            features), buffers ``probe_spectrum``/``probe_spectrum_updates`` in its
            ``state_dict``. Forward keeps ``Z^T D Phi^T x`` with
            ``D = diag(lambda^(-1/4))`` (``r`` numbers per row, as before); backward uses
            ``x_hat = Phi D^{-1} (1/r) Z Z^T D Phi^T x``, unbiased for any spectrum fixed
            independently of the probes since ``E[Z Z^T] = r I``. Plain probes until the
            layer's first update. Details: :mod:`backprobe.estimators._shaping`.
        deflate: with shaping, keep the ``deflate`` coefficients of highest running energy
            of each row exactly and probe the rest with ``num_probes - deflate`` probes
            (numbers kept per row stay ``num_probes``).
        momentum: with shaping, the running spectrum's update weight (as BatchNorm's).

    Raises:
        ValueError: on ``num_probes < 1``, an unknown distribution, mode or shaping,
            ``deflate`` outside ``[0, num_probes)`` or without shaping, or ``momentum``
            outside ``(0, 1]``.

    Example:
        >>> import torch, backprobe
        >>> torch.manual_seed(0)
        >>> conv = backprobe.nn.Conv2d(16, 16, 3, padding=1, estimator=backprobe.Probe(8))
        >>> conv(torch.randn(4, 16, 32, 32)).square().sum().backward()  # unbiased conv.weight.grad
    """

    natural_layers = module_types("affine", shares_weights=True)
    saves_memory = True

    def __init__(
        self, num_probes: int, *, distribution: str = "rademacher", mode: str = "channel",
        per_sample: bool = True, orthogonal: bool = False, seed: int | None = None,
        shaping: str | None = None, deflate: int = 0, momentum: float = 0.1,
    ) -> None:
        if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"Probe: num_probes must be an integer >= 1, got {num_probes!r}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"Probe: unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}"
            )
        if mode not in MODES:
            raise ValueError(f"Probe: unknown mode {mode!r}; choose one of {MODES}")
        if shaping not in SHAPINGS:
            raise ValueError(f"Probe: unknown shaping {shaping!r}; choose one of {SHAPINGS}")
        if isinstance(deflate, bool) or not isinstance(deflate, int) or not (
            0 <= deflate < num_probes
        ):
            raise ValueError(
                f"Probe: deflate must be an integer in [0, num_probes), got {deflate!r}"
            )
        if deflate and shaping is None:
            raise ValueError("Probe: deflate needs shaping='dct' (it ranks the running spectrum)")
        if not 0.0 < float(momentum) <= 1.0:
            raise ValueError(f"Probe: momentum must be in (0, 1], got {momentum!r}")
        self.shaping, self.deflate, self.momentum = shaping, deflate, float(momentum)
        self.num_probes = num_probes
        self.distribution = distribution
        self.mode = mode
        self.per_sample = bool(per_sample)
        self.orthogonal = bool(orthogonal)
        super().__init__(seed)

    # -- randomness ----------------------------------------------------------------------
    def _draw(
        self, seed: int, rows: int, domain: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Signs | None]:
        """Probes ``z [r, domain]`` and per-row sign flips ``[rows, 1, domain]`` (or ``None``).

        The same seed and shapes always give the same draw (forward and backward).
        """
        return draw(seed, self.num_probes, rows, domain, self.distribution, self.orthogonal,
                    self.per_sample, dtype, device)

    # -- estimator interface -------------------------------------------------------------
    def _view(self, op: AffineOp, x: Tensor) -> Tensor:
        """``x`` as ``[rows, sketches per row, domain]`` for this estimator's mode."""
        if self.mode != "auto":
            return op.probe_view(x, self.mode)
        xv = op.probe_view(x, "channel")
        return xv if xv.shape[2] > self.num_probes else op.probe_view(x, "joint")

    def saved_numbers(self, op: AffineOp, x: Tensor) -> int:
        b, c, _ = self._view(op, x).shape
        return b * c * self.num_probes

    def worthwhile(self, op: AffineOp, x: Tensor) -> bool:
        """Whether probing keeps fewer numbers than the exact path (the input) for ``x``."""
        return self.saved_numbers(op, x) < x.numel()

    def pack(self, op: AffineOp, x: Tensor) -> tuple[tuple[Tensor, ...], Any]:
        cdt = _compute_dtype(x.dtype)
        xv = self._view(op, x)
        rows, chans, q = xv.shape
        seed = self.next_seed()
        z, signs = self._draw(seed, rows, q, cdt, x.device)
        sketch = sketch_rows(xv, z, signs, cdt)
        # The seed travels as a (0-d int64) tensor beside the sketch: under activation
        # checkpointing the recomputed forward refills saved tensors, not ctx attributes,
        # and a fresh sketch must meet its own seed.
        seed_t = torch.tensor(seed, dtype=torch.int64)
        return (sketch, seed_t), tuple(op.rows(x).shape)

    def weight_grad(self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor) -> Tensor:
        (sketch, seed_t), row_shape = saved, meta
        rows, chans, r = sketch.shape
        g = op.rows(g)
        z, signs = self._draw(int(seed_t), rows, math.prod(row_shape[1:]) // chans,
                              sketch.dtype, g.device)
        if signs is None:
            g_c = g.to(sketch.dtype)
            if chans > 1:  # channel mode: the op's correlation path, if it has one
                fast = op.shared_probe_weight_grad(sketch, z, row_shape, g_c)
                if fast is not None:
                    return fast
            elif r < rows:
                return self._joint_shared(op, sketch, z, row_shape, g_c)
        elif chans > 1:  # per-example probes: correlations with the probe images
            def probes(sl: slice) -> Tensor:
                assert signs is not None
                return signs.rows(sl, z.dtype) * z

            fast = op.per_example_probe_weight_grad(sketch, probes, row_shape, g)
            if fast is not None:
                return fast

        def reconstruct(sl: slice) -> Tensor:
            x_hat = (sketch[sl] @ z).div_(r)
            return x_hat if signs is None else x_hat.mul_(signs.rows(sl, x_hat.dtype))

        return chunked_weight_grad(op, reconstruct, rows, row_shape, g, sketch.dtype)

    @staticmethod
    def _joint_shared(
        op: AffineOp, sketch: Tensor, z: Tensor, row_shape: tuple[int, ...], g: Tensor
    ) -> Tensor:
        """One probe set for the batch: ``dW = (1/r) sum_j corr(sum_n s[n, j] g[n], z_j)``.

        The ``r`` correlations run a chunk of probes at a time (``r < rows`` here, so the
        mixed gradients ``g_tilde`` are smaller than ``g``).
        """
        rows, _, r = sketch.shape
        g_tilde = (sketch[:, 0, :].mT @ g.reshape(rows, -1)).reshape(r, *g.shape[1:])
        gw = chunked_weight_grad(op, lambda sl: z[sl], r, (r, *row_shape[1:]), g_tilde,
                                 z.dtype)
        return gw.div_(r)

    # -- shaping: per-layer spectrum buffers (backprobe.estimators._shaping) ---------------
    def for_module(self, module: nn.Module) -> Estimator:
        """``self``, or with ``shaping`` an estimator bound to ``module``'s spectrum."""
        if self.shaping is None:
            return self
        _shaping.register(module)
        return _shaping.ShapedProbe(self, module)

    def attach(self, module: nn.Module) -> nn.Module:
        """With ``shaping``: give ``module`` (or each of its layers using ``self``) buffers."""
        if self.shaping is not None:
            for m in module.modules():
                if getattr(m, "estimator", None) is self and hasattr(m, "weight"):
                    _shaping.register(m)
        return module

    def detach(self, module: nn.Module) -> nn.Module:
        """Remove the spectrum buffers of ``module`` (it no longer uses this estimator)."""
        _shaping.unregister(module)
        return module

    def __repr__(self) -> str:
        shaped = "" if self.shaping is None else (
            f", shaping={self.shaping!r}, deflate={self.deflate}, momentum={self.momentum}"
        )
        return (
            f"Probe({self.num_probes}, distribution={self.distribution!r}, mode={self.mode!r}, "
            f"per_sample={self.per_sample}, orthogonal={self.orthogonal}{shaped})"
        )


def sketch_rows(xv: Tensor, z: Tensor, signs: Signs | None, dtype: torch.dtype) -> Tensor:
    """The sketch ``(d_n * x[n]) @ z^T`` ``[B, C, r]`` of rows ``xv [B, C, Q]``.

    Without signs or a cast this is one matrix product on the input itself; otherwise the
    flipped (or cast) copy exists only for a chunk of rows at a time.
    """
    rows, chans, q = xv.shape
    zt = z.mT
    if signs is None and xv.dtype == dtype:
        return xv @ zt
    itemsize = torch.empty((), dtype=dtype).element_size()
    parts = []
    for sl in chunks(rows, q * (chans * itemsize + 8)):
        part = xv[sl].to(dtype, copy=True)
        if signs is not None:
            part.mul_(signs.rows(sl, dtype))
        parts.append(part @ zt)  # (not out=: torch.func's wrapped tensors refuse it)
        del part
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def chunked_weight_grad(
    op: AffineOp, reconstruct: Any, rows: int, row_shape: tuple[int, ...], g: Tensor,
    dtype: torch.dtype,
) -> Tensor:
    """``sum`` over chunks of rows of ``op.weight_grad(x_hat[chunk], g[chunk])``.

    Args:
        op: the layer's op.
        reconstruct: ``slice -> x_hat`` of those rows, ``[len, C, Q]`` (any view of a
            ``[len, *row_shape[1:]]`` tensor).
        rows: rows ``B`` (``g``'s first dim, ``g`` already in ``op.rows`` form).
        row_shape: shape of ``op.rows(x)``.
        g: the output gradient in ``op.rows`` form.
        dtype: compute dtype (``g`` is cast a chunk at a time).

    Returns:
        The weight gradient in the weight's layout. Only one chunk's ``x_hat`` (about
        ``CHUNK_BYTES``) and the op's workspace for it exist at once.
    """
    per_row = math.prod(row_shape[1:]) * torch.empty((), dtype=dtype).element_size()
    gw: Tensor | None = None
    for sl in chunks(rows, per_row):
        x_hat = reconstruct(sl).reshape(-1, *row_shape[1:])
        part = op.weight_grad(x_hat, g[sl].to(dtype))
        del x_hat
        gw = part if gw is None else gw.add_(part)
    assert gw is not None
    return gw
