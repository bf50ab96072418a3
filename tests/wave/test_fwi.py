"""FWI: the misfit and its gradient over shot chunks, preconditioning, the inversion loop."""

import pytest
import torch

from backprobe.wave import Exact
from backprobe.wave.fwi import (
    Misfit,
    Precondition,
    Survey,
    fwi,
    model_error,
    simulate,
    surface_survey,
)
from backprobe.wave.velocity_models import layered, smooth, water_rows

SHAPE = (16, 28)


def _setup(dtype=torch.float64, shots=3, nt=160):
    v = layered(SHAPE, dtype=dtype)
    survey = surface_survey(SHAPE, dx=10.0, dt=1e-3, nt=nt, freq=20.0, shots=shots,
                            space_order=4, pml_width=8, dtype=dtype)
    return v, survey, simulate(v, survey)


def test_misfit_is_zero_at_truth_and_chunks_agree():
    v, survey, d = _setup()
    f_true, g_true = Misfit(survey, d)(v)
    assert f_true == pytest.approx(0.0, abs=1e-20)
    assert float(g_true.abs().max()) < 1e-12
    v0 = smooth(v, 2.0)
    whole = Misfit(survey, d)
    f1, g1 = whole(v0)
    f2, g2 = Misfit(survey, d, shots_per_batch=1)(v0)
    assert f1 > 0 and f1 == pytest.approx(f2, rel=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14 * float(g1.abs().max()))
    assert whole.per_shot.shape == (3,) and float(whole.per_shot.sum()) == pytest.approx(f1)
    # Normalised: 1/2 sum ||F(v) - d||^2 / sum ||d||^2 (plain sum without normalisation).
    raw, _ = Misfit(survey, d, normalize=False)(v0)
    assert raw * whole.scale == pytest.approx(f1, rel=1e-12)
    assert whole.max_nbytes > 0


def test_misfit_gradient_matches_autograd_of_the_sum():
    v, survey, d = _setup(shots=2)
    v0 = smooth(v, 2.0)
    f, g = Misfit(survey, d, normalize=False)(v0)
    vv = v0.clone().requires_grad_(True)
    loss = 0.5 * (survey.model(vv, Exact()) - d).pow(2).sum()
    loss.backward()
    assert f == pytest.approx(float(loss), rel=1e-12)
    torch.testing.assert_close(g, vv.grad, rtol=1e-10, atol=1e-14 * float(g.abs().max()))


def test_fwi_decreases_misfit_and_respects_bounds():
    v, survey, d = _setup(dtype=torch.float32, shots=4, nt=200)
    rows = water_rows(v)
    v0 = smooth(v, 3.0, fixed_rows=rows)
    seen = []
    res = fwi(v0, survey, d, iterations=4, lower=1450.0, upper=3000.0,
              precondition=Precondition(water_rows=rows), v_true=v,
              callback=lambda it, x, f: seen.append(it))
    assert seen == [1, 2, 3, 4] and len(res.history) == 5 and len(res.model_errors) == 5
    assert res.history[-1] < 0.7 * res.history[0]
    assert min(res.history) == res.history[-1] or res.history[-1] < res.history[0]
    assert float(res.v.min()) >= 1450.0 and float(res.v.max()) <= 3000.0
    assert torch.equal(res.v[:rows], v0[:rows])  # water fixed by the preconditioner
    assert res.model_errors[0] == pytest.approx(model_error(v0.clamp(1450.0, 3000.0), v))
    assert res.evaluations >= 5 and res.state is not None and res.state.iteration == 4


def test_fwi_lbfgsb_decreases_misfit():
    pytest.importorskip("scipy")
    v, survey, d = _setup(dtype=torch.float32, shots=2, nt=200)
    v0 = smooth(v, 3.0, fixed_rows=water_rows(v))
    res = fwi(v0, survey, d, iterations=3, method="lbfgsb", lower=1450.0, upper=4300.0,
              precondition=Precondition(water_rows=water_rows(v)))
    assert res.history[-1] < 0.8 * res.history[0]
    assert float(res.v.min()) >= 1450.0 - 1e-3 and float(res.v.max()) <= 4300.0 + 1e-3


def test_precondition_weights():
    src = torch.tensor([[1.0, 10.0]])
    p = Precondition(water_rows=2, source_radius=3.0, depth_power=1.0)
    w = p.weight((12, 20), src, dtype=torch.float64)
    assert w.shape == (12, 20) and float(w.min()) == 0.0 and float(w.max()) <= 1.0
    assert torch.all(w[:2] == 0)
    assert float(w[3, 10]) == 0.0            # within the mute radius (distance 2)
    assert float(w[11, 0]) == pytest.approx(1.0)   # far away at the bottom: full weight
    assert float(w[5, 0]) < float(w[10, 0])        # depth scaling grows downwards
    g = torch.ones(12, 20, dtype=torch.float64)
    torch.testing.assert_close(p(g, src), w)
    with pytest.raises(ValueError, match="water_rows"):
        Precondition(water_rows=-1)
    with pytest.raises(ValueError, match="source_radius"):
        Precondition(source_radius=float("nan"))


def test_observed_with_wrong_shape_raises():
    v, survey, d = _setup(shots=2)
    with pytest.raises(ValueError, match=r"observed must have shape \[shots, n_rec, nt\]"):
        Misfit(survey, d[:, :, :-1])
    with pytest.raises(ValueError, match="observed must have shape"):
        fwi(v, survey, d[:1], iterations=1)
    with pytest.raises(ValueError, match="all zero"):
        Misfit(survey, torch.zeros_like(d))


def test_bad_arguments_raise():
    v, survey, d = _setup(shots=2)
    with pytest.raises(ValueError, match="method"):
        fwi(v, survey, d, method="adam")
    with pytest.raises(ValueError, match="iterations"):
        fwi(v, survey, d, iterations=0)
    with pytest.raises(ValueError, match="v0 must be finite and positive"):
        fwi(v * float("nan"), survey, d)
    with pytest.raises(ValueError, match="shots_per_batch"):
        Misfit(survey, d, shots_per_batch=0)
    with pytest.raises(ValueError, match="shots must be in"):
        Misfit(survey, d, shots=[0, 5])
    with pytest.raises(ValueError, match="src_pos"):
        Survey(dx=10.0, dt=1e-3, wavelet=survey.wavelet, src_pos=torch.zeros(2, 4),
               rec_pos=survey.rec_pos)
    with pytest.raises(ValueError, match="rec_pos"):
        Survey(dx=10.0, dt=1e-3, wavelet=survey.wavelet, src_pos=survey.src_pos,
               rec_pos=torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="wavelet"):
        Survey(dx=10.0, dt=1e-3, wavelet=torch.zeros(3, 10), src_pos=survey.src_pos,
               rec_pos=survey.rec_pos)
    with pytest.raises(ValueError, match="dx"):
        Survey(dx=0.0, dt=1e-3, wavelet=survey.wavelet, src_pos=survey.src_pos,
               rec_pos=survey.rec_pos)
    with pytest.raises(ValueError, match="shots"):
        surface_survey(SHAPE, dx=10.0, dt=1e-3, nt=10, freq=10.0, shots=0)


def test_survey_select_and_3d():
    survey = surface_survey((6, 7, 8), dx=10.0, dt=1e-3, nt=20, freq=10.0, shots=3, receivers=5)
    assert survey.ndim == 3 and survey.n_shots == 3 and survey.n_rec == 5 and survey.nt == 20
    sub = survey.select([2, 0])
    assert torch.equal(sub.src_pos, survey.src_pos[[2, 0]])
    assert sub.data_shape() == (2, 5, 20)


def test_misfit_with_probing_strategies():
    from backprobe.wave import TimeProbe

    v, survey, d = _setup(shots=2, nt=60)
    v0 = smooth(v, 2.0)
    _, g_exact = Misfit(survey, d)(v0)
    # Orthogonal probes spanning every step give the exact gradient (observed is plumbed through
    # for data-informed probes, which must run).
    _, g_full = Misfit(survey, d, imaging=TimeProbe(60, "orthogonal", seed=0))(v0)
    torch.testing.assert_close(g_full, g_exact, rtol=1e-8, atol=1e-10 * float(g_exact.abs().max()))
    m = Misfit(survey, d, imaging=TimeProbe(8, "data", seed=0), shots_per_batch=1)
    f, g = m(v0)
    assert torch.isfinite(g).all() and f > 0
    exact_bytes = Misfit(survey, d, shots_per_batch=1)
    exact_bytes(v0)
    assert 0 < m.max_nbytes < exact_bytes.max_nbytes
