"""Absorbing boundaries: reflections against a wide-layer reference, CPML strip layouts.

The reflection test records a point source at receivers two cells below the top edge of a
homogeneous 40 x 40 grid, with the layer under test and with a 60-cell CPML (whose own
reflections are far below the thresholds), and compares the records (relative L2).
"""

from functools import cache

import pytest
import torch

from backprobe.wave import Checkpoint, Exact, model, ricker
from backprobe.wave.reference import model_reference

DX, DT = 10.0, 1e-3


@cache
def _reflection_setup():
    v = torch.full((40, 40), 2000.0, dtype=torch.float64)
    w = ricker(15.0, 300, DT, dtype=torch.float64)
    src, rec = [[20.0, 20.0]], [[2.0, float(x)] for x in range(40)]
    far = model(v, DX, DT, w, src, rec, pml_width=60, space_order=4, boundary="cpml")
    return v, w, src, rec, far


def _reflection(boundary, width):
    v, w, src, rec, far = _reflection_setup()
    d = model(v, DX, DT, w, src, rec, pml_width=width, space_order=4, boundary=boundary)
    return float((d - far).norm() / far.norm())


# Measured (float64, deterministic): CPML 1.2e-4 (10 cells), 7.7e-6 (20); damping 0.144
# (10), 0.032 (20). Thresholds: about 1.4x to 2.5x those.
@pytest.mark.parametrize("boundary, width, limit", [
    ("cpml", 10, 3e-4), ("cpml", 20, 2e-5),
    ("damping", 10, 0.2), ("damping", 20, 0.05),
])
def test_reflection_below_threshold(boundary, width, limit):
    err = _reflection(boundary, width)
    assert err < limit, err


def test_no_layer_reflects_and_cpml_of_width_zero_is_plain():
    v, w, src, rec, far = _reflection_setup()
    kw = dict(pml_width=0, space_order=4)
    plain = model(v, DX, DT, w, src, rec, **kw)
    assert torch.equal(plain, model(v, DX, DT, w, src, rec, boundary="cpml", **kw))
    assert float((plain - far).norm() / far.norm()) > 0.5


# Strip layouts: per axis, two strips (layer + stencil halo fits twice), or one merged strip
# covering the axis (it does not); 3-D mixes both.
CASES = {
    "2d_merged": (torch.Size([4, 5]), 4, 8),   # 12 x 13 domain, strips of 4 + 2 * 4 cells
    "2d_mixed": (torch.Size([3, 12]), 3, 4),   # 9 x 18 domain: merged along z only
    "3d_mixed": (torch.Size([2, 8, 12]), 3, 4),
}


def _case(name):
    shape, pml, order = CASES[name]
    gen = torch.Generator().manual_seed(7)
    v = 2000 + 300 * torch.rand(shape, generator=gen, dtype=torch.float64)
    w = ricker(30.0, 40, DT, dtype=torch.float64)
    centre = [(n - 1) / 2 for n in shape]
    rec = [[0.0] + [float(i % n) for n in shape[1:]] for i in range(6)]
    kw = dict(space_order=order, pml_width=pml, boundary="cpml", max_vel=2300.0)
    return v, w, [centre], rec, kw


@pytest.mark.parametrize("name", list(CASES))
def test_cpml_strips_match_autograd_reference(name):
    v, w, src, rec, kw = _case(name)
    gen = torch.Generator().manual_seed(8)
    dd = torch.randn(1, len(rec), w.shape[0], generator=gen, dtype=torch.float64)
    out = []
    for fn in (model, model_reference):
        vg = v.clone().requires_grad_()
        d = fn(vg, DX, DT, w, src, rec, **kw)
        (d * dd).sum().backward()
        out.append((d.detach(), vg.grad))
    (d, g), (dr, gr) = out
    assert torch.allclose(d, dr, rtol=0, atol=1e-13 * dr.abs().max())
    assert torch.allclose(g, gr, rtol=0, atol=1e-11 * gr.abs().max())


@pytest.mark.parametrize("name", list(CASES))
def test_cpml_strips_checkpoint_equals_exact(name):
    v, w, src, rec, kw = _case(name)
    grads, held = [], 0
    for imaging in (Exact(), Checkpoint(3)):
        vg = v.clone().requires_grad_()
        model(vg, DX, DT, w, src, rec, imaging=imaging, **kw).square().sum().backward()
        grads.append(vg.grad)
        held = imaging.nbytes()
    assert torch.equal(grads[0], grads[1])
    # The state: two pressure fields on the domain plus psi and zeta on the layer cells.
    shape, pml, _ = CASES[name]
    dom = [n + 2 * pml for n in shape]
    cells = torch.Size(dom).numel()
    layer = 0
    for n in dom:
        across = cells // n
        layer += across * (n if 2 * (pml + kw["space_order"] // 2) > n else 2 * pml)
    assert held == 3 * (2 * cells + 2 * layer) * 8
