"""Private random generators: the one way backprobe draws randomness.

Every randomized object (estimator, Monte-Carlo quantity, optimizer, imaging strategy, linalg
routine) takes ``generator=``: a ``torch.Generator`` (used as is), an int seed, or ``None``
for a private generator seeded once from the global RNG. Later draws never touch the global
RNG, and ``torch.manual_seed`` before construction makes a whole run reproducible.
"""

from __future__ import annotations

import torch

SEED_HIGH = 2**62

__all__ = ["SEED_HIGH", "as_generator", "private_generator"]


def private_generator(seed: int | None = None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or with one draw from the global RNG."""
    if seed is None:
        seed = int(torch.randint(0, SEED_HIGH, ()).item())
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def as_generator(generator: torch.Generator | int | None, *, owner: str) -> torch.Generator:
    """The generator a randomized object draws from: the one reading of ``generator=``.

    Args:
        generator: a ``torch.Generator`` (used as is, on its own device), an int seed (a
            private CPU generator seeded with it), or ``None`` (a private CPU generator seeded
            once from the global RNG).
        owner: the class or function name, for the message.

    Returns:
        The generator.

    Raises:
        TypeError: ``generator`` is none of the above (a bool is not a seed).

    Example:
        >>> g = as_generator(3, owner="Probe")
        >>> as_generator(g, owner="Probe") is g
        True
    """
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None or (isinstance(generator, int) and not isinstance(generator, bool)):
        return private_generator(generator)
    raise TypeError(f"{owner}: generator must be a torch.Generator, an int seed or None, got "
                    f"{type(generator).__name__} {generator!r}")
