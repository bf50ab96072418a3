"""Tests for backprobe.models: every builder, its shapes, gradients and module hygiene."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backprobe.app import models
from backprobe.app.models import MODELS, build

# Options that keep the big networks small enough for fast CPU tests.
SMALL = {"vgg": {"width": 0.125}, "resnet18": {"width": 0.125}}

# (in_channels, image_size) each model is tested on; 8x8 only where the layout allows it.
SHAPES = {
    "mnist_cnn": [(1, 8), (1, 28), (3, 32)],
    "lenet5": [(1, 28), (3, 32)],
    "c3d": [(1, 28), (3, 32)],
    "allcnnc": [(1, 28), (3, 32)],
    "vgg": [(1, 8), (1, 28), (3, 32)],
    "resnet18": [(1, 8), (3, 32)],
    "softmax_regression": [(1, 8), (1, 28), (3, 32)],
    "mlp": [(1, 8), (1, 28), (3, 32)],
    "unet": [(1, 8), (3, 32)],
}

CASES = [(name, c, s) for name, shapes in SHAPES.items() for c, s in shapes]


def test_registry_is_complete():
    assert set(SHAPES) == set(MODELS)
    for name, builder in MODELS.items():
        assert callable(builder) and builder.__doc__, name


@pytest.mark.parametrize("name,channels,size", CASES)
def test_logits_shape_and_backward(name, channels, size):
    torch.manual_seed(0)
    num_classes = 7
    model = build(name, channels, num_classes, size, **SMALL.get(name, {}))
    x = torch.randn(3, channels, size, size)
    out = model(x)
    # the segmentation U-Net gives per-pixel logits
    assert out.shape == ((3, num_classes, size, size) if name == "unet" else (3, num_classes))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_only_standard_modules_each_called_once(name):
    channels, size = SHAPES[name][-1]
    model = build(name, channels, 10, size, **SMALL.get(name, {}))
    calls: dict[int, int] = {}
    handles = []
    for module in model.modules():
        if not list(module.children()):  # a leaf
            assert type(module).__module__.startswith("torch.nn.modules"), type(module)
            if isinstance(module, nn.ReLU):
                assert not module.inplace
            handles.append(
                module.register_forward_hook(
                    lambda m, i, o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1)
                )
            )
        else:
            assert isinstance(
                module, (nn.Sequential, nn.ModuleList, models.BasicBlock, models.UNet)
            ), type(module)
    model(torch.randn(2, channels, size, size))
    for h in handles:
        h.remove()
    leaves = [m for m in model.modules() if not list(m.children())]
    # every leaf module (ReLUs included) is a separate instance, used exactly once per forward
    assert all(calls.get(id(m)) == 1 for m in leaves)
    assert any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in leaves)


def test_mnist_cnn_layout():
    model = models.mnist_cnn(1, 10, 28)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (3, 3), (1, 1)),
        (16, 32, (3, 3), (1, 1)),
        (32, 32, (3, 3), (1, 1)),
    ]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3
    linear = model[-1]
    assert isinstance(linear, nn.Linear) and linear.in_features == 32 * 3 * 3
    assert models.mnist_cnn(1, 10, 8)[-1].in_features == 32


def test_lenet5_and_c3d_flatten_sizes():
    assert models.lenet5(1, 10, 28)[7].in_features == 16 * 5 * 5
    assert models.lenet5(3, 10, 32)[7].in_features == 16 * 6 * 6
    c3d = models.c3d(3, 10, 32)
    linears = [m for m in c3d.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (128 * 3 * 3, 512),
        (512, 256),
        (256, 10),
    ]
    assert all(bool((m.bias.detach() == 0).all()) for m in linears)  # DeepOBS init


def test_allcnnc_options():
    model = models.allcnnc(3, 100, 32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 9 and convs[-1].out_channels == 100
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 8
    assert not isinstance(model[-3], nn.ReLU)
    det = models.allcnnc(3, 10, 32, dropout=False)
    assert not any(isinstance(m, nn.Dropout) for m in det.modules())
    x = torch.randn(2, 3, 32, 32)
    det.train()
    torch.testing.assert_close(det(x), det(x))  # deterministic without dropout
    relu = models.allcnnc(3, 10, 32, dropout=False, final_relu=True)
    assert sum(isinstance(m, nn.ReLU) for m in relu.modules()) == 9
    assert (relu(x) >= 0).all()


def test_vgg_has_no_batchnorm_and_width():
    full = models.vgg(3, 10, 32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in full.modules())
    convs = [m.out_channels for m in full.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [64, 128, 256, 256, 512, 512, 512, 512]
    small = models.vgg(3, 10, 32, width=0.25)
    assert [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)][0] == 16
    with pytest.raises(ValueError, match="width"):
        models.vgg(3, 10, 32, width=0)


def test_resnet18_structure():
    model = models.resnet18(3, 10, 32, width=0.125)
    blocks = [m for m in model.modules() if isinstance(m, models.BasicBlock)]
    assert len(blocks) == 8
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 8 * 2 + 3
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 8 * 2 and len({id(r) for r in relus}) == len(relus)
    first = model[0]
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    model.eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_mlp_and_softmax_regression():
    m = models.mlp(1, 10, 8, hidden=16)
    assert [x.out_features for x in m if isinstance(x, nn.Linear)] == [16, 16, 10]
    s = models.softmax_regression(3, 5, (4, 6))
    assert s[1].in_features == 3 * 4 * 6
    assert s(torch.randn(2, 3, 4, 6)).shape == (2, 5)


def test_non_square_input():
    model = build("mnist_cnn", 1, 10, (16, 24))
    assert model(torch.randn(2, 1, 16, 24)).shape == (2, 10)


def test_build_names_and_errors():
    with pytest.raises(ValueError, match="mnist_cnn.*resnet18"):
        build("alexnet", 3, 10, 32)
    assert isinstance(build("3c3d", 3, 10, 32), nn.Module)
    assert isinstance(build("MNIST-CNN", 1, 10, 28), nn.Module)
    with pytest.raises(ValueError, match="too small"):
        build("lenet5", 1, 10, 8)
    with pytest.raises(ValueError, match="too small"):
        build("mnist_cnn", 1, 10, 4)
    with pytest.raises(ValueError, match="image_size"):
        build("mlp", 1, 10, 0)


def test_unet_shapes_skips_and_errors():
    torch.manual_seed(0)
    model = models.unet(3, 4, (32, 48), depth=3, base=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(convs) == 2 * 3 + 2 + 2 * 3 + 1 and len(ups) == 3
    assert [(u.in_channels, u.out_channels, u.stride) for u in ups] == [
        (64, 32, (2, 2)), (32, 16, (2, 2)), (16, 8, (2, 2))]
    # decoder blocks take [up, skip] concatenated: twice the level's channels
    assert [b[0].in_channels for b in model.up_blocks] == [64, 32, 16]
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    x = torch.randn(2, 3, 32, 48)
    out = model(x)
    assert out.shape == (2, 4, 32, 48)
    y = torch.randint(0, 4, (2, 32, 48), generator=torch.Generator().manual_seed(0))
    nn.CrossEntropyLoss()(out, y).backward()  # per-pixel labels [N, H, W]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # padded convs keep positions aligned: a one-pixel change reaches the output at that
    # pixel and not beyond the network's receptive field (40 pixels away)
    x2 = x.clone()
    x2[0, :, 5, 7] += 1.0
    diff = (model(x2) - out).detach().abs().sum(1)[0]
    assert diff[5, 7] > 0 and diff[0, 47] == 0
    assert isinstance(build("unet", 1, 2, 16), models.UNet)
    with pytest.raises(ValueError, match="divisible"):
        models.unet(1, 2, 12, depth=3)
    with pytest.raises(ValueError, match="depth"):
        models.unet(1, 2, 16, depth=0)
    with pytest.raises(ValueError, match="base"):
        models.unet(1, 2, 16, base=0)
