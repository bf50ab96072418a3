"""Randomized SVD, Nystrom, top eigenpairs and spectral density against dense truth."""

import math

import pytest
import torch

from backprobe.linalg import MatrixFree, low_rank, nystrom, spectral_density, top_eigenpairs
from tests.linalg._matrices import decaying, indefinite, low_rank_psd, with_spectrum


def _optimal_error(a, k):
    s = torch.linalg.svdvals(a)
    return float(s[k:].pow(2).sum().sqrt())


def test_randomized_svd_near_optimal():
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(60, 40, dtype=torch.float64, generator=g)).Q
    v = torch.linalg.qr(torch.randn(50, 40, dtype=torch.float64, generator=g)).Q
    a = u @ torch.diag(torch.arange(1, 41.0, dtype=torch.float64) ** -1.0) @ v.T
    for q in (0, 2):
        approx = low_rank(a, 5, oversample=5, power_iters=q, generator=1)
        err = float(torch.linalg.matrix_norm(a - approx.to_dense()))
        assert err <= (1.5 if q == 0 else 1.05) * _optimal_error(a, 5)
        assert approx.num_matvecs == 10 * (2 * q + 2)  # A Omega, 2k per iteration, A^T Q
        assert torch.allclose(approx.u.T @ approx.u, torch.eye(5, dtype=torch.float64))


def test_randomized_svd_exact_on_low_rank_and_batched():
    a = low_rank_psd(30, 3)[:, :20]
    assert torch.allclose(low_rank(a, 3, generator=0).to_dense(), a)
    batch = torch.stack([a, 2 * a, a.flip(0)])
    res = low_rank(batch, 3, oversample=4, generator=0)
    assert res.u.shape == (3, 30, 3) and res.vh.shape == (3, 3, 20)
    assert torch.allclose(res.to_dense(), batch, atol=1e-8)
    padded = low_rank(a[:, :2], 4, oversample=0, generator=0)  # fewer triplets than asked
    assert padded.s.shape == (4,) and float(padded.s[2:].abs().max()) == 0.0


def test_randomized_svd_operator_path():
    a = decaying(50, 1.0)
    op = MatrixFree(lambda x: a @ x, 50, dtype=torch.float64)
    res = low_rank(op, 4, generator=0)
    assert torch.allclose(res.s, torch.tensor([1, 1 / 2, 1 / 3, 1 / 4], dtype=torch.float64))


def test_nystrom_near_optimal_and_psd():
    a = decaying(80, 1.0)
    approx = nystrom(a, 6, oversample=6, generator=0)
    err = float(torch.linalg.matrix_norm(a - approx.to_dense()))
    assert err <= 2.0 * _optimal_error(a, 6)  # one pass, no power iterations
    assert float(approx.s.min()) >= 0 and approx.num_matvecs == 12
    x = low_rank_psd(40, 3)
    assert torch.allclose(nystrom(x, 3, generator=0).to_dense(), x, atol=1e-8)


def test_nystrom_rejects_non_psd():
    with pytest.raises(ValueError, match="PSD"):
        nystrom(indefinite(30), 5, generator=0)
    with pytest.raises(ValueError, match="square"):
        nystrom(torch.ones(4, 5), 2)


@pytest.mark.parametrize("method", ["lanczos", "subspace"])
def test_top_eigenpairs(method):
    lam = torch.cat([torch.tensor([10.0, 9.0, 8.0]), torch.linspace(0, 4, 97)])
    a = with_spectrum(lam)
    res = top_eigenpairs(a, 3, method=method, tol=1e-8, generator=0)
    assert res.converged
    assert torch.allclose(res.values, torch.tensor([10.0, 9.0, 8.0], dtype=torch.float64))
    assert torch.allclose(a @ res.vectors, res.vectors * res.values, atol=1e-5)


def test_lanczos_largest_algebraic_vs_magnitude():
    a = with_spectrum(torch.cat([torch.tensor([-5.0, 3.0]), torch.linspace(-1, 1, 48)]))
    assert float(top_eigenpairs(a, 1, generator=0).values[0]) == pytest.approx(3.0)
    assert float(top_eigenpairs(a, 1, which="LM", generator=0).values[0]) == pytest.approx(-5.0)


def test_spectral_density():
    lam = torch.tensor([1.0] * 10 + [2.0] * 10 + [5.0] * 10)
    a = with_spectrum(lam)
    sd = spectral_density(a, num_probes=6, num_steps=5, generator=0)
    assert sd.num_matvecs == 30
    assert torch.allclose(sd.weights.sum(1), torch.ones(6, dtype=torch.float64))
    nodes = sd.nodes[sd.weights > 1e-8]  # three distinct eigenvalues: found exactly
    dist = (nodes[:, None] - lam.unique().double()[None, :]).abs().min(1).values
    assert float(dist.max()) < 1e-6
    grid = torch.linspace(-1, 7, 2001)
    dens = sd.density(grid, sigma=0.05)
    assert float(dens.sum() * (grid[1] - grid[0])) == pytest.approx(1.0, abs=1e-3)
    # the trace from the quadrature is Hutchinson with unit probes: unbiased
    est = [spectral_density(a, 4, 3, generator=s).trace().value for s in range(200)]
    t = torch.tensor(est)
    assert abs(float(t.mean()) - 80.0) < 4.5 * float(t.std()) / math.sqrt(200)


def test_bad_input():
    with pytest.raises(ValueError, match="rank"):
        low_rank(torch.eye(4), 0)
    with pytest.raises(ValueError, match="k must"):
        top_eigenpairs(torch.eye(4), 5)
    with pytest.raises(ValueError, match="num_steps"):
        spectral_density(torch.eye(4), 2, 5)
