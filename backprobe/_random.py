"""Private random generators: the one way backprobe draws randomness.

Every randomized object (estimator, Monte-Carlo quantity) owns a ``torch.Generator`` seeded
once at construction, from the global RNG unless ``seed`` is given. Later draws never touch
the global RNG, and ``torch.manual_seed`` before construction makes a whole run reproducible.
"""

from __future__ import annotations

import torch

SEED_HIGH = 2**62


def private_generator(seed: int | None = None) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or with one draw from the global RNG."""
    if seed is None:
        seed = int(torch.randint(0, SEED_HIGH, ()).item())
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
