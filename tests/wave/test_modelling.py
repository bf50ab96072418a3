"""Propagator and modelling: adjoint tests, autograd oracle, Taylor test, inputs, 3-D."""

import pytest
import torch

from backprobe.wave import DFT, Exact, TimeProbe, model, ricker
from backprobe.wave.reference import model_reference

from ._setup import DT, DX, KW, problem_2d, problem_3d


def _data(v, w, src, rec, **kw):
    return model(v, DX, DT, w, src, rec, **{**KW, **kw})


@pytest.mark.parametrize("order", [2, 4, 8])
def test_forward_matches_reference(order):
    v, w, src, rec = problem_2d(nt=40)
    d = model(v, DX, DT, w, src, rec, space_order=order, pml_width=3)
    dr = model_reference(v, DX, DT, w, src, rec, space_order=order, pml_width=3)
    assert d.shape == (2, len(rec), 40)
    assert torch.allclose(d, dr, rtol=0, atol=1e-13 * dr.abs().max())
    assert d.abs().max() > 0


CPML = dict(boundary="cpml", max_vel=2500.0)


@pytest.mark.parametrize("problem", [problem_2d, problem_3d])
@pytest.mark.parametrize("layer", [{}, CPML], ids=["damping", "cpml"])
def test_dot_product_linearised_modelling(problem, layer):
    """<J dv, dd> == <dv, J^T dd>: J from forward-mode AD of the reference, J^T ours."""
    v, w, src, rec = problem()
    gen = torch.Generator().manual_seed(3)
    dv = torch.randn(v.shape, generator=gen, dtype=torch.float64)
    _, jdv = torch.func.jvp(
        lambda vv: model_reference(vv, DX, DT, w, src, rec, **{**KW, **layer}), (v,), (dv,))
    dd = torch.randn(jdv.shape, generator=gen, dtype=torch.float64)
    vg = v.clone().requires_grad_()
    (_data(vg, w, src, rec, **layer) * dd).sum().backward()
    lhs, rhs = (jdv * dd).sum(), (vg.grad * dv).sum()
    assert abs(lhs - rhs) / abs(lhs) <= 1e-10


@pytest.mark.parametrize("layer", [{}, CPML], ids=["damping", "cpml"])
def test_dot_product_wavelet_operator(layer):
    """The modelling operator is linear in the wavelet: <F w, d> == <w, F^T d>."""
    v, w, src, rec = problem_2d()
    gen = torch.Generator().manual_seed(4)
    w2 = torch.randn(2, w.shape[0], generator=gen, dtype=torch.float64, requires_grad=True)
    d = _data(v, w2, src, rec, **{**layer, "pml_freq": 20.0} if layer else {})
    dd = torch.randn(d.shape, generator=gen, dtype=torch.float64)
    (d * dd).sum().backward()
    lhs, rhs = (d.detach() * dd).sum(), (w2.grad * w2.detach()).sum()
    assert abs(lhs - rhs) / abs(lhs) <= 1e-10


def test_gradients_match_autograd_reference():
    v, w, src, rec = problem_2d(nt=40)
    gen = torch.Generator().manual_seed(5)
    dd = torch.randn(2, len(rec), 40, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (model, model_reference):
        vg, wg = v.clone().requires_grad_(), w.clone().requires_grad_()
        (fn(vg, DX, DT, wg, src, rec, **KW) * dd).sum().backward()
        grads.append((vg.grad, wg.grad))
    for ours, ref in zip(*grads):
        assert torch.allclose(ours, ref, rtol=0, atol=1e-12 * ref.abs().max())


@pytest.mark.parametrize("layer", [{}, CPML], ids=["damping", "cpml"])
def test_taylor_misfit_gradient(layer):
    v, w, src, rec = problem_2d()
    observed = _data(v, w, src, rec, **layer)
    v0 = v.clone()
    v0[4:9, 4:11] += 150.0
    gen = torch.Generator().manual_seed(6)
    dv = 20 * torch.randn(v.shape, generator=gen, dtype=torch.float64)

    def misfit(vv):
        return 0.5 * (_data(vv, w, src, rec, **layer) - observed).square().sum()

    vg = v0.clone().requires_grad_()
    j0 = misfit(vg)
    j0.backward()
    slope = (vg.grad * dv).sum()
    with torch.no_grad():
        rem = [abs(misfit(v0 + h * dv) - j0 - h * slope) for h in (1.0, 0.5, 0.25, 0.125)]
        first = [abs(misfit(v0 + h * dv) - j0) for h in (1.0, 0.5)]
    ratios = [float(a / b) for a, b in zip(rem, rem[1:])]
    assert all(3.5 < r < 4.5 for r in ratios), ratios
    assert float(first[0] / first[1]) < 2.5  # first-order remainder only halves


def test_cpml_matches_reference_and_absorbs_better():
    v, w, src, rec = problem_2d(nt=40)
    d = _data(v, w, src, rec, **CPML)
    dr = model_reference(v, DX, DT, w, src, rec, **{**KW, **CPML})
    assert torch.allclose(d, dr, rtol=0, atol=1e-13 * dr.abs().max())
    # Reflections: a 10-cell layer against a far (100-cell) one, receivers near the top.
    v = torch.full((40, 40), 2000.0, dtype=torch.float64)
    w = ricker(15.0, 400, DT, dtype=torch.float64)
    src, rec = [[20.0, 20.0]], [[2.0, float(x)] for x in range(40)]
    far = model(v, DX, DT, w, src, rec, pml_width=100, space_order=4)
    err = {}
    for boundary in ("damping", "cpml"):
        d = model(v, DX, DT, w, src, rec, pml_width=10, space_order=4, boundary=boundary)
        err[boundary] = float((d - far).norm() / far.norm())
    assert err["cpml"] < 0.02 < 0.1 < err["damping"], err


def test_off_grid_receivers_interpolate_linearly():
    v = torch.full((12, 15), 2000.0, dtype=torch.float64)
    w = ricker(25.0, 50, DT, dtype=torch.float64)
    rec = [[2.0, 4.0], [2.0, 5.0], [2.0, 4.25]]
    d = _data(v, w, [[6.0, 7.0]], rec)
    assert torch.allclose(d[0, 2], 0.75 * d[0, 0] + 0.25 * d[0, 1], rtol=0, atol=1e-18)


def test_batch_equals_single_shots():
    v, w, src, rec = problem_2d(nt=40)
    d = _data(v, w, src, rec)
    for s in range(2):
        assert torch.allclose(d[s], _data(v, w, src[s:s + 1], rec)[0], rtol=0, atol=1e-18)


def test_per_shot_receivers_and_wavelets():
    v, w, src, rec = problem_2d(nt=40)
    rec2 = torch.tensor([rec, [[r[0] + 1, r[1]] for r in rec]])
    w2 = torch.stack([w, 2 * w])
    d = _data(v, w2, src, rec2)
    assert torch.allclose(d[1], 2 * _data(v, w, src[1:], rec2[1])[0], rtol=1e-12, atol=0)


def test_substeps_auto_reported_and_consistent():
    v, w, src, rec = problem_2d(nt=30)
    dt = 4e-3  # violates CFL for 2000-2300 m/s at 10 m
    w = ricker(15.0, 30, dt, dtype=torch.float64)
    imaging = Exact()
    with pytest.warns(UserWarning, match="substeps"):
        d = model(v, DX, dt, w, src, rec, imaging=imaging, **KW)
    ns = imaging.last_info.substeps
    assert ns > 1 and imaging.last_info.n_steps == 30 * ns
    assert d.shape == (2, len(rec), 30)
    # Same as an explicit run at dt / ns with the linearly interpolated wavelet.
    wn = torch.cat([w[1:], w.new_zeros(1)])
    frac = torch.arange(ns, dtype=torch.float64) / ns
    wi = (w[:, None] * (1 - frac) + wn[:, None] * frac).reshape(-1)
    d_fine = model(v, DX, dt / ns, wi, src, rec, substeps=None, **KW)
    assert torch.allclose(d, d_fine[..., ns - 1::ns], rtol=0, atol=1e-18)
    with pytest.raises(ValueError, match="dt="):
        model(v, DX, dt, w, src, rec, substeps=None, **KW)
    with pytest.raises(ValueError, match="dt="):
        model(v, DX, dt, w, src, rec, substeps=1, **KW)


def test_float32_default_and_grad_dtype():
    v, w, src, rec = problem_2d(nt=30)
    v32 = v.float().requires_grad_()
    d = model(v32, DX, DT, w.float(), src, rec)
    assert d.dtype == torch.float32
    d.square().sum().backward()
    assert v32.grad.dtype == torch.float32 and torch.isfinite(v32.grad).all()


def test_3d_matches_reference_and_probes_exact():
    v, w, src, rec = problem_3d()
    d = _data(v, w, src, rec)
    dr = model_reference(v, DX, DT, w, src, rec, **KW)
    assert torch.allclose(d, dr, rtol=0, atol=1e-13 * dr.abs().max())
    grads = []
    for imaging in (Exact(), TimeProbe(30, "orthogonal", seed=0), DFT(16)):
        vg = v.clone().requires_grad_()
        _data(vg, w, src, rec, imaging=imaging).square().sum().backward()
        grads.append(vg.grad)
    for g in grads[1:]:
        assert torch.allclose(g, grads[0], rtol=0, atol=1e-10 * grads[0].abs().max())


def _bad(**over):
    v, w, src, rec = problem_2d(nt=20)
    args = dict(v=v, dx=DX, dt=DT, wavelet=w, src_pos=src, rec_pos=rec)
    args.update(over)
    kw = {k: args.pop(k) for k in list(args) if k not in
          ("v", "dx", "dt", "wavelet", "src_pos", "rec_pos")}
    return lambda: model(args["v"], args["dx"], args["dt"], args["wavelet"],
                         args["src_pos"], args["rec_pos"], **kw)


@pytest.mark.parametrize("over, match", [
    (dict(v=torch.zeros(12, 15, dtype=torch.float64)), "v must be positive"),
    (dict(v=-torch.ones(12, 15, dtype=torch.float64)), "v must be positive"),
    (dict(v=torch.full((12, 15), float("nan"), dtype=torch.float64)), "v must be positive"),
    (dict(v=torch.full((12,), 2000.0)), "v must be"),
    (dict(src_pos=[[3.0, 15.0]]), "src_pos"),
    (dict(src_pos=[[-0.5, 3.0]]), "src_pos"),
    (dict(src_pos=[[3.0, 4.0, 5.0]]), "src_pos"),
    (dict(rec_pos=[[11.5, 3.0]]), "rec_pos"),
    (dict(rec_pos=torch.zeros(3, 4, 2)), "rec_pos"),
    (dict(wavelet=torch.zeros(3, 20, dtype=torch.float64)), "wavelet"),
    (dict(dx=0.0), "dx"),
    (dict(dt=-1e-3), "dt"),
    (dict(dt=0.05, substeps=None), "dt="),
    (dict(space_order=3), "space_order"),
    (dict(pml_width=-1), "pml_width"),
    (dict(boundary="pml"), "boundary"),
    (dict(max_vel=-1.0), "max_vel"),
    (dict(pml_freq=0.0), "pml_freq"),
    (dict(observed=torch.zeros(2, 5, 19)), "observed"),
    (dict(observed=torch.zeros(2, 4, 20)), "observed"),
    (dict(imaging=TimeProbe(4, "data", seed=0)), "observed is required"),
    (dict(imaging=TimeProbe(4, "hutchpp", seed=0)), "observed is required"),
])
def test_bad_input_names_argument(over, match):
    with pytest.raises(ValueError, match=match):
        _bad(**over)()


def test_bad_strategy_arguments():
    with pytest.raises(ValueError, match="r must"):
        TimeProbe(0)
    with pytest.raises(ValueError, match="probes"):
        TimeProbe(4, probes="sobol")
    with pytest.raises(ValueError, match="stride"):
        TimeProbe(4, stride=0)
    with pytest.raises(ValueError, match="stride"):
        Exact(stride=0)
    with pytest.raises(ValueError, match="frequencies"):
        DFT(0)
    with pytest.raises(TypeError, match="imaging"):
        _bad(imaging="exact")()
    with pytest.raises(ValueError, match="frequencies"):
        v, w, src, rec = problem_2d(nt=20)
        model(v.requires_grad_(), DX, DT, w, src, rec, imaging=DFT([600.0]), **KW)


def test_ricker():
    w = ricker(10.0, 400, 1e-3)
    assert w.dtype == torch.float32 and w.shape == (400,)
    assert int(w.argmax()) == 150 and abs(float(w.max()) - 1) < 1e-6
    with pytest.raises(ValueError, match="freq"):
        ricker(0.0, 10, 1e-3)
    with pytest.raises(ValueError, match="nt"):
        ricker(10.0, 0, 1e-3)
