"""Diagonal estimators against dense truth."""

import pytest
import torch

from backprobe.linalg import MatrixFree, diagonal
from tests.linalg._matrices import decaying, low_rank_psd, nonsymmetric


@pytest.mark.parametrize("method,m", [("hutchinson", 4), ("xdiag", 8)])
@pytest.mark.parametrize("matrix", [decaying, nonsymmetric])
def test_unbiased_entrywise(method, m, matrix):
    a = matrix(20)
    est = torch.stack([diagonal(a, m, method=method, generator=s).value for s in range(300)])
    se = est.std(0) / 300 ** 0.5
    z = (est.mean(0) - a.diagonal()).abs() / (se + 1e-12)
    assert float(z.max()) < 4.5  # 20 entries: max |z| of normals stays below 4.5


def test_standard_errors_are_entrywise_spreads():
    a = decaying(30, 1.0)
    res = [diagonal(a, 16, method="xdiag", generator=s) for s in range(200)]
    spread = torch.stack([r.value for r in res]).std(0)
    reported = torch.stack([r.std_error for r in res]).median(0).values
    ratio = reported / spread
    assert float(ratio.median()) == pytest.approx(1.0, abs=0.35)


def test_xdiag_exact_when_the_sketch_captures_the_range():
    a = low_rank_psd(40, 3)
    assert torch.allclose(diagonal(a, 10, method="xdiag", generator=0).value, a.diagonal())


def test_xdiag_beats_hutchinson_on_a_decaying_spectrum():
    a = decaying(200)

    def err(method):
        return torch.tensor([float((diagonal(a, 40, method=method, generator=s).value
                                    - a.diagonal()).norm()) for s in range(5)]).median()

    assert err("xdiag") < err("hutchinson") / 5


def test_adaptive_and_budget():
    a = decaying(50, 1.0)
    est = diagonal(a, 4, generator=0, rtol=0.02, max_matvecs=400)
    assert est.num_matvecs > 4
    assert float(est.std_error.norm()) <= 0.02 * float(est.value.norm()) \
        or est.num_matvecs + 4 > 400


def test_xdiag_needs_an_adjoint_for_a_nonsymmetric_callable():
    a = nonsymmetric(10)
    op = MatrixFree(lambda x: a @ x, 10, symmetric=False, dtype=torch.float64)
    with pytest.raises(TypeError, match="adjoint"):
        diagonal(op, 4, method="xdiag")
    op = MatrixFree(lambda x: a @ x, 10, adjoint=lambda x: a.T @ x, dtype=torch.float64)
    ref = diagonal(a, 4, method="xdiag", generator=0).value
    assert torch.allclose(diagonal(op, 4, method="xdiag", generator=0).value, ref)


@pytest.mark.parametrize("kwargs,match", [({"method": "xdiag", "num_matvecs": 3}, "num_matvecs"),
                                          ({"method": "diag", "num_matvecs": 4}, "method"),
                                          ({"num_matvecs": 4, "distribution": "sphere"},
                                           "independent")])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        diagonal(torch.eye(10), **kwargs)
    with pytest.raises(ValueError, match="square"):
        diagonal(torch.ones(3, 4), 4)
