"""Imaging strategies: exact where promised, unbiased where promised, bytes as reported."""

import pytest
import torch

from backprobe.wave import DFT, Checkpoint, Exact, TimeProbe, model
from backprobe.wave.checkpoint import split

from ._setup import DT, DX, KW, problem_2d

V, W, SRC, REC = problem_2d(nt=60)
OBSERVED = model(V, DX, DT, W, SRC, REC, **KW)
DD = torch.randn(OBSERVED.shape, generator=torch.Generator().manual_seed(7),
                 dtype=torch.float64)


def grad(imaging, observed=None):
    vg = V.clone().requires_grad_()
    d = model(vg, DX, DT, W, SRC, REC, imaging=imaging, observed=observed, **KW)
    (d * DD).sum().backward()
    return vg.grad


def rel(a, b):
    return float((a - b).norm() / b.norm())


EXACT = grad(Exact())


@pytest.mark.parametrize("snapshots", [1, 2, 3, 7, 60, 200])
def test_checkpoint_equals_exact_bit_for_bit(snapshots):
    imaging = Checkpoint(snapshots)
    assert torch.equal(grad(imaging), EXACT)
    n = 60
    slots = min(snapshots, n - 1)
    assert imaging.nbytes() == slots * 2 * 2 * 18 * 21 * 8


@pytest.mark.parametrize("snapshots", [1, 4])
def test_checkpoint_equals_exact_with_cpml(snapshots):
    layer = dict(boundary="cpml", max_vel=2500.0)
    grads = []
    for imaging in (Exact(), Checkpoint(snapshots)):
        vg = V.clone().requires_grad_()
        (model(vg, DX, DT, W, SRC, REC, imaging=imaging, **{**KW, **layer}) * DD).sum().backward()
        grads.append(vg.grad)
    assert torch.equal(grads[0], grads[1])
    # Per shot: two pressure fields on the 18 x 21 domain, plus psi and zeta on the
    # 3-cell layers only (2 x 3 rows of 21 cells, 2 x 3 columns of 18 cells).
    per_shot = 2 * 18 * 21 + 2 * (2 * 3 * 21 + 2 * 3 * 18)
    assert imaging.nbytes() == snapshots * per_shot * 2 * 8


def test_checkpoint_split_respects_binomial_bounds():
    from math import comb
    for s in range(2, 8):
        for m in range(2, 300):
            k = split(m, s)
            rho = next(r for r in range(m) if comb(s + r, s) >= m)
            assert 1 <= k < m
            assert m - k <= comb(s - 1 + rho, s - 1)
            assert k <= max(1, comb(s + rho - 1, s))


def test_exact_strategies_of_full_rank():
    assert rel(grad(TimeProbe(60, "orthogonal", seed=0)), EXACT) < 1e-13
    assert rel(grad(TimeProbe(60, "data", seed=0), OBSERVED), EXACT) < 1e-13
    assert rel(grad(DFT(31)), EXACT) < 1e-13
    nyq = 0.5 / DT
    assert rel(grad(DFT([k * nyq / 30 for k in range(31)])), EXACT) < 1e-13
    assert rel(grad(DFT(30)), EXACT) > 1e-4  # one frequency short is not exact


@pytest.mark.parametrize("stride", [2, 3, 7])
def test_strided_strategies_compose(stride):
    ref = grad(Exact(stride=stride))
    nk = -(-60 // stride)
    assert rel(grad(TimeProbe(nk, "orthogonal", stride=stride, seed=1)), ref) < 1e-13
    assert rel(grad(TimeProbe(nk, "data", stride=stride, seed=1), OBSERVED), ref) < 1e-13
    assert rel(grad(DFT(nk // 2 + 1, stride=stride)), ref) < 1e-13
    assert rel(ref, EXACT) > 1e-6  # subsampling does change the gradient


@pytest.mark.parametrize("probes, stride", [("rademacher", 1), ("gaussian", 1),
                                            ("orthogonal", 1), ("hutchpp", 1),
                                            ("rademacher", 3)])
def test_random_probes_unbiased(probes, stride):
    """Mean over fixed-seed draws against the exact (strided) gradient, in standard errors."""
    ref = EXACT if stride == 1 else grad(Exact(stride=stride))
    imaging = TimeProbe(4, probes, stride=stride, seed=11)
    draws = torch.stack([grad(imaging, OBSERVED) for _ in range(32)])
    mean, se = draws.mean(0), draws.std(0) / 32**0.5
    z = ((mean - ref).abs() / (se + 1e-30 * ref.abs().max()))
    assert float((mean - ref).norm() / se.norm()) < 2.0
    assert float(z.max()) < 5.5
    assert rel(draws[0], ref) > 1e-3  # a single draw is an estimate, not the gradient


def test_data_probes_are_biased_yet_good():
    imaging = TimeProbe(4, "data", seed=11)
    draws = torch.stack([grad(imaging, OBSERVED) for _ in range(16)])
    mean, se = draws.mean(0), draws.std(0) / 4
    assert float((mean - EXACT).norm() / se.norm()) > 5.0  # bias shows
    assert rel(grad(TimeProbe(16, "data", seed=0), OBSERVED), EXACT) < rel(
        grad(TimeProbe(16, "rademacher", seed=0)), EXACT)


def test_seeds_reproduce_and_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = grad(TimeProbe(5, seed=3))
    b = grad(TimeProbe(5, seed=3))
    imaging = TimeProbe(5, "hutchpp", generator=torch.Generator().manual_seed(9))
    c1, c2 = grad(imaging, OBSERVED), grad(imaging, OBSERVED)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b)
    assert not torch.equal(c1, c2)  # each call draws a new seed from the private generator
    assert imaging.last_seed is not None


def _held_storage_bytes(data):
    """Bytes of all tensor storages reachable from the strategy's per-call state."""
    node = data.grad_fn
    pass_ = node.pass_
    seen, total = set(), 0

    def visit(obj, depth=0):
        nonlocal total
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                visit(o, depth)
        elif isinstance(obj, dict):
            for o in obj.values():
                visit(o, depth)
        elif depth < 1 and hasattr(obj, "__dict__") and not callable(obj):
            for k, o in vars(obj).items():
                if k != "prop":
                    visit(o, depth + 1)

    visit(pass_)
    return total


@pytest.mark.parametrize("imaging", [
    Exact(), Exact(stride=4), Checkpoint(5), TimeProbe(6, seed=0),
    TimeProbe(6, "orthogonal", stride=3, seed=0, block=4), TimeProbe(61, "gaussian", seed=0),
    DFT(5), DFT(7, stride=2, block=3),
])
def test_nbytes_equals_bytes_held(imaging):
    vg = V.clone().requires_grad_()
    d = model(vg, DX, DT, W, SRC, REC, imaging=imaging, **KW)
    held = _held_storage_bytes(d)
    assert imaging.nbytes() == held > 0
    d.sum().backward()
    assert imaging.nbytes() == held  # still valid after backward


def test_memory_orders():
    nb = {}
    for name, imaging in [("exact", Exact()), ("stride4", Exact(stride=4)),
                          ("probe8", TimeProbe(8, seed=0, block=4)), ("dft4", DFT(4, block=4))]:
        model(V.clone().requires_grad_(), DX, DT, W, SRC, REC, imaging=imaging, **KW)
        nb[name] = imaging.nbytes()
    field = 2 * 18 * 21 * 8
    assert nb["exact"] == 60 * field
    assert nb["stride4"] == 15 * field
    assert nb["probe8"] == (8 + 4) * field + 2 * 60 * 8 * 8
    assert nb["dft4"] == (7 + 4) * field + 60 * 7 * 8


def test_no_grad_keeps_nothing():
    imaging = TimeProbe(5, seed=0)
    d = model(V, DX, DT, W, SRC, REC, imaging=imaging, **KW)
    assert imaging.nbytes() == 0 and d.grad_fn is None


def test_substeps_with_probes_and_checkpoint():
    """Strategies act on internal steps: with substeps, full-rank probes stay exact."""
    dt = 4e-3  # two internal steps per sample for these velocities
    w = W[:30]
    obs = model(V, DX, dt, w, SRC, REC, substeps=2, **KW)
    grads = []
    for imaging in (Exact(), Checkpoint(3), TimeProbe(60, "data", seed=0), DFT(31)):
        vg = V.clone().requires_grad_()
        d = model(vg, DX, dt, w, SRC, REC, imaging=imaging, substeps=2, observed=obs, **KW)
        assert imaging.last_info.n_steps == 60
        (d * DD[..., :30]).sum().backward()
        grads.append(vg.grad)
    assert torch.equal(grads[0], grads[1])
    for g in grads[2:]:
        assert rel(g, grads[0]) < 1e-13
