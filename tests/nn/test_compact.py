"""Compact activations: exact gradients, 1-bit masks, int8 window offsets."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import backprobe
from backprobe.nn import pack_bits, unpack_bits
from backprobe.testing import reference_grads


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=300))
def test_pack_unpack_round_trip(bits):
    mask = torch.tensor(bits)
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (len(bits) + 7) // 8
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


def _saved_bytes(fn, x):
    with backprobe.saved_tensors() as log:
        out = fn(x)
    return out, log


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("module", [backprobe.nn.ReLU, lambda inplace: backprobe.nn.LeakyReLU(0.1, inplace)])
def test_relu_exact_and_one_bit(module, inplace):
    act = module(inplace=inplace) if module is backprobe.nn.ReLU else module(inplace)
    x0 = torch.randn(3, 5, 7, 9, dtype=torch.float64)
    x0[0, 0, 0, :3] = 0.0  # ties at zero follow torch's convention
    x = x0.clone().requires_grad_(True)
    ref_x = x0.clone().requires_grad_(True)
    ref_act = nn.ReLU() if isinstance(act, backprobe.nn.ReLU) else nn.LeakyReLU(0.1)
    g = torch.randn_like(x0)
    with backprobe.saved_tensors() as log:
        out = act(x * 1.0)  # a non-leaf, so in-place is allowed
    out.backward(g)
    ref_act(ref_x).backward(g)
    torch.testing.assert_close(out, ref_act(x0))
    torch.testing.assert_close(x.grad, ref_x.grad)
    n = x0.numel()
    assert log.bytes == (n + 7) // 8  # 1 bit per element, rounded up to a byte (CPU)


@pytest.mark.parametrize(
    "dim,kwargs,shape",
    [
        (1, dict(kernel_size=3, stride=2), (2, 3, 11)),
        (2, dict(kernel_size=2), (2, 3, 8, 8)),  # tiling windows: the reshape path
        (2, dict(kernel_size=(2, 3)), (2, 3, 8, 9)),
        (3, dict(kernel_size=2), (1, 2, 4, 6, 2)),
        (1, dict(kernel_size=3), (2, 12)),  # unbatched 1-D
        (2, dict(kernel_size=2), (2, 3, 7, 8)),  # floor mode crops the last row
        (3, dict(kernel_size=2), (1, 2, 5, 3, 4)),
        (2, dict(kernel_size=2, ceil_mode=True), (2, 3, 7, 7)),  # partial windows: general path
        (2, dict(kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2), ceil_mode=True), (2, 3, 9, 7)),
        (2, dict(kernel_size=3, stride=1), (3, 7, 6)),  # unbatched, overlapping windows
        (3, dict(kernel_size=2, padding=1), (1, 2, 5, 4, 3)),
    ],
)
def test_maxpool_exact_with_int8_offsets(dim, kwargs, shape):
    pool = {1: backprobe.nn.MaxPool1d, 2: backprobe.nn.MaxPool2d, 3: backprobe.nn.MaxPool3d}[dim](**kwargs)
    x = torch.randn(shape, dtype=torch.float64)
    out = pool(x.requires_grad_(False))
    g = torch.randn_like(out)
    ref = reference_grads(pool, x, g)
    xx = x.clone().requires_grad_(True)
    with backprobe.saved_tensors() as log:
        out = pool(xx)
    out.backward(g)
    torch.testing.assert_close(xx.grad, ref["input"])
    assert log.bytes == out.numel()  # one int8 offset per output


def test_maxpool_with_indices_is_refused():
    with pytest.raises(ValueError, match="return_indices"):
        backprobe.nn.MaxPool2d(2, return_indices=True)(torch.randn(1, 1, 4, 4, requires_grad=True))


def test_compact_modules_follow_no_grad():
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(backprobe.nn.ReLU()(x), F.relu(x))
        assert torch.equal(backprobe.nn.MaxPool2d(2)(x), F.max_pool2d(x, 2))


def test_maxpool_ties_pick_the_first_maximum_like_torch():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, :2, :2] = 1.0  # a tie in the first window, zeros elsewhere
    for pool in (backprobe.nn.MaxPool2d(2), backprobe.nn.MaxPool2d(2, stride=1)):
        g = torch.ones_like(pool(x))
        ref = reference_grads(pool, x, g)
        xx = x.clone().requires_grad_(True)
        pool(xx).backward(g)
        torch.testing.assert_close(xx.grad, ref["input"])


def test_maxpool_nan_wins_like_torch():
    x = torch.randn(1, 2, 4, 6)
    x[0, 0, 1, 1] = float("nan")
    for pool in (backprobe.nn.MaxPool2d(2), backprobe.nn.MaxPool2d(3, stride=1)):
        out = pool(x.clone().requires_grad_(True))
        ref = nn.MaxPool2d(pool.kernel_size, pool.stride)(x)
        torch.testing.assert_close(out, ref, equal_nan=True)


def test_relu_backward_zeroes_inactive_units_even_for_inf_gradients():
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    backprobe.nn.ReLU()(x * 1.0).backward(torch.tensor([float("inf"), 1.0]))
    assert x.grad.tolist() == [0.0, 1.0]
