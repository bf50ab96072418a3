"""SAG, SAGA, SVRG and their Langevin versions, on every storage, against direct references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from backprobe.optim import (
    SAG,
    SAGA,
    SAGALD,
    SVRG,
    SVRGLD,
    Dense,
    Factored,
    LowRank,
    Partition,
    full_gradient,
    low_rank,
    partition_batches,
)
from backprobe.quantities import BatchGrad

pytestmark = pytest.mark.usefixtures("float64_default")

N = 12


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 4), nn.Tanh(),
        nn.Linear(4, 3),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 1, 5, 5, generator=g), torch.randint(0, 3, (N,), generator=g)


BATCHES = [[0, 3, 5, 7], [1, 2, 4, 6], [8, 9, 10, 11], [0, 1, 8, 9], [3, 4, 10, 11]]


def _per_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p: dict[str, torch.Tensor], xn: torch.Tensor, yn: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xn.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yn.unsqueeze(0))

    return vmap(grad(f), in_dims=(None, 0, 0))(params, x, y)


def _reference(model: nn.Module, batches: list[list[int]], lr: float, sag: bool = False,
               group: int = 1) -> list[torch.Tensor]:
    """SAGA/SAG with an explicit table of per-example (or per-group) gradients."""
    x, y = _data()
    names = [k for k, _ in model.named_parameters()]
    slots = math.ceil(N / group)
    sizes = torch.tensor([min(N, (k + 1) * group) - k * group for k in range(slots)],
                         dtype=torch.float64)
    table = {k: torch.zeros(slots, *p.shape) for k, p in model.named_parameters()}
    seen = torch.zeros(slots, dtype=torch.bool)
    traj = []
    for b in batches:
        idx = torch.tensor(b)
        pe = _per_example(model, x[idx], y[idx])
        ks = idx // group
        with torch.no_grad():
            for k, p in model.named_parameters():
                new = table[k].clone()
                for s in ks.unique():
                    new[s] = pe[k][ks == s].mean(0)
                if sag:
                    seen[ks] = True
                    w = sizes * seen
                    d = (w.view(-1, *[1] * p.dim()) * new).sum(0) / w.sum()
                    d = d + pe[k].mean(0) - new[ks].mean(0)
                else:
                    avg = (sizes.view(-1, *[1] * p.dim()) * table[k]).sum(0) / N
                    d = pe[k].mean(0) - table[k][ks].mean(0) + avg
                table[k] = new
                p.sub_(lr * d)
        traj.append(torch.cat([p.detach().flatten() for _, p in model.named_parameters()]))
    assert names
    return traj


def _run(opt_factory, batches: list[list[int]], recorded: bool = True) -> list[torch.Tensor]:
    model = _model()
    opt = opt_factory(model)
    x, y = _data()
    traj = []
    for b in batches:
        idx = torch.tensor(b)
        opt.zero_grad()
        if recorded:
            with opt.record(model):
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        else:
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step(idx)
        traj.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return traj


@pytest.mark.parametrize("storage", [Dense(), Factored(), LowRank(8), Partition(1)])
def test_saga_equals_reference(storage):
    """Exact storages (LowRank(8) covers the full rank of these layers) give SAGA exactly."""
    ref = _reference(_model(), BATCHES, lr=0.3)
    got = _run(lambda m: SAGA(m.parameters(), lr=0.3, num_examples=N, storage=storage), BATCHES)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_sag_equals_reference():
    ref = _reference(_model(), BATCHES, lr=0.3, sag=True)
    got = _run(lambda m: SAG(m.parameters(), lr=0.3, num_examples=N), BATCHES)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_partition_equals_reference_with_group_means():
    batches = [[0, 1, 5, 6], [2, 9, 10, 11], [3, 4, 7, 8]]
    ref = _reference(_model(), batches, lr=0.2, group=5)
    got = _run(lambda m: SAGA(m.parameters(), lr=0.2, num_examples=N, storage=Partition(5)),
               batches)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_partition_whole_groups_need_no_recording():
    """Partition sampling: a batch that is one whole group is read from p.grad."""
    batches = [b.tolist() for _ in range(2)
               for b in partition_batches(N, 5, torch.Generator().manual_seed(0))]
    ref = _reference(_model(), batches, lr=0.2, group=5)
    got = _run(lambda m: SAGA(m.parameters(), lr=0.2, num_examples=N, storage=Partition(5)),
               batches, recorded=False)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_factored_storage_holds_per_example_gradients_exactly():
    model = _model()
    opt = SAGA(model.parameters(), lr=0.0, num_examples=N)  # lr 0: parameters stay put
    x, y = _data()
    for b in BATCHES[:3]:
        idx = torch.tensor(b)
        with opt.record(model):
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step(idx)
    pe = _per_example(model, x, y)
    kinds = sorted(t.kind for t in opt.tables)
    assert kinds == ["dense", "factored", "factored"]  # all conv parameters in one table
    names = dict(zip(map(id, model.parameters()), [k for k, _ in model.named_parameters()]))
    params = list(model.parameters())
    for t in opt.tables:
        for s in range(N):
            w = torch.zeros(N)
            w[s] = 1
            for i, r in zip(t.params, t.weighted_sum(t.get(torch.arange(N)), w)):
                ref = pe[names[id(params[i])]][s]
                torch.testing.assert_close(r.reshape(ref.shape), ref)
    # Linear layers: D_in + D_out numbers per example, bias inside the factors
    assert opt.memory()["table"] == N * 8 * (
        2 * 9 + 2 + (18 + 4) + (4 + 3)
    )


def test_low_rank_error_is_optimal():
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(6, 30, 12, generator=g)).Q
    v = torch.linalg.qr(torch.randn(6, 40, 12, generator=g)).Q
    s = torch.logspace(0, -3, 12).expand(6, 12)
    m = (u * s[:, None]) @ v.mT
    for r in (1, 3, 5):
        a, b = low_rank(m, r, generator=torch.Generator().manual_seed(1))
        err = torch.linalg.matrix_norm(m - a @ b)
        best = s[:, r:].square().sum(-1).sqrt()
        assert torch.all(err <= best * (1 + 1e-6)), (r, err, best)


def test_lowrank_table_shapes_and_bytes():
    model = _model()
    opt = SAGA(model.parameters(), lr=0.1, num_examples=N, storage=LowRank(1))
    x, y = _data()
    idx = torch.tensor(BATCHES[0])
    with opt.record(model):
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
    opt.step(idx)
    # conv weight [2, 1, 3, 3] stored as rank 1: 2 + 9 numbers; conv bias dense 2;
    # Linear layers factored
    assert opt.memory()["table"] == N * 8 * ((2 + 9) + 2 + (18 + 4) + (4 + 3))


def test_saga_converges_faster_than_sgd_on_least_squares():
    torch.manual_seed(0)
    n, d = 64, 5
    a, x_true = torch.randn(n, d), torch.randn(d)
    b = a @ x_true + 0.1 * torch.randn(n)

    def run(kind: str) -> float:
        model = nn.Linear(d, 1, bias=False)
        nn.init.zeros_(model.weight)
        opt = SAGA(model.parameters(), lr=0.05, num_examples=n) if kind == "saga" else \
            torch.optim.SGD(model.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(0)
        for _ in range(60):
            for idx in torch.randperm(n, generator=gen).split(4):
                opt.zero_grad()
                with BatchGradRecord(model, kind == "saga", opt):
                    (0.5 * (model(a[idx]).squeeze(1) - b[idx]).square().mean()).backward()
                opt.step(idx) if kind == "saga" else opt.step()
        with torch.no_grad():
            return float(0.5 * (model(a).squeeze(1) - b).square().mean())

    opt_loss = float(0.5 * (a @ torch.linalg.lstsq(a, b).solution - b).square().mean())
    assert run("saga") - opt_loss < 1e-8
    assert run("sgd") - opt_loss > 1e-6


class BatchGradRecord:
    def __init__(self, model, on, opt):
        self.ctx = opt.record(model) if on else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *a):
        if self.ctx is not None:
            self.ctx.__exit__(*a)


def test_nesterov_saga_is_sgd_nesterov_on_the_saga_direction():
    """With momentum, the direction goes through torch.optim.SGD's momentum rule."""
    ref_model = _model()
    ref = SAGA(ref_model.parameters(), lr=1.0, num_examples=N)
    sgd = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    got = _run(lambda m: SAGA(m.parameters(), lr=0.1, num_examples=N, momentum=0.9,
                              nesterov=True), BATCHES)
    x, y = _data()
    for b, g in zip(BATCHES, got):
        idx = torch.tensor(b)
        ref.zero_grad()
        with ref.record(ref_model):
            nn.functional.cross_entropy(ref_model(x[idx]), y[idx]).backward()
        before = [p.detach().clone() for p in ref_model.parameters()]
        ref.step(idx)  # lr 1: p_new = p - d
        with torch.no_grad():
            for p, p0 in zip(ref_model.parameters(), before):
                p.grad = p0 - p  # the SAGA direction
                p.copy_(p0)
        sgd.step()
        torch.testing.assert_close(
            g, torch.cat([p.detach().flatten() for p in ref_model.parameters()])
        )


def test_state_dict_round_trip_resumes_identically():
    storage = Partition(2, LowRank(1))

    def make(m):
        return SAGA(m.parameters(), lr=0.2, num_examples=N, storage=storage, momentum=0.5,
                    generator=3)

    full = _run(make, BATCHES)
    model = _model()
    opt = make(model)
    x, y = _data()

    def steps(model, opt, batches):
        for b in batches:
            idx = torch.tensor(b)
            opt.zero_grad()
            with opt.record(model):
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step(idx)

    steps(model, opt, BATCHES[:2])
    sd = opt.state_dict()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model2 = _model()
    model2.load_state_dict(saved)
    opt2 = make(model2)
    opt2.load_state_dict(sd)
    steps(model2, opt2, BATCHES[2:])
    torch.testing.assert_close(
        torch.cat([p.detach().flatten() for p in model2.parameters()]), full[-1],
        rtol=0, atol=0,
    )


def test_svrg_estimate_is_unbiased():
    """Averaged over all single-example batches, SVRG's direction is grad F at theta."""
    model = _model()
    x, y = _data()
    fg = full_gradient(model, nn.functional.cross_entropy, [(x[:5], y[:5]), (x[5:], y[5:])], N)
    opt = SVRG(model.parameters(), lr=1.0, full_gradient=fg, snapshot_every=100)
    opt.snapshot()
    with torch.no_grad():  # move away from the snapshot
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theta = [p.detach().clone() for p in model.parameters()]
    opt.steps = 1
    dirs = []
    for i in range(N):
        def closure(i=i):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            dirs.append(torch.cat([(t - p).flatten() for t, p in zip(theta, model.parameters())]))
            for p, t in zip(model.parameters(), theta):
                p.copy_(t)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    exact = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(torch.stack(dirs).mean(0), exact)


def test_svrg_converges_on_least_squares():
    torch.manual_seed(0)
    n, d = 64, 5
    a, x_true = torch.randn(n, d), torch.randn(d)
    b = a @ x_true + 0.1 * torch.randn(n)
    model = nn.Linear(d, 1, bias=False)
    nn.init.zeros_(model.weight)

    def loss_fn(out, t):
        return 0.5 * (out.squeeze(1) - t).square().mean()

    fg = full_gradient(model, loss_fn, [(a, b)], n)
    opt = SVRG(model.parameters(), lr=0.05, full_gradient=fg, snapshot_every=16)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        for idx in torch.randperm(n, generator=gen).split(4):
            def closure(idx=idx):
                opt.zero_grad()
                loss = loss_fn(model(a[idx]), b[idx])
                loss.backward()
                return loss

            opt.step(closure)
    opt_loss = float(loss_fn((a @ torch.linalg.lstsq(a, b).solution)[:, None], b))
    with torch.no_grad():
        assert float(loss_fn(model(a), b)) - opt_loss < 1e-8


def _gaussian_chain(kind: str, steps: int) -> tuple[torch.Tensor, float, float]:
    """Posterior of a Gaussian mean: f_i = 0.5 ||theta - x_i||^2, U = sum f_i."""
    n, d = 20, 2
    data = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    model = nn.Linear(d, 1, bias=False)  # theta = weight[0]; f_i needs theta only
    theta = model.weight

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return 0.5 * (theta[0] - data[idx]).square().sum(1).mean()

    lr = 0.002
    if kind == "saga":
        opt = SAGALD([theta], lr=lr, num_examples=n, storage=Dense(), generator=0)
    else:
        fg = full_gradient(model, lambda _o, i: batch_loss(i), [(torch.zeros(n, d),
                                                                 torch.arange(n))], n)
        opt = SVRGLD([theta], lr=lr, num_examples=n, full_gradient=fg, snapshot_every=10,
                     generator=0)
    gen = torch.Generator().manual_seed(1)
    samples = []
    with torch.no_grad():
        theta.zero_()
    for t in range(steps):
        idx = torch.randperm(n, generator=gen)[:4]
        if kind == "saga":
            opt.zero_grad()
            batch_loss(idx).backward()
            with torch.no_grad():  # the recorded terms of a mean-reduced loss: grad f_i / B
                theta.grad_batch = ((theta[0] - data[idx]) / len(idx)).unsqueeze(1)
            opt.step(idx)
        else:
            def closure(idx=idx):
                opt.zero_grad()
                loss = batch_loss(idx)
                loss.backward()
                return loss

            opt.step(closure)
        if t >= steps // 5:
            samples.append(theta.detach()[0].clone())
    s = torch.stack(samples)
    # exact law of the discretised chain with the exact gradient: a Gaussian AR(1) with
    # theta' = (1 - lr n) theta + lr n mean + sqrt(2 lr) xi, variance 2 lr / (1 - (1 - lr n)^2)
    rho = 1 - lr * n
    return s - data.mean(0), 2 * lr / (1 - rho**2), rho


@pytest.mark.parametrize("kind", ["saga", "svrg"])
def test_variance_reduced_langevin_targets_the_posterior(kind):
    dev, var, rho = _gaussian_chain(kind, 3000)
    n_eff = dev.shape[0] * (1 - rho) / (1 + rho)  # AR(1) effective sample size
    se = math.sqrt(var / n_eff)
    assert torch.all(dev.mean(0).abs() < 5 * se), (dev.mean(0), se)
    # sample variance within 5 standard errors (var of a variance estimate ~ 2 var^2 / n_eff)
    assert torch.all((dev.var(0) - var).abs() < 5 * var * math.sqrt(2 / n_eff)), dev.var(0)


def test_bad_input_raises():
    model = _model()
    x, y = _data()
    opt = SAGA(model.parameters(), lr=0.1, num_examples=N)
    idx = torch.tensor([0, 1, 2])
    with opt.record(model):
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        opt.step(torch.tensor([0, 1, 12]))
    with pytest.raises(ValueError, match="3 examples but indices has 2"):
        opt.step(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1-D integer"):
        opt.step(torch.tensor([0.0, 1.0, 2.0]))
    opt.step(idx)
    model.zero_grad()
    nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()  # not recorded
    with pytest.raises(ValueError, match="not recorded this step"):
        opt.step(idx)
    with pytest.raises(ValueError, match="Linear layers cannot stay factored"):
        Partition(4, Factored())
    with pytest.raises(ValueError, match="lr"):
        SAGA(model.parameters(), lr=-1.0, num_examples=N)
    with pytest.raises(ValueError, match="num_examples"):
        SAGA(model.parameters(), lr=0.1, num_examples=0)
    with pytest.raises(TypeError, match="storage"):
        SAGA(model.parameters(), lr=0.1, num_examples=N, storage="dense")
    with pytest.raises(ValueError, match="rank"):
        LowRank(0)
    opt = SAGA(model.parameters(), lr=0.1, num_examples=N)
    with opt.record(model):
        nn.functional.cross_entropy(model(x[[1, 1]]), y[[1, 1]]).backward()
    with pytest.raises(ValueError, match="distinct"):
        opt.step(torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="closure"):
        SVRG(model.parameters(), lr=0.1, full_gradient=lambda: None, snapshot_every=2).step(
            None)


def test_dense_storage_records_batch_grad():
    model = _model()
    opt = SAGA(model.parameters(), lr=0.1, num_examples=N, storage=Dense())
    assert isinstance(opt.quantity(), BatchGrad)
    got = _run(lambda m: SAGA(m.parameters(), lr=0.1, num_examples=N, storage=Dense()),
               BATCHES[:1])
    assert got[0].isfinite().all()


def test_seed_is_deprecated_and_means_generator():
    """seed= still works (DeprecationWarning) and draws exactly what generator= does."""
    def run(**kw):
        theta = torch.zeros(3, requires_grad=True)
        opt = SAGALD([theta], lr=0.01, num_examples=4, storage=Dense(), **kw)
        for step in range(3):
            idx = torch.tensor([step % 4])
            with opt.record(nn.Sequential()):
                pass
            theta.grad_batch = theta.detach().unsqueeze(0) - 1.0
            theta.grad = theta.grad_batch[0].clone()
            opt.step(idx)
        return theta.detach()

    with pytest.warns(DeprecationWarning, match="generator="):
        old = run(seed=5)
    assert torch.equal(old, run(generator=5))
    assert torch.equal(old, run(generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="not both"), pytest.warns(DeprecationWarning):
        SAGA([torch.zeros(1, requires_grad=True)], lr=0.1, num_examples=2, seed=1, generator=1)
    with pytest.raises(ValueError, match="nesterov"):
        SAGA([torch.zeros(1, requires_grad=True)], lr=0.1, num_examples=2, nesterov=True)
