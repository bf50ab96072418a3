"""Trace estimators against dense truth: exactness, unbiasedness, rates, auto, stopping."""

import statistics

import numpy as np
import pytest
import torch

from backprobe.linalg import (
    MatrixFree,
    as_operator,
    frobenius_norm_squared,
    trace,
)
from tests.linalg._matrices import (
    decaying,
    flat,
    indefinite,
    low_rank_psd,
    nonsymmetric,
    with_spectrum,
)

METHODS = ["hutchinson", "hutchpp", "na_hutchpp", "xtrace", "xnystrace", "auto"]


@pytest.mark.parametrize("method,matrix", [
    (m, a) for m in METHODS for a in ["psd", "indefinite", "nonsymmetric"]
    if m != "xnystrace" or a == "psd"])  # XNysTrace needs a PSD sketch (tested to raise)
def test_unbiased_mean_of_many(method, matrix):
    """Mean of 300 seeded estimates within 4.5 standard errors of the mean of the truth."""
    a = {"psd": decaying(30, 1.0), "indefinite": indefinite(30),
         "nonsymmetric": nonsymmetric(30)}[matrix]
    est = torch.tensor([trace(a, 8, method=method, generator=s).value for s in range(300)])
    se = float(est.std() / 300 ** 0.5)
    assert abs(float(est.mean()) - float(a.trace())) < 4.5 * se + 1e-12


@pytest.mark.parametrize("method,m", [("hutchpp", 12), ("na_hutchpp", 16), ("xtrace", 10),
                                      ("xnystrace", 5), ("auto", 10)])
def test_exact_when_the_sketch_captures_the_range(method, m):
    a = low_rank_psd(40, 3)
    est = trace(a, m, method=method, generator=0)
    assert est.value == pytest.approx(float(a.trace()), rel=1e-8)


def test_rademacher_hutchinson_is_exact_on_a_diagonal():
    a = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
    est = trace(a, 3, generator=0)
    assert est.value == pytest.approx(210.0) and est.std_error == pytest.approx(0.0)


def test_standard_error_matches_the_spread():
    """The reported standard error is, on median, the spread of the estimates (within 30%)."""
    a = decaying(100, 1.0)
    for method in ["hutchinson", "xtrace", "xnystrace"]:
        res = [trace(a, 20, method=method, generator=s) for s in range(200)]
        spread = statistics.pstdev([r.value for r in res])
        reported = statistics.median([r.std_error for r in res])
        assert 0.5 < reported / spread < 1.5, method


def _median_error(a, method, m, seeds=15):
    tr = float(a.trace())
    return statistics.median(abs(trace(a, m, method=method, generator=s).value - tr) / tr
                             for s in range(seeds))


def test_published_rates_on_a_decaying_spectrum():
    """Hutch++ and XTrace: error O(1/m) or faster (4x the matvecs -> at least 3x smaller);
    Hutchinson: O(1/sqrt(m)) (about 2x smaller); deflation beats Hutchinson by far."""
    a = decaying(300)
    for method in ["hutchpp", "xtrace"]:
        small, large = _median_error(a, method, 24), _median_error(a, method, 96)
        assert large < small / 3, (method, small, large)
    h_small, h_large = _median_error(a, "hutchinson", 24, 40), _median_error(a, "hutchinson", 96, 40)
    assert h_small / 3.5 < h_large < h_small / 1.2
    assert _median_error(a, "xtrace", 96) < h_large / 10


def test_auto_chooses_by_the_spectrum():
    assert trace(flat(200), 40, method="auto", generator=0).method == "auto:hutchinson"
    assert trace(decaying(200), 40, method="auto", generator=0).method == "auto:xnystrace"
    skew = decaying(60).clone()
    skew[0, 1] += 1e-3  # not symmetric: no Nystrom
    assert trace(skew, 20, method="auto", generator=0).method == "auto:xtrace"
    signs = (-1.0) ** torch.arange(60)
    a = with_spectrum(signs * torch.arange(1, 61.0) ** -2)  # symmetric indefinite
    assert trace(a, 20, method="auto", generator=0).method == "auto:xtrace"


@pytest.mark.parametrize("matrix", [decaying, flat])
def test_auto_within_1_5x_of_the_best(matrix):
    a = matrix(200)
    errors = {m: _median_error(a, m, 40) for m in ["hutchinson", "xtrace", "xnystrace", "auto"]}
    best = min(v for k, v in errors.items() if k != "auto")
    assert errors["auto"] <= 1.5 * best, errors


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp", "xtrace", "xnystrace", "auto"])
def test_adaptive_stopping(method):
    a = flat(200)
    fixed = trace(a, 10, method=method, generator=0)
    assert fixed.num_matvecs == 10
    est = trace(a, 10, method=method, generator=0, rtol=2e-3, max_matvecs=200)
    assert est.num_matvecs > 10
    assert est.std_error <= 2e-3 * abs(est.value) or est.num_matvecs + 10 > 200
    capped = trace(a, 10, method=method, generator=0, rtol=1e-12, max_matvecs=40)
    assert 10 < capped.num_matvecs <= 40


def test_seeded_and_global_rng_untouched():
    a = flat(50)
    state = torch.get_rng_state()
    first = trace(a, 10, method="xtrace", generator=7)
    assert torch.equal(state, torch.get_rng_state())
    assert trace(a, 10, method="xtrace", generator=7) == first
    g = torch.Generator().manual_seed(7)
    assert trace(a, 10, method="xtrace", generator=g).value == first.value


def test_operator_inputs_agree():
    """Tensor, MatrixFree, callable with shape and scipy LinearOperator: same numbers."""
    from scipy.sparse.linalg import aslinearoperator

    a = decaying(40, 1.0)

    class Shaped:
        shape = (40, 40)
        dtype = torch.float64

        def __call__(self, x):
            return a @ x

    ref = trace(a, 10, method="hutchpp", generator=1).value
    for op in [MatrixFree(lambda x: a @ x, 40, dtype=torch.float64), Shaped(),
               aslinearoperator(a.numpy()), a.numpy()]:
        assert trace(op, 10, method="hutchpp", generator=1).value == pytest.approx(ref)


def test_to_scipy_round_trip():
    from scipy.sparse.linalg import eigsh

    a = decaying(40, 1.0)
    vals = eigsh(as_operator(a).to_scipy(), k=2, which="LA", return_eigenvectors=False)
    assert np.allclose(sorted(vals), [0.5, 1.0])


def test_frobenius_unbiased_and_exact_for_orthogonal():
    a = nonsymmetric(20)
    est = torch.tensor([frobenius_norm_squared(a, 5, generator=s).value for s in range(300)])
    se = float(est.std() / 300 ** 0.5)
    assert abs(float(est.mean()) - float((a * a).sum())) < 4.5 * se
    q = torch.linalg.qr(a).Q
    assert frobenius_norm_squared(q, 2, generator=0).value == pytest.approx(20.0)
    rect = a[:, :7]
    est = frobenius_norm_squared(rect, 4000, generator=0)
    assert abs(est.value - float((rect * rect).sum())) < 5 * est.std_error


class TestBadInput:
    def test_non_square(self):
        with pytest.raises(ValueError, match="square"):
            trace(torch.ones(3, 4), 4)

    @pytest.mark.parametrize("method,m", [("hutchinson", 0), ("hutchpp", 2), ("na_hutchpp", 3),
                                          ("xtrace", 2), ("xtrace", 7), ("xnystrace", 1),
                                          ("auto", 5)])
    def test_too_few_matvecs(self, method, m):
        with pytest.raises(ValueError, match="num_matvecs"):
            trace(torch.eye(20), m, method=method)

    def test_more_probes_than_dimension(self):
        with pytest.raises(ValueError, match="dimension"):
            trace(torch.eye(5), 12, method="xtrace")

    def test_unknown_method_and_distribution(self):
        with pytest.raises(ValueError, match="method"):
            trace(torch.eye(5), 4, method="hutch")
        with pytest.raises(ValueError, match="distribution"):
            trace(torch.eye(5), 4, distribution="normal")

    def test_callable_output_shape(self):
        op = MatrixFree(lambda x: x[:-1], 6)
        with pytest.raises(ValueError, match="returned"):
            trace(op, 4)

    def test_bare_callable_needs_a_size(self):
        with pytest.raises(TypeError, match="MatrixFree"):
            trace(lambda x: x, 4)

    def test_non_psd_to_xnystrace(self):
        with pytest.raises(ValueError, match="PSD"):
            trace(-decaying(30, 1.0), 6, method="xnystrace", generator=0)

    def test_tolerance_with_na_hutchpp(self):
        with pytest.raises(ValueError, match="non-adaptive"):
            trace(torch.eye(8), 8, method="na_hutchpp", rtol=0.1)
