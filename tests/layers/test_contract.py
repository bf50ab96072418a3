"""The op contract: every registered op against the float64 autograd oracles.

Runs each layer case of ``tests.cases`` through its op's protocol (forward, exact backward
with and without the input, weight gradient, canonical form, weight layout maps) and every
fast path the op offers (a fast path may return ``None``; if it answers, it must be exact).
Also checks the registry itself: every op module registered something, every registered
module type has a case.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import backprobe.layers as layers
from backprobe.layers import KINDS, OPS, AffineOp, bind, module_types, op_for, spec_for
from backprobe.testing import reference_grads
from tests.cases import LAYERS, NETWORKS, NORM_NETWORKS, EmbedNet, layer_ids


def test_every_op_module_registers_something():
    origins = {spec.origin for spec in OPS.values()}
    assert layers.OP_MODULES, "no op modules found"
    for name in layers.OP_MODULES:
        importlib.import_module(name)  # already imported by the package: a no-op
        assert name in origins, f"{name} registered no module type"
    assert origins <= set(layers.OP_MODULES)


def test_registry_kinds_and_lookup():
    for t, spec in OPS.items():
        assert spec.kind in KINDS and t in spec.module_types
        assert spec_for(t) is spec

    class MyConv(nn.Conv2d):
        pass

    assert spec_for(MyConv(1, 1, 1)) is OPS[nn.Conv2d]  # nearest registered base
    assert spec_for(nn.Bilinear(2, 2, 2)) is None


def test_every_registered_type_has_a_case():
    covered = {c.module_type for c in LAYERS}
    for make in [*NETWORKS.values(), *(m for m, _ in NORM_NETWORKS.values()), EmbedNet]:
        covered |= {type(m) for m in make().modules()}
    missing = [t.__name__ for t in OPS if t not in covered]
    assert not missing, f"add a case in tests/cases.py for {missing}"
    assert set(module_types("affine")) <= {c.module_type for c in LAYERS}


@pytest.fixture(params=LAYERS, ids=layer_ids(LAYERS))
def bound(request):
    """``(case, module, x, op-view input, op, output gradient, oracle gradients)``."""
    case = request.param
    torch.manual_seed(0)
    module = case.make()
    x = case.input()
    xr, op = bind(module, x)
    out = op.forward(xr, module.weight, module.bias)
    torch.testing.assert_close(out, module(x))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    return case, module, x, xr, op, g, reference_grads(module, x, g)


def _op_oracle(op, module, xr, g):
    """Gradients of ``<op.forward(xr), g>`` by autograd (the op's own view of the input)."""
    xr = xr.detach().requires_grad_(True)
    params = [xr, module.weight] + ([module.bias] if module.bias is not None else [])
    return torch.autograd.grad(op.forward(xr, module.weight, module.bias), params, g)


def test_exact_backward(bound):
    case, module, x, xr, op, g, ref = bound
    assert isinstance(op, AffineOp) and op == op_for(module)
    oracle = _op_oracle(op, module, xr, g)
    has_bias = module.bias is not None
    gi, gw, gb = op.backward(xr, g, module.weight, tuple(xr.shape), (True, True, has_bias))
    torch.testing.assert_close(gi, oracle[0])
    torch.testing.assert_close(gw, ref["weight"])
    gi, gw, gb2 = op.backward(None, g, module.weight, tuple(xr.shape), (True, False, has_bias))
    assert gw is None
    torch.testing.assert_close(gi, oracle[0])
    if has_bias:
        torch.testing.assert_close(gb, ref["bias"])
        torch.testing.assert_close(gb2, ref["bias"])
    torch.testing.assert_close(op.weight_grad(xr, g), ref["weight"])


def test_canonical_form(bound):
    case, module, x, xr, op, g, ref = bound
    a, d = op.canonical_input(xr), op.canonical_output_grad(g)
    assert a.shape[:2] == d.shape[:2] and a.shape[2] == op.d_in and d.shape[2] == op.d_out
    full = torch.einsum("nso,nsi->oi", d, a)
    torch.testing.assert_close(op.weight_from_matrix(full), ref["weight"])
    grp = op.groups
    blocks = torch.stack([full.reshape(grp, op.d_out // grp, grp, -1)[:, :, j][j]
                          for j in range(grp)])
    torch.testing.assert_close(op.weight_from_blocks(blocks), ref["weight"])
    # batched maps: leading dims pass through
    two = torch.stack([full, 2 * full])
    torch.testing.assert_close(op.weight_from_matrix(two)[1], 2 * ref["weight"])
    view = op.matrix_view(module.weight.detach())
    if view is not None:  # the weight's layout is the matrix's: the view is the matrix
        torch.testing.assert_close(op.weight_from_matrix(view), module.weight.detach())
        assert view.data_ptr() == module.weight.data_ptr()


def test_fast_paths(bound):
    case, module, x, xr, op, g, ref = bound
    n = xr.shape[0]
    per = op.per_example_weight_grad(xr, g)
    if per is not None:
        want = torch.stack([op.weight_grad(xr[i:i + 1], g[i:i + 1]) for i in range(n)])
        torch.testing.assert_close(per, want)
    a = op.canonical_input(xr).flatten(0, 1)
    moment = op.input_second_moment(xr, tuple(g.shape[2:]))
    if moment is not None:
        torch.testing.assert_close(moment, a.T @ a)
    d = op.canonical_output_grad(g).flatten(0, 1)
    scores = op.row_scores(xr, g)
    if scores is not None:
        grp = op.groups
        want = (a.reshape(len(a), grp, -1).square().sum(-1)
                * d.reshape(len(d), grp, -1).square().sum(-1)).sum(-1).sqrt()
        torch.testing.assert_close(scores, want)
        idx = torch.tensor([0, len(a) - 1, len(a) // 2])
        rows = op.gather_rows(xr, g, idx)
        assert rows is not None
        torch.testing.assert_close(rows[0], a[idx])
        torch.testing.assert_close(rows[1], d[idx])


def test_probe_views_and_shared_probe_path(bound):
    case, module, x, xr, op, g, ref = bound
    for mode in ("channel", "joint"):
        v = op.probe_view(xr, mode)
        assert v.dim() == 3 and v.numel() == xr.numel()
        assert op.rows(xr).shape[0] == v.shape[0] == op.rows(g).shape[0]
    v = op.probe_view(xr, "channel")
    rows, chans, q = v.shape
    if chans == 1:
        return
    # for any probes z [r, q] the path equals the exact formula on the projection
    # x_hat = (1/r) (Z^T x) Z (shared probes); r = 1 stays below C_in / groups
    z = torch.randn(1, q, dtype=xr.dtype, generator=torch.Generator().manual_seed(2))
    sketch = v @ z.T
    got = op.shared_probe_weight_grad(sketch, z, tuple(op.rows(xr).shape), op.rows(g))
    if got is None:
        return
    want = op.weight_grad((sketch @ z).reshape(xr.shape), g)
    torch.testing.assert_close(got, want)
