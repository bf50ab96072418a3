"""peak_memory: exact figures on small models (deterministic, no timing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backprobe.peak import peak_memory


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10))


def _grad_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_cpu_peak_is_gradients_plus_the_live_output_gradient() -> None:
    # While the first layer's weight gradient is formed, every weight gradient (about 4 MB)
    # and that layer's output gradient (256 x 1000 floats) are alive: a hand lower bound.
    # Nothing else of that size can be alive then, so the peak sits within a few KiB of it.
    net = _mlp()
    x, y = torch.randn(256, 1000), torch.randint(0, 10, (256,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    res = peak_memory(net, x, y, nn.CrossEntropyLoss(), optimizer=opt)
    bound = _grad_bytes(net) + 256 * 1000 * 4
    assert bound <= res.peak <= bound + 16 * 1024
    assert res.where is not None and (res.where.phase, res.where.module) == ("backward", "0")
    # after the step only the gradients remain above the baseline (momentum existed before)
    assert res.end == _grad_bytes(net)
    phases = res.by_phase()
    assert set(phases) == {"forward", "loss", "backward", "step"}
    # forward holds at most the linear output and the ReLU output (2 x 256 x 1000 floats)
    assert 256 * 1000 * 4 <= phases["forward"] <= 2 * 256 * 1000 * 4 + 16 * 1024


def test_first_optimizer_step_counts_its_state_without_warmup() -> None:
    net = _mlp()
    x, y = torch.randn(32, 1000), torch.randint(0, 10, (32,))
    opt = torch.optim.Adam(net.parameters())
    cold = peak_memory(net, x, y, nn.CrossEntropyLoss(), optimizer=opt, warmup=0)
    warm = peak_memory(net, x, y, nn.CrossEntropyLoss(), optimizer=opt, warmup=1)
    # Adam's two moments (2 x the parameters) are created during the first step
    assert cold.end - warm.end >= 2 * _grad_bytes(net)
    assert warm.end == _grad_bytes(net)


def test_saved_activations_raise_the_peak() -> None:
    # A deeper stack keeps every hidden activation until backward: the forward peak grows
    # with the depth by at least one [N, D] float tensor per ReLU.
    torch.manual_seed(0)
    deep = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(200, 200), nn.ReLU())])
    x, y = torch.randn(512, 200), torch.randn(512, 200)
    res = peak_memory(deep, x, y, nn.MSELoss())
    assert res.by_phase()["forward"] >= 6 * 512 * 200 * 4
    assert len([s for s in res.segments if s.phase == "forward" and s.module]) == 12
    assert "peak" in res.table(top=3)


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [({"model": 3}, TypeError), ({"x": [1.0]}, TypeError), ({"loss_fn": 1}, TypeError),
     ({"optimizer": object()}, TypeError), ({"warmup": -1}, ValueError)],
)
def test_bad_arguments(kwargs: dict, err: type) -> None:
    args = {"model": nn.Linear(3, 2), "x": torch.randn(4, 3), "y": torch.randn(4, 2),
            "loss_fn": nn.MSELoss()}
    args.update(kwargs)
    with pytest.raises(err):
        peak_memory(args.pop("model"), args.pop("x"), args.pop("y"), args.pop("loss_fn"), **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_matches_the_same_bound() -> None:
    net = _mlp().cuda()
    x, y = torch.randn(256, 1000, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    res = peak_memory(net, x, y, nn.CrossEntropyLoss(), optimizer=opt)
    bound = _grad_bytes(net) + 256 * 1000 * 4
    # the caching allocator rounds blocks up to 512 bytes and cuBLAS may keep a workspace
    assert bound <= res.peak <= bound + 8 * 2**20
    assert res.baseline > 0 and res.device.startswith("cuda")
