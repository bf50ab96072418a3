"""Probing without activation-sized temporaries (issue 13, "cut the transients").

The probed paths (sketch in forward, reconstruction ``x_hat`` and its weight gradient in
backward, shaped probes' DCT) and the CPU convolution's forward and input gradient run over
the batch in chunks of about ``backprobe.layers._base.CHUNK_BYTES``. Checked here:

* chunking changes no result: same seeded draw, same gradients up to float summation order
  (chunks of one row against one chunk for the whole batch), on every layer case;
* the packed sign flips are exactly ``draw_probes``' Rademacher draw;
* the peak memory of a probed step (``backprobe.peak_memory``: CPU allocation events, exact
  in bytes, no timing) stays within bounds derived from the tensor sizes, which the former
  full-size temporaries (a flipped copy of the input in forward, an input-sized ``x_hat``
  in backward, oneDNN's whole-batch reorders) exceed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import backprobe
import backprobe.layers._base as layer_base
from backprobe import Probe
from backprobe.estimators.probe import Signs
from backprobe.layers import bind
from backprobe.layers._base import chunks
from backprobe.linalg._probes import draw_probes
from backprobe.peak import peak_memory
from tests.cases import LAYERS, layer_ids

MIB = 2**20
AFFINE = [c for c in LAYERS if c.input_shape[0] >= 2]


def test_chunks_cover_the_range_within_budget():
    for total, item, budget in [(10, 3, 9), (7, 100, 10), (5, 1, 100), (1, 10**9, 1)]:
        parts = chunks(total, item, budget)
        assert [i for s in parts for i in range(s.start, s.stop)] == list(range(total))
        assert all(s.stop - s.start >= 1 for s in parts)
        assert all((s.stop - s.start) * item <= budget for s in parts) or len(parts) == total
    assert chunks(0, 8, 8) == [slice(0, 0)]


@pytest.mark.parametrize("rows,q", [(5, 7), (3, 64), (8, 33), (1, 1)])
def test_packed_signs_are_draw_probes_rademacher(rows, q):
    expected = draw_probes((rows, 1, q), "rademacher", torch.Generator().manual_seed(3))
    signs = Signs(rows, q, torch.Generator().manual_seed(3), torch.device("cpu"))
    got = torch.cat([signs.rows(s, torch.float64) for s in chunks(rows, q, 2 * q)])
    assert torch.equal(got, expected.double())


def _grads(case, estimator_kwargs, budget, monkeypatch):
    monkeypatch.setattr(layer_base, "CHUNK_BYTES", budget)
    torch.manual_seed(0)
    model = case.estimated(Probe(**estimator_kwargs))
    out = []
    for step in range(2):  # shaped probes: plain on the first step, shaped on the second
        x = case.input(seed=step).requires_grad_(True)
        model.zero_grad()
        y = model(x)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype)
        y.backward(g)
        out.append((y.detach(), x.grad, model.weight.grad.clone()))
    return out


ESTIMATORS = [
    dict(num_probes=3, seed=1),
    dict(num_probes=3, seed=1, mode="joint"),
    dict(num_probes=3, seed=1, mode="auto", per_sample=False),
    dict(num_probes=2, seed=1, per_sample=False),
    dict(num_probes=2, seed=1, mode="joint", per_sample=False),
    dict(num_probes=3, seed=1, shaping="dct", deflate=1),
    dict(num_probes=3, seed=1, shaping="dct", mode="joint", orthogonal=True),
]


@pytest.mark.parametrize("kwargs", ESTIMATORS, ids=lambda k: ",".join(f"{a}" for a in k.values()))
@pytest.mark.parametrize("case", AFFINE, ids=layer_ids(AFFINE))
def test_chunking_changes_nothing(case, kwargs, monkeypatch):
    """One row (example) per chunk gives the whole-batch results: output, input and weight
    gradients, from the same seeded probes."""
    whole = _grads(case, kwargs, 2**40, monkeypatch)
    rowwise = _grads(case, kwargs, 1, monkeypatch)
    for a, b in zip(whole, rowwise):
        for ta, tb in zip(a, b):
            torch.testing.assert_close(tb, ta, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", AFFINE, ids=layer_ids(AFFINE))
def test_chunked_op_forward_and_backward_are_exact(case, monkeypatch):
    """Under no_grad (inside the autograd Function) the op runs a chunk at a time: forward,
    input gradient alone, and the exact backward (weight gradient summed over chunks)."""
    monkeypatch.setattr(layer_base, "CHUNK_BYTES", 1)
    torch.manual_seed(0)
    module = case.make()
    x = case.input()
    xr, op = bind(module, x)
    shape = tuple(xr.shape)
    with torch.no_grad():
        out = op.forward(xr, module.weight, module.bias)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        gi_alone, _, _ = op.backward(None, g, module.weight, shape, (True, False, False))
        gi, gw, gb = op.backward(xr, g, module.weight, shape, (True, True, True))
    xr = xr.detach().requires_grad_(True)
    ref = op.forward(xr, module.weight, module.bias)  # grad mode: the plain call
    params = [xr, module.weight] + ([module.bias] if module.bias is not None else [])
    refs = torch.autograd.grad(ref, params, g)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(gi_alone, refs[0])
    torch.testing.assert_close(gi, refs[0])
    torch.testing.assert_close(gw, refs[1])
    if module.bias is not None:
        torch.testing.assert_close(gb, refs[2])


# -- peak memory -----------------------------------------------------------------------------
N, C, HW = 32, 8, 64  # one input or output: 32 * 8 * 64 * 64 * 4 bytes = 4 MiB
BUDGET = 2**18  # chunks of 256 KiB (two examples of 128 KiB)


def _step(estimator, monkeypatch):
    """Peak of one step of a single 3x3 conv (with ``estimator``, or plain autograd)."""
    monkeypatch.setattr(layer_base, "CHUNK_BYTES", BUDGET)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Conv2d(C, C, 3, padding=1, bias=False),
                          nn.Identity())
    if estimator is not None:
        model = backprobe.convert(model, estimator, compact_activations=False,
                                  exact_held_inputs=False)
    x = torch.randn(N, C, HW, HW, generator=torch.Generator().manual_seed(1))
    y = torch.randn(N, C, HW, HW, generator=torch.Generator().manual_seed(2))
    return peak_memory(model, x.requires_grad_(True), y,
                       lambda out, t: torch.einsum("nchw,nchw->", out, t), warmup=2)


@pytest.mark.parametrize("kwargs", [
    dict(num_probes=4), dict(num_probes=4, mode="joint"), dict(num_probes=4, per_sample=False),
    dict(num_probes=4, shaping="dct"), dict(num_probes=4, shaping="dct", deflate=1),
], ids=["channel", "joint", "shared", "dct", "dct-deflate"])
def test_probed_conv_peak_is_its_outputs_plus_chunks(kwargs, monkeypatch):
    """Forward holds the output (4 MiB) plus chunk-sized temporaries; backward the output
    gradient and the input gradient (4 MiB each) plus chunk-sized temporaries. A full-size
    flipped copy, ``x_hat``, DCT or whole-batch oneDNN reorder adds another 4 MiB or more
    and fails the bound."""
    act = N * C * HW * HW * 4
    res = _step(Probe(seed=0, **kwargs), monkeypatch)
    fwd = max(s.peak - s.start for s in res.segments if s.phase == "forward")
    bwd = max(s.peak - s.start for s in res.segments if s.phase == "backward")
    slack = 6 * BUDGET  # a few chunk-sized temporaries at once (reorders, x_hat, its g)
    assert fwd <= act + slack, f"forward grew {fwd / MIB:.2f} MiB"
    assert bwd <= 2 * act + slack, f"backward grew {bwd / MIB:.2f} MiB"


def test_probed_step_peaks_below_the_exact_step(monkeypatch):
    """Plain autograd holds the output gradient, the input gradient and whole-batch
    reorders at once; the probed step only chunks beside the two gradients."""
    exact = _step(None, monkeypatch).peak
    probed = _step(Probe(4, seed=0), monkeypatch).peak
    assert probed < exact
