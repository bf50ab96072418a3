"""Optimal (binomial, Revolve-style) checkpointing: keep a few states, recompute the rest.

With ``s`` stored states and ``rho`` forward repetitions per step, ``beta(s, rho) =
C(s + rho, s)`` steps can be reversed (Griewank 1992; Griewank & Walther 2000, Revolve).
The schedule here is that recursion: to reverse steps ``[i, j)`` holding the state at
``i`` with ``s`` slots (the one at ``i`` included), take the smallest ``rho`` with
``beta(s, rho) >= j - i``, advance to ``k = j - beta(s - 1, rho)`` (at least ``i + 1``),
store the state there, reverse ``[k, j)`` with ``s - 1`` slots, then ``[i, k)`` with ``s``.
The forward run already stores the states of the schedule's first descent, so backward
starts without a full re-run. Recomputed fields go through the same code as the first
run, so the gradient equals ``Exact()``'s bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from math import comb

from torch import Tensor

from backprobe.wave._propagator import Propagator
from backprobe.wave.imaging import Imaging, ImagingPass, ModellingInfo


def split(m: int, s: int) -> int:
    """Offset of the next checkpoint when reversing ``m >= 2`` steps with ``s >= 2`` slots."""
    rho = 0
    while comb(s + rho, s) < m:
        rho += 1
    return max(1, m - comb(s - 1 + rho, s - 1))


class _CheckpointPass(ImagingPass):
    def __init__(self, prop: Propagator, snapshots: int, keep: bool) -> None:
        super().__init__()
        self.prop = prop
        self.keep = keep
        n = prop.n_steps
        self.slots = min(snapshots, max(n - 1, 1))
        self.pool = (self.hold(prop.empty_state(self.slots)) if keep
                     else None)
        self.pos = [-1] * self.slots
        # The schedule's first descent: stored during the forward run.
        self.spine: dict[int, int] = {}
        i, s, d = 0, self.slots + 1, 0
        while s >= 2 and n - i >= 2:
            i += split(n - i, s)
            self.spine[i] = d
            s, d = s - 1, d + 1
        self.gen: Iterator[tuple[int, Tensor]] | None = None

    def forward(self, prop: Propagator) -> Tensor:
        def after(n: int) -> None:
            d = self.spine.get(n + 1)
            if d is not None and self.pool is not None:
                prop.save_state(self.pool[d])
                self.pos[d] = n + 1

        return prop.forward(lambda n: None, lambda n: None, after if self.keep else None)

    def _load(self, i: int, d: int) -> None:
        if d == 0:
            self.prop.load_state(None)
        else:
            assert self.pool is not None and self.pos[d - 1] == i
            self.prop.load_state(self.pool[d - 1])

    def _advance(self, i: int, n: int) -> None:
        for t in range(i, n):
            self.prop.step(t, None)

    def _reverse(self, i: int, j: int, d: int, s: int) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(n, a_n)`` for ``n = j-1 .. i``; the state at ``i`` is in slot ``d-1``."""
        prop = self.prop
        while j > i:
            m = j - i
            if m == 1 or s < 2:
                for n in range(j - 1, i - 1, -1):
                    self._load(i, d)
                    self._advance(i, n)
                    yield n, prop.current_laplacian(prop.scratch)
                return
            k = i + split(m, s)
            if self.pos[d] != k:
                assert self.pool is not None
                self._load(i, d)
                self._advance(i, k)
                prop.save_state(self.pool[d])
                self.pos[d] = k
            yield from self._reverse(k, j, d + 1, s - 1)
            self.pos[d] = -1
            j = k

    def history(self, n: int) -> Tensor | None:
        if not self.keep:
            return None
        if self.gen is None:
            self.gen = self._reverse(0, self.prop.n_steps, 0, self.slots + 1)
        m, a = next(self.gen)
        assert m == n, (m, n)
        return a

    def release(self) -> None:
        super().release()
        self.pool = None
        self.gen = None


class Checkpoint(Imaging):
    """Optimal checkpointing with ``snapshots`` stored states (two fields each, per shot).

    Exact: the gradient equals ``Exact()``'s bit for bit, at the price of recomputing
    forward steps (about ``rho`` times each, ``beta(snapshots + 1, rho) >= N``).
    Memory: ``snapshots * S * state_numel`` numbers: two fields on ``D`` per state, plus,
    with a CPML, its memory variables on the layer cells (part of the state); the rest
    state is implicit.

    Args:
        snapshots: Number of stored states (``>= 1``).

    Raises:
        ValueError: If ``snapshots < 1``.
    """

    def __init__(self, snapshots: int) -> None:
        super().__init__()
        if isinstance(snapshots, bool) or not isinstance(snapshots, int) or snapshots < 1:
            raise ValueError(f"snapshots must be a positive integer, got {snapshots!r}")
        self.snapshots = snapshots

    def start(
        self, prop: Propagator, info: ModellingInfo, observed: Tensor | None, keep: bool,
    ) -> ImagingPass:
        return self._record(_CheckpointPass(prop, self.snapshots, keep), info)

    def __repr__(self) -> str:
        return f"Checkpoint(snapshots={self.snapshots})"
