"""Shared test cases: layer configurations, networks, losses and data generators.

Every estimator and quantity test draws its layers from :data:`LAYERS` (one list per op
family in :data:`LAYER_FAMILIES`): adding a layer type to the library is one op file plus
one entry here, and the contract, probe, AOP and quantity tests then cover it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

F64 = torch.float64


# -- layers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCase:
    """One layer configuration: a plain torch module type, its arguments and an input shape."""

    module_type: type[nn.Module]
    kwargs: dict[str, Any]
    input_shape: tuple[int, ...]
    name: str = field(default="")

    def make(self, dtype: torch.dtype = F64) -> nn.Module:
        """A fresh plain torch module (parameters from the global RNG, seeded per test)."""
        return self.module_type(**self.kwargs).to(dtype)

    def input(self, seed: int = 0, dtype: torch.dtype = F64, batch: int | None = None
              ) -> torch.Tensor:
        """A seeded random input (``batch`` overrides the first dim)."""
        shape = self.input_shape if batch is None else (batch, *self.input_shape[1:])
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)

    def estimated(self, estimator: Any, dtype: torch.dtype = F64) -> nn.Module:
        """The module converted in place to its drop-in with ``estimator``.

        Its input (a plain tensor, like a data batch) is estimated all the same
        (``exact_held_inputs=False``): these cases test the estimator itself.
        """
        import backprobe

        return backprobe.convert(self.make(dtype), estimator, layers=(self.module_type,),
                                 compact_activations=False, exact_held_inputs=False)

    def __str__(self) -> str:
        return self.name or self.module_type.__name__


def _cases(family: str, *specs: tuple[type[nn.Module], dict[str, Any], tuple[int, ...]]
           ) -> list[LayerCase]:
    return [LayerCase(t, kw, shape, f"{family}{i}") for i, (t, kw, shape) in enumerate(specs)]


#: Op family -> its configurations: odd ones (non-square, stride, dilation, groups,
#: asymmetric and non-zero padding modes, 1-D and 3-D, positions for Linear).
LAYER_FAMILIES: dict[str, list[LayerCase]] = {
    "linear": _cases(
        "linear",
        (nn.Linear, dict(in_features=12, out_features=5), (4, 2, 12)),
        (nn.Linear, dict(in_features=8, out_features=3, bias=False), (6, 8)),
    ),
    "conv": _cases(
        "conv",
        (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1),
                         padding=(1, 2), dilation=(1, 2), groups=2), (3, 4, 9, 7)),
        (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"),
         (2, 3, 6, 5)),
        (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, padding=1,
                         padding_mode="reflect", bias=False), (2, 3, 5, 6)),
        (nn.Conv1d, dict(in_channels=4, out_channels=3, kernel_size=3, stride=2, dilation=2),
         (3, 4, 13)),
        (nn.Conv3d, dict(in_channels=2, out_channels=3, kernel_size=(2, 3, 1),
                         padding=(1, 0, 1)), (2, 2, 4, 5, 3)),
        (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=(2, 3), stride=(1, 2),
                         padding=(1, 0), dilation=2), (2, 3, 8, 9)),
        (nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding="same",
                         groups=4, padding_mode="reflect"), (2, 4, 6, 6)),
        (nn.Conv3d, dict(in_channels=2, out_channels=4, kernel_size=2, stride=(1, 2, 1),
                         groups=2), (2, 2, 4, 5, 3)),
    ),
    "conv_transpose": _cases(
        "conv_transpose",
        (nn.ConvTranspose2d, dict(in_channels=4, out_channels=6, kernel_size=(3, 2),
                                  stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                                  dilation=(1, 2), groups=2), (3, 4, 5, 4)),
        (nn.ConvTranspose1d, dict(in_channels=3, out_channels=2, kernel_size=3, padding=1,
                                  dilation=2, output_padding=1), (2, 3, 8)),
        (nn.ConvTranspose3d, dict(in_channels=2, out_channels=3, kernel_size=(2, 1, 2),
                                  stride=2, output_padding=1, dilation=3, bias=False),
         (2, 2, 3, 2, 3)),
    ),
}

#: Every layer configuration, flat.
LAYERS: list[LayerCase] = [c for fam in LAYER_FAMILIES.values() for c in fam]


def assert_empty_batch_like(reference: nn.Module, module: nn.Module, shape: tuple[int, ...],
                            *, equal_nan: bool = False) -> None:
    """Assert ``module`` behaves like ``reference`` on an empty float64 batch of ``shape``.

    Same output shape, input-gradient shape and parameter gradients.
    """
    outs = []
    for net in (reference, module):
        x = torch.zeros(shape, dtype=F64, requires_grad=True)
        out = net(x)
        out.sum().backward()
        assert x.grad is not None
        outs.append((out.shape, x.grad.shape, [p.grad for p in net.parameters()]))
    assert outs[0][:2] == outs[1][:2]
    for a, b in zip(outs[0][2], outs[1][2], strict=True):
        torch.testing.assert_close(a, b, equal_nan=equal_nan)


def layer_ids(cases: list[LayerCase]) -> list[str]:
    """pytest ids for ``cases``."""
    return [str(c) for c in cases]


@st.composite
def conv_configs(draw: Callable[..., Any]) -> dict[str, Any]:
    """Hypothesis strategy over ``nn.ConvNd`` hyper-parameters and a fitting input size."""
    dim = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dim))
    padding_kind = draw(st.sampled_from(["int", "same", "valid"]))
    stride = ((1,) * dim if padding_kind == "same"
              else tuple(draw(st.integers(1, 2)) for _ in range(dim)))
    padding = {"int": tuple(draw(st.integers(0, 2)) for _ in range(dim)),
               "same": "same", "valid": "valid"}[padding_kind]
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "circular", "replicate"]))
    if padding_mode != "zeros" and padding_kind == "int":
        padding = tuple(min(p, 1) for p in padding)
    span = [dl * (k - 1) + 1 for dl, k in zip(dilation, kernel)]
    size = tuple(s + draw(st.integers(1, 4)) + 2 for s in span)
    return dict(dim=dim, c_in=c_in, c_out=c_out, kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, groups=groups, padding_mode=padding_mode,
                bias=draw(st.booleans()), batch=draw(st.integers(1, 3)), size=size)


CONV_TYPES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def conv_from_config(cfg: dict[str, Any], cls: type[nn.Module] | None = None) -> nn.Module:
    """The float64 convolution of a :func:`conv_configs` draw (``cls``: e.g. a drop-in)."""
    cls = CONV_TYPES[cfg["dim"]] if cls is None else cls
    return cls(cfg["c_in"], cfg["c_out"], cfg["kernel"], stride=cfg["stride"],
               padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["groups"],
               bias=cfg["bias"], padding_mode=cfg["padding_mode"]).double()


# -- losses and targets --------------------------------------------------------------------
LOSSES: dict[str, type[nn.Module]] = {
    "ce": nn.CrossEntropyLoss, "mse": nn.MSELoss, "bce": nn.BCEWithLogitsLoss,
}


def target(loss: str, n: int, g: torch.Generator, classes: int = 3) -> torch.Tensor:
    """Targets for ``LOSSES[loss]``: class indices, Gaussian values or probabilities."""
    if loss == "ce":
        return torch.randint(0, classes, (n,), generator=g)
    if loss == "mse":
        return torch.randn(n, classes, generator=g)
    return torch.rand(n, classes, generator=g)


def data(shape: tuple[int, ...], loss: str = "ce", seed: int = 0, classes: int = 3
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch ``(x [shape], y)`` for ``loss``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    return x, target(loss, shape[0], g, classes)


def record_run(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
               *quantities: Any) -> dict[str, nn.Parameter]:
    """One ``loss.backward()`` under ``backprobe.quantities.record``; the named parameters."""
    from backprobe.quantities import record

    model.zero_grad()
    with record(model, *quantities, loss_fn=loss_fn):
        loss_fn(model(x), y).backward()
    return dict(model.named_parameters())


# -- networks ------------------------------------------------------------------------------
def layer_network(case: LayerCase, classes: int = 3) -> nn.Module:
    """``case``'s layer, ReLU, Flatten and a Linear head: a network for quantity tests."""
    layer = case.make()
    with torch.no_grad():
        feat = layer(case.input()).flatten(1).shape[1]
    return nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.Linear(feat, classes)).double()


def conv_sequential() -> nn.Module:
    """Two convolutions (one grouped, strided) and two Linear layers; input ``[N, 2, 6, 6]``."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.ReLU(inplace=True),
        nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3),
    ).double()


class Residual(nn.Module):
    """A residual net whose conv block and a Linear layer are each used twice; ``[N, 2, 6, 6]``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 3, padding=1)
        self.block = nn.Conv2d(3, 3, 3, padding=1)
        self.hidden = nn.Linear(12, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h = h + self.block(h)
        h = F.relu(h, inplace=True)
        h = h + self.block(h)
        h = F.avg_pool2d(h, 3).flatten(1)
        h = torch.tanh(self.hidden(h))
        h = h + self.hidden(h)
        return self.head(h)


class NormNet(nn.Module):
    """Conv, BatchNorm2d, GroupNorm, LayerNorm, Linear, BatchNorm1d; input ``[N, 2, 6, 6]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm([4, 2, 2])
        self.fc = nn.Linear(16, 3)
        self.bn1 = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = self.ln(F.max_pool2d(self.gn(h), 2))
        return self.bn1(self.fc(h.flatten(1)))


def norm3d_net() -> nn.Module:
    """Conv3d, BatchNorm3d, Linear; input ``[N, 2, 4, 4, 4]``."""
    return nn.Sequential(nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(81, 3))


#: Networks with normalisation layers and their input shapes (BatchNorm needs ``eval()``).
NORM_NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "norm2d": (NormNet, (4, 2, 6, 6)), "norm3d": (norm3d_net, (4, 2, 4, 4, 4)),
}


class EmbedNet(nn.Module):
    """Embedding (7 rows of 3), mean over the sequence, Linear head; input indices ``[N, S]``."""

    def __init__(self, padding_idx: int | None = None) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 3, padding_idx=padding_idx)
        self.fc = nn.Linear(3, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(idx).mean(1))


def small_cnn() -> nn.Module:
    """Conv, ReLU, two Linear layers; input ``[N, 1, 4, 4]`` (the Monte-Carlo tests' net)."""
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4),
                         nn.ReLU(), nn.Linear(4, 3)).double()


def mlp() -> nn.Sequential:
    """Three Linear layers with tanh and ReLU; input ``[N, 4]``."""
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def cnn() -> nn.Sequential:
    """Two convolutions with pooling and a sigmoid, two Linear layers; input ``[N, 2, 8, 8]``."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.AvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3),
    )


def mlp_tail() -> nn.Sequential:
    """The model output is not a recorded layer output: Gbar is pulled back through tanh."""
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.Tanh())


def mlp_norm() -> nn.Sequential:
    """A LayerNorm site inside the chain (its parameters get ``[G]`` blocks)."""
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3))


#: Networks for the quantity tests (input ``[N, 2, 6, 6]``).
NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "sequential": conv_sequential, "residual": lambda: Residual().double(),
}
#: Chains for KFRA (inputs ``[N, 4]``, the cnn ``[N, 2, 8, 8]``).
CHAINS: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp, "cnn": cnn, "mlp_tail": mlp_tail, "mlp_norm": mlp_norm,
}
