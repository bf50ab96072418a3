"""Tiny float64 problems shared by the wave tests."""

from __future__ import annotations

import torch

from backprobe.wave import ricker

DX, DT = 10.0, 1e-3
# The damping layer: the hand-checked reference loop and the memory formulas use it.
KW = dict(space_order=4, pml_width=3, boundary="damping")


def problem_2d(nt: int = 60, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    v = 2000 + 300 * torch.rand(12, 15, generator=gen, dtype=torch.float64)
    w = ricker(25.0, nt, DT, dtype=torch.float64)
    src = [[3.0, 5.5], [4.25, 10.0]]
    rec = [[2.3, float(x)] for x in range(0, 15, 3)]
    return v, w, src, rec


def problem_3d(nt: int = 30):
    gen = torch.Generator().manual_seed(1)
    v = 2000 + 300 * torch.rand(7, 8, 9, generator=gen, dtype=torch.float64)
    w = ricker(30.0, nt, DT, dtype=torch.float64)
    src = [[2.0, 3.5, 4.0]]
    rec = [[1.0, 2.0, float(x)] for x in range(0, 9, 2)] + [[5.5, 6.2, 1.0]]
    return v, w, src, rec
