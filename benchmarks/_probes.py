"""Probe candidates shared by the layer and network benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from backprobe.estimators import Probe

#: Probes drawing more numbers than this per call are not timed (hours on a CPU).
MAX_PROBE_ENTRIES = 2**28
NO_WGRAD = "bound: no weight grad"
EXACT_COMPACT = "exact + compact activations"
#: (mode, per_sample) combinations of :class:`~backprobe.Probe` benchmarked by default.
VARIANTS: tuple[tuple[str, bool], ...] = (
    ("channel", True), ("channel", False), ("joint", True), ("joint", False),
)


def probe_name(probe: Probe) -> str:
    """Short label, e.g. ``"r16 channel per-sample"`` or ``"r4 joint shared"``."""
    share = "per-sample" if probe.per_sample else "shared"
    return f"r{probe.num_probes} {probe.mode} {share}"


def probe_candidates(
    rs: Iterable[int], variants: Iterable[tuple[str, bool]] = VARIANTS, seed: int = 0
) -> dict[str, Probe]:
    """``{label: Probe(r, mode=..., per_sample=...)}`` for every ``r`` and variant."""
    probes = [
        Probe(r, mode=mode, per_sample=ps, seed=seed) for mode, ps in variants for r in rs
    ]
    return {probe_name(p): p for p in probes}


def describe(name: str, est: Probe | None) -> dict[str, Any]:
    if est is None:
        return {"candidate": name, "r": None, "mode": None, "per_sample": None}
    return {"candidate": name, "r": est.num_probes, "mode": est.mode,
            "per_sample": est.per_sample}
