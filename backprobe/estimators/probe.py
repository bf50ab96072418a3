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
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from backprobe.estimators._base import Estimator
from backprobe.layers import AffineOp, ConvOp

DISTRIBUTIONS = ("rademacher", "gaussian", "uniform")
MODES = ("channel", "joint")
_CHUNK_ELEMENTS = 1 << 24  # probes drawn at once when they are independent per example
_SEED_HIGH = 2**62


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sketches accumulate in float32 for half-precision inputs."""
    if not dtype.is_floating_point:
        raise TypeError(f"Probe needs a floating-point input, got {dtype}")
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def draw_probes(
    shape: tuple[int, ...], distribution: str, generator: torch.Generator,
    device: torch.device, dtype: torch.dtype,
) -> Tensor:
    """Draw i.i.d. probe entries with mean 0 and variance 1.

    Rademacher signs come from packed random bits (32 per draw), about 5x cheaper than
    ``randn`` on CPU; uniform is U(-0.5, 0.5) scaled by sqrt(12) (the paper's choice).
    """
    if distribution == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if distribution == "uniform":
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return u.sub_(0.5).mul_(math.sqrt(12.0))
    n = math.prod(shape)
    words = torch.randint(
        -(2**31), 2**31, ((n + 31) // 32,), generator=generator, device=device,
        dtype=torch.int32,
    )
    shifts = torch.arange(32, device=device, dtype=torch.int32)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(-1)[:n].reshape(shape).to(dtype).mul_(2).sub_(1)


def orthonormalise(z: Tensor) -> Tensor:
    """Orthonormalise probe rows ``z[b, :, Q]`` in blocks of at most ``Q``, scaled by sqrt(Q).

    The Q factor is sign-fixed (positive diagonal of R), so it is equivariant under signed
    permutations of the domain; for i.i.d. symmetric entries ``E[q q^T]`` is then a multiple
    of the identity and ``E[z^T z] / r = I`` still holds. With ``r = Q`` the projection is
    the identity: the estimate is exact.
    """
    q_dim = z.shape[-1]
    blocks = []
    for start in range(0, z.shape[-2], q_dim):
        q, rr = torch.linalg.qr(z[..., start:start + q_dim, :].mT)
        sign = torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        blocks.append((q * sign.unsqueeze(-2)).mT)
    return torch.cat(blocks, dim=-2) * math.sqrt(q_dim)


class Probe(Estimator):
    """Unbiased low-memory weight gradient from ``num_probes`` random probes.

    Shapes (batch ``N``, input channels ``C``, input positions ``P``): ``mode="channel"``
    sketches each input channel over positions and keeps ``N * C * r`` numbers;
    ``mode="joint"`` sketches channels and positions together (the paper's multi-channel
    estimator) and keeps ``N * r``. On ``nn.Linear`` the features are the domain and it
    keeps ``r`` numbers per row (``N * r`` for a ``[N, D]`` input), in either mode.

    Estimate: ``dW = (1/r) sum_{n,j} <x[n], z_j> corr(g[n], z_j)``; unbiased because the
    probes are independent of ``x`` and ``g`` and ``E[z z^T] = I``. Variance shrinks as
    ``1/r``; ``per_sample=True`` draws independent probes per example (less variance, same
    memory); ``orthogonal=True`` orthonormalises probe blocks (exact once ``r`` reaches the
    domain size). Input and bias gradients stay exact.

    Randomness: the estimator owns a ``torch.Generator`` seeded once at construction from
    the global RNG (or from ``seed``). Forward draws an integer seed from it and keeps only
    the sketch and that seed (one 0-d int64 tensor, 8 bytes); backward redraws the probes
    on the tensor's device. The global
    RNG is never touched after construction.

    Compute: with one probe set per batch (``per_sample=False``) backward evaluates all
    correlations as one convolution backward of cost ``r/C`` of the exact one (channel mode)
    or ``r/N`` (joint mode); with per-example probes it costs about as much as exact.

    Args:
        num_probes: probes ``r`` per sketch (>= 1).
        distribution: ``"rademacher"``, ``"gaussian"`` or ``"uniform"``.
        mode: ``"channel"`` or ``"joint"`` (see above).
        per_sample: independent probes for each example.
        orthogonal: orthonormalised probe blocks.
        seed: seed of the private generator (default: drawn from the global RNG).

    Raises:
        ValueError: on ``num_probes < 1`` or an unknown distribution or mode.

    Example:
        >>> import torch, backprobe
        >>> torch.manual_seed(0)
        >>> conv = backprobe.nn.Conv2d(16, 16, 3, padding=1, estimator=backprobe.Probe(8))
        >>> conv(torch.randn(4, 16, 32, 32)).square().sum().backward()  # unbiased conv.weight.grad
    """

    natural_layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def __init__(
        self, num_probes: int, *, distribution: str = "rademacher", mode: str = "channel",
        per_sample: bool = True, orthogonal: bool = False, seed: int | None = None,
    ) -> None:
        if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"Probe: num_probes must be an integer >= 1, got {num_probes!r}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"Probe: unknown distribution {distribution!r}; choose one of {DISTRIBUTIONS}"
            )
        if mode not in MODES:
            raise ValueError(f"Probe: unknown mode {mode!r}; choose one of {MODES}")
        self.num_probes = num_probes
        self.distribution = distribution
        self.mode = mode
        self.per_sample = bool(per_sample)
        self.orthogonal = bool(orthogonal)
        if seed is None:
            seed = int(torch.randint(0, _SEED_HIGH, ()).item())
        self._generator = torch.Generator()
        self._generator.manual_seed(seed)

    # -- randomness ----------------------------------------------------------------------
    def _next_seed(self) -> int:
        return int(torch.randint(0, _SEED_HIGH, (), generator=self._generator).item())

    def _probes(
        self, seed: int, rows: int, domain: int, dtype: torch.dtype, device: torch.device
    ) -> Iterator[tuple[int, int, Tensor]]:
        """Yield ``(start, stop, z)``: probes ``[stop - start or 1, r, domain]`` for rows.

        The same seed and shapes always give the same sequence (forward and backward).
        """
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        r = self.num_probes
        per = max(1, _CHUNK_ELEMENTS // (r * domain)) if self.per_sample else rows
        for start in range(0, rows, per):
            stop = min(rows, start + per)
            b = stop - start if self.per_sample else 1
            z = draw_probes((b, r, domain), self.distribution, gen, device, dtype)
            yield start, stop, orthonormalise(z) if self.orthogonal else z

    # -- estimator interface -------------------------------------------------------------
    def saved_numbers(self, op: AffineOp, x: Tensor) -> int:
        b, c, _ = op.probe_view(x, self.mode).shape
        return b * c * self.num_probes

    def worthwhile(self, op: AffineOp, x: Tensor) -> bool:
        """Whether probing keeps fewer numbers than the exact path (the input) for ``x``."""
        return self.saved_numbers(op, x) < x.numel()

    def pack(self, op: AffineOp, x: Tensor) -> tuple[tuple[Tensor, ...], Any]:
        cdt = _compute_dtype(x.dtype)
        xv = op.probe_view(x, self.mode)
        rows, chans, domain = xv.shape
        seed = self._next_seed()
        if not self.per_sample:
            (_, _, z), = self._probes(seed, rows, domain, cdt, x.device)
            sketch = xv.to(cdt) @ z[0].mT
        else:
            sketch = torch.empty(rows, chans, self.num_probes, dtype=cdt, device=x.device)
            for start, stop, z in self._probes(seed, rows, domain, cdt, x.device):
                sketch[start:stop] = xv[start:stop].to(cdt) @ z.mT
        # The seed travels as a (0-d int64) tensor beside the sketch: under activation
        # checkpointing the recomputed forward refills saved tensors, not ctx attributes,
        # and a fresh sketch must meet its own seed.
        seed_t = torch.tensor(seed, dtype=torch.int64)
        return (sketch, seed_t), tuple(op.rows(x).shape)

    def weight_grad(self, op: AffineOp, saved: tuple[Tensor, ...], meta: Any, g: Tensor) -> Tensor:
        (sketch, seed_t), row_shape = saved, meta
        seed = int(seed_t)
        rows, chans, r = sketch.shape
        g = op.rows(g.to(sketch.dtype))
        if chans > 1:  # conv, channel mode
            assert isinstance(op, ConvOp)
            if r <= row_shape[1] // op.groups:
                return self._correlate(op, sketch, seed, row_shape, g)
        elif not self.per_sample and r < rows:
            return self._joint_shared(op, sketch, seed, row_shape, g)
        return self._reconstruct(op, sketch, seed, row_shape, g)

    def _correlate(
        self, op: ConvOp, sketch: Tensor, seed: int, row_shape: tuple[int, ...],
        g: Tensor,
    ) -> Tensor:
        """Channel mode: ``H[n, o, j, k] = corr(g[n, o], z_j)[k]`` as one conv backward.

        Probes are the input channels of a batch-1 convolution whose output channels are
        ``(n, o)``; per-example probes make it a grouped one (groups = examples).
        """
        n, c_in, r = sketch.shape
        c_out, out_sp = g.shape[1], g.shape[2:]
        parts = []
        domain = math.prod(row_shape[2:])
        for start, stop, z in self._probes(seed, n, domain, sketch.dtype, g.device):
            b = z.shape[0]
            gk = g[start:stop].reshape(1, (stop - start) * c_out, *out_sp)
            parts.append(op.weight_grad(z.reshape(1, b * r, *row_shape[2:]), gk, groups=b))
        h = torch.cat(parts).reshape(n, c_out, r, op.kernel_numel)
        full = torch.einsum("nij,nojk->oik", sketch, h).div_(r)
        return op.weight_from_matrix(full.reshape(c_out, c_in * op.kernel_numel))

    def _joint_shared(
        self, op: AffineOp, sketch: Tensor, seed: int, row_shape: tuple[int, ...],
        g: Tensor,
    ) -> Tensor:
        """One probe set for the batch: ``dW = (1/r) sum_j corr(sum_n s[n, j] g[n], z_j)``."""
        rows, _, r = sketch.shape
        (_, _, z), = self._probes(seed, rows, math.prod(row_shape[1:]), sketch.dtype, g.device)
        g_tilde = sketch[:, 0, :].mT @ g.reshape(rows, -1)
        gw = op.weight_grad(z.reshape(r, *row_shape[1:]), g_tilde.reshape(r, *g.shape[1:]))
        return gw.div_(r)

    def _reconstruct(
        self, op: AffineOp, sketch: Tensor, seed: int, row_shape: tuple[int, ...],
        g: Tensor,
    ) -> Tensor:
        """Exact formula on the projection ``x_hat = (1/r) Z Z^T x``, chunked over rows."""
        rows, _, r = sketch.shape
        domain = math.prod(row_shape[1:]) // sketch.shape[1]
        gw: Tensor | None = None
        for start, stop, z in self._probes(seed, rows, domain, sketch.dtype, g.device):
            x_hat = (sketch[start:stop] @ z).div_(r).reshape(stop - start, *row_shape[1:])
            part = op.weight_grad(x_hat, g[start:stop])
            gw = part if gw is None else gw.add_(part)
        assert gw is not None
        return gw

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (
            f"Probe({self.num_probes}, distribution={self.distribution!r}, mode={self.mode!r}, "
            f"per_sample={self.per_sample}, orthogonal={self.orthogonal})"
        )
