"""KFRA against KFLR at batch size 1 and a slow explicit torch.func recursion (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from backprobe.quantities import KFLR, KFRA
from tests import cases

pytestmark = pytest.mark.usefixtures("float64_default")

LOSSES = cases.LOSSES
AFFINE = (nn.Linear, nn.Conv2d)
ARCHS = cases.CHAINS
cnn = cases.cnn


def data(arch: str, n: int, loss: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return cases.data((n, 2, 8, 8) if arch == "cnn" else (n, 4), loss, seed)


run = cases.record_run


def reference_kfra(model: nn.Sequential, loss_fn, x, y) -> dict[str, list[torch.Tensor]]:
    """The KFRA recursion with explicit matrices and per-example block Jacobians."""
    sites = [i for i, m in enumerate(model) if any(True for _ in m.parameters(recurse=False))]
    ins, outs, h = {}, {}, x
    for i, m in enumerate(model):
        ins[i] = h
        h = m(h)
        outs[i] = h
    f, n = h.detach(), x.shape[0]
    d_f = f[0].numel()
    hess = jacrev(jacrev(lambda out: loss_fn(out, y)))(f).reshape(n, d_f, n, d_f)
    gbar = sum(hess[k, :, k, :] for k in range(n))  # sum_n H_n
    result: dict[str, list[torch.Tensor]] = {}
    later = len(model) - 1
    for i in reversed(sites):
        block = model[i + 1:later + 1]
        o = outs[i].detach()

        def one(on, block=block):
            return block(on.unsqueeze(0)).squeeze(0)

        jac = vmap(jacrev(one))(o).reshape(n, -1, o[0].numel())  # [N, D_later, D_i]
        gbar = torch.einsum("nab,ac,ncd->bd", jac, gbar, jac) / n
        later = i
        m, a = model[i], ins[i].detach()
        if isinstance(m, nn.Conv2d):
            c = o.shape[1]
            g = gbar.reshape(c, -1, c, o[0, 0].numel()).sum((1, 3))
            u = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # [N, D_in, S]
            result[f"{i}.weight"] = [g, torch.einsum("nis,njs->ij", u, u) / n]
            result[f"{i}.bias"] = [g]
        elif isinstance(m, nn.Linear):
            result[f"{i}.weight"] = [gbar, a.T @ a / n]
            result[f"{i}.bias"] = [gbar]
        else:  # (1/N) sum_n B_n^T Gbar B_n with B_n the per-example parameter Jacobian
            params = {k: p.detach() for k, p in m.named_parameters()}
            for k in params:

                def out_of(p, an, k=k, m=m, params=params):
                    return functional_call(m, {**params, k: p}, (an.unsqueeze(0),)).flatten()

                b = vmap(jacrev(out_of), in_dims=(None, 0))(params[k], a).flatten(2)
                result[f"{i}.{k}"] = [torch.einsum("nab,ac,ncd->bd", b, gbar, b) / n]
    return result


def assert_factors_close(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


#: every loss and reduction for the MLP and the CNN, two combinations for the other models
CASES = [
    *((arch, loss, red) for arch in ("mlp", "cnn") for loss in LOSSES for red in ("mean", "sum")),
    *((arch, *lr) for arch in ("mlp_tail", "mlp_norm") for lr in (("ce", "mean"), ("mse", "sum"))),
]


@pytest.mark.parametrize(("arch", "loss", "reduction"), CASES)
def test_kfra_equals_kflr_at_batch_size_one(arch, loss, reduction):
    torch.manual_seed(0)
    model = ARCHS[arch]()
    loss_fn = LOSSES[loss](reduction=reduction)
    x, y = data(arch, 1, loss)
    params = run(model, loss_fn, x, y, KFLR(), KFRA())
    for p in params.values():
        assert_factors_close(p.kfra, p.kflr)


#: the slow CNN reference on every loss and on both reductions, not on all six pairs
REF_CASES = [
    c for c in CASES if c[0] != "cnn" or c[1:] in {("ce", "mean"), ("mse", "sum"), ("bce", "mean")}
]


@pytest.mark.parametrize(("arch", "loss", "reduction"), REF_CASES)
def test_kfra_matches_explicit_recursion(arch, loss, reduction):
    torch.manual_seed(1)
    model = ARCHS[arch]()
    loss_fn = LOSSES[loss](reduction=reduction)
    x, y = data(arch, 5, loss, seed=1)
    ref = reference_kfra(model, loss_fn, x, y)
    params = run(model, loss_fn, x, y, KFLR(), KFRA())
    assert set(ref) == set(params)
    for k, p in params.items():
        assert_factors_close(p.kfra, ref[k])
    last = params[f"{len(model) - 1}.weight"] if arch != "mlp_tail" else None
    if last is not None:  # the model output is the last layer's: G equals KFLR's at any N
        assert_factors_close(last.kfra, last.kflr)
        assert not torch.allclose(params["0.weight"].kfra[0], params["0.weight"].kflr[0])


def test_kfra_linear_with_positions_follows_conv_convention():
    """A Linear on ``[N, S, D]`` sums Gbar over position pairs, like KFLR's ``sbar``."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2))
    loss_fn = nn.MSELoss()
    x, y = torch.randn(1, 2, 3), torch.randn(1, 2)
    params = run(model, loss_fn, x, y, KFLR(), KFRA())
    for p in params.values():
        assert_factors_close(p.kfra, p.kflr)


def test_too_many_features_raises():
    model = nn.Sequential(nn.Linear(4, 20), nn.ReLU(), nn.Linear(20, 3))
    loss_fn = nn.CrossEntropyLoss()
    x, y = data("mlp", 3, "ce")
    with pytest.raises(ValueError, match=r"module '0' \(Linear\) has 20 .*max_features=16.*KFLR"):
        run(model, loss_fn, x, y, KFRA(max_features=16))
    params = run(model, loss_fn, x, y, KFRA(max_features=20))
    assert params["0.weight"].kfra[0].shape == (20, 20)
    with pytest.raises(ValueError, match="max_features"):
        KFRA(max_features=0)
    with pytest.raises(ValueError, match="empty batch"):
        run(model, loss_fn, x[:0], y[:0], KFRA())


class Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.mid = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.out(h + self.mid(h))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(torch.tanh(self.hidden(x)))))


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (Skip, r"'inp' reaches the loss without passing through module 'mid'.*residual"),
        (Twice, r"\['hidden'\] are used more than once"),
        (Branches, r"'a' does not feed module 'b'"),
    ],
)
def test_graphs_that_are_not_chains_raise(model, match):
    loss_fn = nn.CrossEntropyLoss()
    x, y = data("mlp", 3, "ce")
    with pytest.raises(ValueError, match=match):
        run(model(), loss_fn, x, y, KFRA())


def test_kfra_float32_and_repr():
    torch.set_default_dtype(torch.float32)
    model = cnn()
    loss_fn = nn.CrossEntropyLoss()
    x, y = data("cnn", 4, "ce")
    params = run(model, loss_fn, x.float(), y, KFRA())
    for p in params.values():
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in p.kfra)
        g = p.kfra[0]
        torch.testing.assert_close(g, g.T)
        assert torch.linalg.eigvalsh(g).min() > -1e-5 * g.abs().max()
    assert repr(KFRA()) == "KFRA(max_features=4096)"
