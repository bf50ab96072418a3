"""Random test vectors: the one place backprobe draws probes (shared with ``Probe``).

Every draw uses a private ``torch.Generator``; the global RNG is touched at most once, to
seed a generator when the caller gives neither a generator nor a seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from backprobe._random import private_generator

DISTRIBUTIONS = ("rademacher", "gaussian", "sphere", "uniform")


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A generator from ``generator`` (returned as is), a seed (an int), or ``None``.

    ``None`` seeds a fresh private generator with one draw from the global RNG, so
    ``torch.manual_seed`` still makes a run reproducible.

    Raises:
        TypeError: anything else.
    """
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None or (isinstance(generator, int) and not isinstance(generator, bool)):
        return private_generator(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got "
                    f"{type(generator).__name__}")


def check_distribution(distribution: str) -> str:
    """Return ``distribution`` or raise a ``ValueError`` naming the valid ones."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution


def draw_probes(
    shape: tuple[int, ...], distribution: str, generator: torch.Generator,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, dim: int = -1,
) -> Tensor:
    """I.i.d. probes with ``E[z z^T] = I`` along ``dim``.

    * ``"rademacher"``: random signs, from packed random bits (32 per 32-bit draw, about 5x
      cheaper than ``randn`` on CPU);
    * ``"gaussian"``: standard normal entries;
    * ``"uniform"``: U(-0.5, 0.5) scaled by ``sqrt(12)`` (unit variance);
    * ``"sphere"``: Gaussian vectors along ``dim`` rescaled to norm ``sqrt(d)`` (uniform on
      the sphere of radius ``sqrt(d)``; for trace estimation its variance is below the
      Gaussian's, ``2 (d/(d+2)) (||A||_F^2 - tr(A)^2/d)``).

    Args:
        shape: output shape.
        distribution: one of :data:`DISTRIBUTIONS`.
        generator: private generator (on ``device``, or a CPU generator for CPU draws).
        device: device of the result.
        dtype: dtype of the result.
        dim: the probe-vector axis (only matters for ``"sphere"``).

    Returns:
        Probes of ``shape``.
    """
    check_distribution(distribution)
    if distribution in ("gaussian", "sphere"):
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if distribution == "sphere":
            d = z.shape[dim]
            z = z * (math.sqrt(d) / torch.linalg.vector_norm(z, dim=dim, keepdim=True))
        return z
    if distribution == "uniform":
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return u.sub_(0.5).mul_(math.sqrt(12.0))
    n = math.prod(shape)
    words = rademacher_words(n, generator, device)
    return rademacher_signs(words, 0, n, dtype).reshape(shape)


def rademacher_words(n: int, generator: torch.Generator, device: torch.device | str | None
                     ) -> Tensor:
    """The packed random bits behind ``n`` Rademacher signs: ``ceil(n / 32)`` int32 words.

    :func:`draw_probes` draws its Rademacher probes from exactly these words, so a caller
    keeping the words (1 bit per sign) and unpacking a range at a time with
    :func:`rademacher_signs` gets the same signs from the same generator state.
    """
    return torch.randint(-(2**31), 2**31, ((n + 31) // 32,), generator=generator,
                         device=device, dtype=torch.int32)


def rademacher_signs(words: Tensor, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """Signs ``start .. stop`` (flat) of :func:`rademacher_words`' words, as ``+-1`` in ``dtype``.

    Bit ``i % 32`` of word ``i // 32`` gives sign ``i``; only the words covering the range
    are unpacked.
    """
    first = start // 32
    part = words[first:(stop + 31) // 32]
    shifts = torch.arange(32, device=words.device, dtype=torch.int32)
    bits = ((part.unsqueeze(-1) >> shifts) & 1).reshape(-1)
    return bits[start - 32 * first:stop - 32 * first].to(dtype).mul_(2).sub_(1)


def draw_block(
    n: int, k: int, distribution: str, generator: torch.Generator, dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """``k`` probes of length ``n`` as columns ``[n, k]``, drawn on the generator's device."""
    z = draw_probes((k, n), distribution, generator, generator.device, dtype, dim=-1)
    return z.mT.to(device)


def orthonormalise(z: Tensor) -> Tensor:
    """Orthonormalise probe rows ``z[..., r, Q]`` in blocks of at most ``Q``, scaled by sqrt(Q).

    The Q factor is sign-fixed (positive diagonal of R), so it is equivariant under signed
    permutations of the domain; for i.i.d. symmetric entries ``E[q q^T]`` is then a multiple
    of the identity and ``E[z^T z] / r = I`` still holds. With ``r = Q`` the projection is
    the identity.
    """
    q_dim = z.shape[-1]
    blocks = []
    for start in range(0, z.shape[-2], q_dim):
        q, rr = torch.linalg.qr(z[..., start:start + q_dim, :].mT)
        sign = torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        blocks.append((q * sign.unsqueeze(-2)).mT)
    return torch.cat(blocks, dim=-2) * math.sqrt(q_dim)
