"""Reference networks built from standard ``torch.nn`` layers only (no torchvision).

Every builder has the signature ``builder(in_channels, num_classes, image_size, **options)``
and returns a plain :class:`torch.nn.Module` mapping images ``[B, in_channels, H, W]`` to logits
``[B, num_classes]`` (the segmentation :func:`unet`: per-pixel logits
``[B, num_classes, H, W]``). ``image_size`` is an int (square images) or ``(H, W)``.

Conventions that keep the models easy to convert (e.g. to swap layers for probed ones):

* only ``torch.nn`` modules (Conv2d, Linear, ReLU, MaxPool2d, BatchNorm2d, Dropout, Flatten,
  AdaptiveAvgPool2d, ConvTranspose2d, Sequential; :class:`UNet` only concatenates its skip
  connections); no functional activations;
* every activation is its own ``nn.ReLU()`` instance (never shared, never in-place), so each
  module is called exactly once per forward pass;
* flatten sizes are computed with a dummy forward pass, so the builders work for any input
  size the layout allows (a too-small input raises ``ValueError``).

Example:
    >>> model = build("mnist_cnn", in_channels=1, num_classes=10, image_size=28)
    >>> model(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "MODELS",
    "BasicBlock",
    "allcnnc",
    "build",
    "c3d",
    "lenet5",
    "mlp",
    "mnist_cnn",
    "resnet18",
    "softmax_regression",
    "resnet34",
    "UNet",
    "unet",
    "vgg",
    "vgg16",
]

ImageSize = int | tuple[int, int]


def _hw(image_size: ImageSize) -> tuple[int, int]:
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = (int(s) for s in image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def _scaled(channels: int, width: float) -> int:
    if width <= 0:
        raise ValueError(f"width multiplier must be positive, got {width}")
    return max(1, round(channels * width))


def _flat_features(features: nn.Module, in_channels: int, image_size: ImageSize, name: str) -> int:
    """Number of features after ``features`` for one input, by a dummy forward pass."""
    h, w = _hw(image_size)
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, in_channels, h, w))
    except RuntimeError as err:
        raise ValueError(
            f"{name}: input size {h}x{w} is too small for this layout ({err}); "
            "use larger images (e.g. load(..., size=28))"
        ) from err
    finally:
        features.train(was_training)
    if out.numel() == 0:
        raise ValueError(f"{name}: input size {h}x{w} is too small for this layout")
    return int(out[0].numel())


def _conv_relu_pool(
    in_channels: int, convs: Sequence[tuple[int, int, int]], pool: Callable[[], nn.Module]
) -> nn.Sequential:
    """``Conv(kernel, padding)-ReLU-pool()`` per ``(channels, kernel, padding)``; ``Flatten``."""
    layers: list[nn.Module] = []
    c = in_channels
    for out, kernel, padding in convs:
        layers += [nn.Conv2d(c, out, kernel, padding=padding), nn.ReLU(), pool()]
        c = out
    return nn.Sequential(*layers, nn.Flatten())


def _vgg_features(
    in_channels: int, config: Sequence[int | str], pool: Callable[[], nn.Module], width: float = 1.0
) -> list[nn.Module]:
    """``Conv(3x3, pad 1)-ReLU`` per channel entry (times ``width``), ``pool()`` per ``"M"``."""
    layers: list[nn.Module] = []
    c = in_channels
    for item in config:
        if item == "M":
            layers.append(pool())
        elif isinstance(item, int) and item > 0:
            out = _scaled(item, width)
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            c = out
        else:
            raise ValueError(f"vgg: config entries must be positive ints or 'M', got {item!r}")
    return layers


def _classifier(
    in_features: int, hidden: Sequence[int], num_classes: int, dropout: float | None = None
) -> list[nn.Module]:
    """``Linear-ReLU`` (then ``Dropout(dropout)`` if given) per hidden width, last ``Linear``."""
    layers: list[nn.Module] = []
    n = in_features
    for h in hidden:
        layers += [nn.Linear(n, h), nn.ReLU(), *([nn.Dropout(dropout)] if dropout else [])]
        n = h
    return [*layers, nn.Linear(n, num_classes)]


def _init_deepobs(model: nn.Module, *, conv_bias: float, linear: bool) -> None:
    """DeepOBS initialisation: Xavier-normal conv weights, Xavier-uniform linear weights."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, conv_bias)
        elif linear and isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.constant_(m.bias, 0.0)


def mnist_cnn(in_channels: int, num_classes: int, image_size: ImageSize = 28) -> nn.Module:
    """The MNIST CNN of the XConv paper (three 3x3 conv blocks and a linear classifier).

    Layout: ``Conv(in->16, 3x3, pad 1)-ReLU-MaxPool(2)``, ``Conv(16->32, 3x3, pad 1)-ReLU-
    MaxPool(2)``, ``Conv(32->32, 3x3, pad 1)-ReLU-MaxPool(2)``, ``Flatten``,
    ``Linear(32*h*w -> num_classes)``. 28x28 inputs end at 3x3 (288 features), 8x8 inputs at
    1x1 (32 features); any size >= 8 works.

    Reference: Thatipelli, Sam, Louboutin, Siahkoohi, Wang & Herrmann, "XConv: Low-memory
    stochastic backpropagation for convolutional layers", arXiv:2106.06998 (MNIST network).

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (int or ``(H, W)``).

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.

    Raises:
        ValueError: The input is smaller than 8x8.
    """
    features = _conv_relu_pool(in_channels, [(16, 3, 1), (32, 3, 1), (32, 3, 1)],
                               lambda: nn.MaxPool2d(2))
    n = _flat_features(features, in_channels, image_size, "mnist_cnn")
    return nn.Sequential(*features, nn.Linear(n, num_classes))


def lenet5(in_channels: int, num_classes: int, image_size: ImageSize = 28) -> nn.Module:
    """LeNet-5 with ReLU activations and max pooling.

    Layout: ``Conv(in->6, 5x5, pad 2)-ReLU-MaxPool(2)``, ``Conv(6->16, 5x5)-ReLU-MaxPool(2)``,
    ``Flatten``, ``Linear(16*h*w -> 120)-ReLU-Linear(120 -> 84)-ReLU-Linear(84 -> classes)``.
    For 28x28 inputs ``h = w = 5`` (400 features); for 32x32 ``h = w = 6``. Needs inputs of at
    least 12x12.

    Reference: LeCun et al., "Gradient-based learning applied to document recognition",
    Proc. IEEE 1998 (tanh and average pooling replaced by ReLU and max pooling).

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (int or ``(H, W)``).

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.

    Raises:
        ValueError: The input is too small.
    """
    features = _conv_relu_pool(in_channels, [(6, 5, 2), (16, 5, 0)], lambda: nn.MaxPool2d(2))
    n = _flat_features(features, in_channels, image_size, "lenet5")
    return nn.Sequential(*features, *_classifier(n, (120, 84), num_classes))


def c3d(in_channels: int, num_classes: int, image_size: ImageSize = 32) -> nn.Module:
    """The DeepOBS "3C3D" network (CIFAR-10 / CIFAR-100 test problems).

    Layout: ``Conv(in->64, 5x5, valid)-ReLU-MaxPool(3, stride 2, pad 1)``,
    ``Conv(64->96, 3x3, valid)-ReLU-MaxPool(3, 2, pad 1)``,
    ``Conv(96->128, 3x3, pad 1)-ReLU-MaxPool(3, 2, pad 1)``, ``Flatten``,
    ``Linear(->512)-ReLU-Linear(512->256)-ReLU-Linear(256->classes)``. For 32x32 inputs the
    feature map ends at 3x3 (1152 features), as in DeepOBS. The symmetric padding of 1 gives the
    same output sizes as TensorFlow's "same" pooling used by DeepOBS. Initialisation as in
    DeepOBS: Xavier-normal conv weights, Xavier-uniform linear weights, zero biases.

    Reference: Schneider, Balles & Hennig, "DeepOBS: A Deep Learning Optimizer Benchmark
    Suite", ICLR 2019 (``cifar10_3c3d``).

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (int or ``(H, W)``); at least 9x9.

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.

    Raises:
        ValueError: The input is too small.
    """
    features = _conv_relu_pool(in_channels, [(64, 5, 0), (96, 3, 0), (128, 3, 1)],
                               lambda: nn.MaxPool2d(3, stride=2, padding=1))
    n = _flat_features(features, in_channels, image_size, "c3d")
    model = nn.Sequential(*features, *_classifier(n, (512, 256), num_classes))
    _init_deepobs(model, conv_bias=0.0, linear=True)
    return model


def allcnnc(
    in_channels: int,
    num_classes: int,
    image_size: ImageSize = 32,
    *,
    dropout: bool = True,
    final_relu: bool = False,
) -> nn.Module:
    """ALL-CNN-C in the DeepOBS layout (``cifar100_allcnnc``).

    Layout: ``Dropout(0.2)``, ``Conv(in->96, 3x3, pad 1)-ReLU``, ``Conv(96->96, 3x3, pad 1)-
    ReLU``, ``Conv(96->96, 3x3, stride 2, pad 1)-ReLU``, ``Dropout(0.5)``,
    ``Conv(96->192, 3x3, pad 1)-ReLU``, ``Conv(192->192, 3x3, pad 1)-ReLU``,
    ``Conv(192->192, 3x3, stride 2, pad 1)-ReLU``, ``Dropout(0.5)``,
    ``Conv(192->192, 3x3, valid)-ReLU``, ``Conv(192->192, 1x1)-ReLU``,
    ``Conv(192->classes, 1x1)``, global average pool, ``Flatten``. For 32x32 inputs the last
    feature map is 6x6. Initialisation as in DeepOBS: Xavier-normal weights, biases 0.1.

    DeepOBS (and Springenberg et al.) also apply a ReLU after the last 1x1 convolution, which
    makes every logit non-negative; that is off by default here and available as
    ``final_relu=True``. Stride-2 convolutions pad symmetrically, where TensorFlow's "same"
    pads only bottom/right; output sizes agree.

    Reference: Springenberg et al., "Striving for Simplicity: The All Convolutional Net",
    ICLR 2015 workshop; Schneider et al., DeepOBS, ICLR 2019.

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (int or ``(H, W)``); at least 9x9.
        dropout: Include the three dropout layers (``False`` makes the network deterministic,
            handy for gradient checks).
        final_relu: Apply a ReLU after the last convolution, as DeepOBS does.

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.

    Raises:
        ValueError: The input is too small.
    """

    def drop(p: float) -> list[nn.Module]:
        return [nn.Dropout(p)] if dropout else []

    layers: list[nn.Module] = [
        *drop(0.2),
        nn.Conv2d(in_channels, 96, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(96, 96, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(96, 96, 3, stride=2, padding=1),
        nn.ReLU(),
        *drop(0.5),
        nn.Conv2d(96, 192, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(192, 192, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(192, 192, 3, stride=2, padding=1),
        nn.ReLU(),
        *drop(0.5),
        nn.Conv2d(192, 192, 3),
        nn.ReLU(),
        nn.Conv2d(192, 192, 1),
        nn.ReLU(),
        nn.Conv2d(192, num_classes, 1),
    ]
    if final_relu:
        layers.append(nn.ReLU())
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    model = nn.Sequential(*layers)
    _flat_features(model, in_channels, image_size, "allcnnc")
    _init_deepobs(model, conv_bias=0.1, linear=False)
    return model


VGG11: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
"""The VGG-11 ("A") feature layout: channel counts and ``"M"`` for 2x2 max pooling."""


def vgg(
    in_channels: int,
    num_classes: int,
    image_size: ImageSize = 32,
    *,
    width: float = 1.0,
    config: Sequence[int | str] = VGG11,
) -> nn.Module:
    """A VGG-style CIFAR network without batch normalisation (VGG-11 layout by default).

    Layout: for each entry of ``config``, ``Conv(3x3, pad 1)-ReLU`` with that many channels, or
    ``MaxPool(2, ceil_mode=True)`` for ``"M"``; then ``Flatten``,
    ``Linear(512*s*s -> 512)-ReLU-Linear(512 -> classes)`` (all channel counts times
    ``width``). For 32x32 inputs ``s = 1``; ``ceil_mode`` lets smaller inputs (28x28, 8x8) run
    through all five pools.

    Reference: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition", ICLR 2015 (configuration A), with the small CIFAR classifier head.

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (int or ``(H, W)``).
        width: Channel multiplier (e.g. ``0.125`` for fast tests).
        config: Feature layout, default :data:`VGG11`.

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.

    Raises:
        ValueError: Bad ``width`` or ``config`` entry.
    """
    layers = _vgg_features(in_channels, config, lambda: nn.MaxPool2d(2, ceil_mode=True), width)
    features = nn.Sequential(*layers, nn.Flatten())
    n = _flat_features(features, in_channels, image_size, "vgg")
    return nn.Sequential(*features, *_classifier(n, (_scaled(512, width),), num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN pairs and a (projected) identity shortcut.

    ``out = relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))`` with
    ``shortcut = Conv1x1(stride)-BN`` when the stride or channel count changes, else identity
    (an empty ``nn.Sequential``).

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution and the shortcut.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``[B, in_planes, H, W]``.

        Returns:
            ``[B, planes, H / stride, W / stride]``.
        """
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def resnet18(
    in_channels: int, num_classes: int, image_size: ImageSize = 32, *, width: float = 1.0
) -> nn.Module:
    """ResNet-18, CIFAR variant.

    Layout: stem ``Conv(in->64, 3x3, stride 1, pad 1, no bias)-BN-ReLU`` (no initial max pool),
    four stages of two :class:`BasicBlock` each with 64, 128, 256, 512 channels (stride 1, 2,
    2, 2), ``AdaptiveAvgPool2d(1)``, ``Flatten``, ``Linear(512 -> classes)``; channel counts
    times ``width``. Works for any input size >= 1 thanks to the adaptive pool.

    Reference: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; the CIFAR
    stem as in the widely used ``kuangliu/pytorch-cifar`` implementation.

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (only validated; the network is size-agnostic).
        width: Channel multiplier (e.g. ``0.125`` for fast tests).

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.
    """
    _hw(image_size)
    planes = [_scaled(c, width) for c in (64, 128, 256, 512)]
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, planes[0], 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(planes[0]),
        nn.ReLU(),
    ]
    c = planes[0]
    for i, p in enumerate(planes):
        stride = 1 if i == 0 else 2
        layers.append(nn.Sequential(BasicBlock(c, p, stride), BasicBlock(p, p, 1)))
        c = p
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


VGG16: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)
"""The VGG-16 ("D") feature layout: 13 conv 3x3 layers and five 2x2 max pools."""


def vgg16(
    in_channels: int,
    num_classes: int,
    image_size: ImageSize = 224,
    *,
    head: str = "imagenet",
    dropout: bool = True,
) -> nn.Module:
    """VGG-16 (configuration D) without batch normalisation, as in torchvision's ``vgg16``.

    Layout: :data:`VGG16` features (``Conv(3x3, pad 1)-ReLU`` per channel entry,
    ``MaxPool(2)`` per ``"M"``), then one of two heads:

    * ``head="imagenet"``: ``AdaptiveAvgPool2d(7)``, ``Flatten``,
      ``Linear(512*7*7 = 25088 -> 4096)-ReLU-Dropout-Linear(4096 -> 4096)-ReLU-Dropout-
      Linear(4096 -> classes)``. With 3 input channels and 1000 classes this has 138,357,544
      parameters (torchvision's count).
    * ``head="cifar"``: ``Flatten``, ``Linear(512 -> 512)-ReLU-Linear(512 -> 512)-ReLU-
      Linear(512 -> classes)`` on the 1x1 feature map of a 32x32 input (for other sizes the
      first linear layer takes ``512*h*w`` features).

    The builder works on the meta device (``with torch.device("meta"): vgg16(3, 1000)``),
    which builds the full-size network without allocating its parameters.

    Reference: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition", ICLR 2015 (configuration D).

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (int or ``(H, W)``); at least 32x32.
        head: ``"imagenet"`` or ``"cifar"``.
        dropout: Include the two ``Dropout(0.5)`` layers of the imagenet head.

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.

    Raises:
        ValueError: Unknown ``head`` or an input that is too small.
    """
    if head not in ("imagenet", "cifar"):
        raise ValueError(f"vgg16: head must be 'imagenet' or 'cifar', got {head!r}")
    layers = _vgg_features(in_channels, VGG16, lambda: nn.MaxPool2d(2))
    if head == "imagenet":
        features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten())
        n = _flat_features(features, in_channels, image_size, "vgg16")
        head_layers = _classifier(n, (4096, 4096), num_classes, 0.5 if dropout else None)
    else:
        features = nn.Sequential(*layers, nn.Flatten())
        n = _flat_features(features, in_channels, image_size, "vgg16")
        head_layers = _classifier(n, (512, 512), num_classes)
    return nn.Sequential(*features, *head_layers)


def resnet34(
    in_channels: int,
    num_classes: int,
    image_size: ImageSize = 224,
    *,
    variant: str = "imagenet",
) -> nn.Module:
    """ResNet-34: :class:`BasicBlock` stages of 3, 4, 6, 3 blocks.

    Layout: a stem, four stages with 64, 128, 256, 512 channels (first block of stages 2-4 with
    stride 2 and a ``Conv1x1-BN`` shortcut), ``AdaptiveAvgPool2d(1)``, ``Flatten``,
    ``Linear(512 -> classes)``. Stems:

    * ``variant="imagenet"``: ``Conv(in->64, 7x7, stride 2, pad 3, no bias)-BN-ReLU-
      MaxPool(3, stride 2, pad 1)``, as torchvision's ``resnet34`` (21,797,672 parameters with
      3 input channels and 1000 classes, 17,024 of them batch-norm affine parameters);
    * ``variant="cifar"``: ``Conv(in->64, 3x3, stride 1, pad 1, no bias)-BN-ReLU``, no max
      pool, as :func:`resnet18`.

    Works on the meta device (nothing here runs a forward pass).

    Reference: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (only validated; the network is size-agnostic).
        variant: ``"imagenet"`` or ``"cifar"``.

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.

    Raises:
        ValueError: Unknown ``variant`` or a non-positive ``image_size``.
    """
    _hw(image_size)
    if variant == "imagenet":
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
    elif variant == "cifar":
        layers = [
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        ]
    else:
        raise ValueError(f"resnet34: variant must be 'imagenet' or 'cifar', got {variant!r}")
    c = 64
    for i, (p, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
        stride = 1 if i == 0 else 2
        stage = [BasicBlock(c, p, stride)] + [BasicBlock(p, p, 1) for _ in range(blocks - 1)]
        layers.append(nn.Sequential(*stage))
        c = p
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def softmax_regression(in_channels: int, num_classes: int, image_size: ImageSize) -> nn.Module:
    """Multinomial logistic regression: ``Flatten``, ``Linear(C*H*W -> classes)``.

    Reference: DeepOBS ``mnist_logreg`` (Schneider et al., ICLR 2019).

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (int or ``(H, W)``).

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.
    """
    h, w = _hw(image_size)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, num_classes))


def mlp(
    in_channels: int, num_classes: int, image_size: ImageSize, *, hidden: int = 128
) -> nn.Module:
    """A two-hidden-layer perceptron.

    Layout: ``Flatten``, ``Linear(C*H*W -> hidden)-ReLU-Linear(hidden -> hidden)-ReLU-
    Linear(hidden -> classes)``.

    Args:
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (int or ``(H, W)``).
        hidden: Hidden width.

    Returns:
        ``nn.Sequential``: ``[B, C, H, W] -> [B, num_classes]``.
    """
    h, w = _hw(image_size)
    features = in_channels * h * w
    return nn.Sequential(nn.Flatten(), *_classifier(features, (hidden, hidden), num_classes))


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """``Conv(3x3, pad 1)-ReLU-Conv(3x3, pad 1)-ReLU``."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """U-Net encoder-decoder with skip connections (Ronneberger et al., 2015), padded convs.

    Encoder level ``i`` (``i = 0 .. depth-1``): a double ``Conv-ReLU`` block with
    ``base * 2**i`` channels, then ``MaxPool2d(2)``; a bottleneck block with
    ``base * 2**depth`` channels; each decoder level: ``ConvTranspose2d(2, stride 2)`` halving
    the channels and doubling the size, concatenation with the encoder output of that level
    (``[up, skip]`` along channels) and a double ``Conv-ReLU`` block; a final 1x1 conv to
    ``num_classes``. Shapes: ``[B, in_channels, H, W] -> [B, num_classes, H, W]`` (per-pixel
    logits, e.g. for ``nn.CrossEntropyLoss`` with labels ``[B, H, W]``).

    Attributes:
        down: the encoder blocks; ``pools``: their max pools; ``bottleneck``;
        ups: the transposed convolutions; ``up_blocks``: the decoder blocks; ``head``: 1x1 conv.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, base: int) -> None:
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            _double_conv(c_in, c) for c_in, c in zip([in_channels, *chans[:depth - 1]],
                                                     chans[:depth], strict=True))
        self.pools = nn.ModuleList(nn.MaxPool2d(2) for _ in range(depth))
        self.bottleneck = _double_conv(chans[depth - 1], chans[depth])
        self.ups = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2)
                                 for i in reversed(range(depth)))
        self.up_blocks = nn.ModuleList(_double_conv(2 * chans[i], chans[i])
                                       for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W] -> [B, num_classes, H, W]`` logits."""
        skips = []
        for block, pool in zip(self.down, self.pools, strict=True):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for up, block in zip(self.ups, self.up_blocks, strict=True):
            # pop: once concatenated, a skip tensor is referenced by nothing (a list holding
            # every skip until the end kept ~1.75 full-resolution maps alive in the decoder)
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def unet(in_channels: int, num_classes: int, image_size: ImageSize = 256, *, depth: int = 3,
         base: int = 16) -> nn.Module:
    """A small U-Net for semantic segmentation (per-pixel logits), see :class:`UNet`.

    Args:
        in_channels: input channels.
        num_classes: classes per pixel (output channels).
        image_size: ``H`` (or ``(H, W)``); each must be divisible by ``2**depth``.
        depth: number of pooling levels (>= 1).
        base: channels of the first level (doubled per level, >= 1).

    Returns:
        :class:`UNet`, ``[B, in_channels, H, W] -> [B, num_classes, H, W]``.

    Raises:
        ValueError: ``depth`` or ``base`` below 1, or a size not divisible by ``2**depth``.

    Example:
        >>> unet(3, 5, 32)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 5, 32, 32])
    """
    for name, v in (("depth", depth), ("base", base)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"unet: {name} must be a positive integer, got {v!r}")
    h, w = _hw(image_size)
    if h % 2**depth or w % 2**depth:
        raise ValueError(f"unet: image_size {h}x{w} must be divisible by 2**depth = {2**depth}")
    return UNet(in_channels, num_classes, depth, base)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist_cnn": mnist_cnn,
    "lenet5": lenet5,
    "c3d": c3d,
    "allcnnc": allcnnc,
    "vgg": vgg,
    "resnet18": resnet18,
    "softmax_regression": softmax_regression,
    "mlp": mlp,
    "unet": unet,
}
"""Model builders by name; each is ``builder(in_channels, num_classes, image_size, **opts)``."""


def build(
    name: str, in_channels: int, num_classes: int, image_size: ImageSize, **options: object
) -> nn.Module:
    """Build the model ``name`` from :data:`MODELS`.

    Args:
        name: A key of :data:`MODELS` (``"3c3d"`` is accepted for ``"c3d"``, and dashes for
            underscores).
        in_channels: Input channels.
        num_classes: Number of logits.
        image_size: Input size (int or ``(H, W)``).
        **options: Builder-specific options (``width``, ``dropout``, ``hidden``, ...).

    Returns:
        The model, ``[B, in_channels, H, W] -> [B, num_classes]`` (``unet``: per-pixel
        logits ``[B, num_classes, H, W]``).

    Raises:
        ValueError: Unknown name (the message lists the valid ones) or an input size the
            layout cannot take.
    """
    key = name.strip().lower().replace("-", "_")
    key = {"3c3d": "c3d"}.get(key, key)
    if key not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[key](in_channels, num_classes, image_size, **options)
