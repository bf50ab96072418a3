"""SAGA against SGD, with and without Nesterov momentum (El Hanchi's Figures 1 and 2).

``softmax``: softmax regression on digits (or MNIST / CIFAR-10 when their files are present):
SGD, SAGA, Nesterov SGD and Nesterov SAGA from the same initialisation with the same step
size; train/test loss and accuracy per epoch. SAGA's table is factored (``D_in + D_out``
numbers per example).

``cnn``: a six-convolution ReLU network, warm-started with Adam, then SGD against SAGA with
the convolutions' gradients stored dense (``Factored()``, the default) and as ``LowRank(1)``
sketches (exact factors for the classifier in both).

    python examples/variance_reduction.py softmax   # results/variance_reduction/vr_softmax.png
    python examples/variance_reduction.py cnn       # results/variance_reduction/vr_cnn.png
    python examples/variance_reduction.py cnn --readme   # the README's docs/img/vr_cnn.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from backprobe.app import data, models  # noqa: E402
from backprobe.app.report import save_figure, write_json  # noqa: E402
from backprobe.optim import SAGA, LowRank  # noqa: E402

README_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(xb) for xb in x.split(1024)])
        loss = float(nn.functional.cross_entropy(out, y))
        acc = float((out.argmax(1) == y).float().mean())
    model.train()
    return loss, acc


def train(
    model: nn.Module, method: str, split: data.DataSplit, *, lr: float, epochs: int,
    batch: int, momentum: float, seed: int, storage: object = None, weight_decay: float = 0.0,
) -> dict[str, list[float]]:
    """Train ``model`` in place with ``method`` (``SGD`` or ``SAGA``); per-epoch metrics.

    ``train_objective`` is the training loss plus ``weight_decay / 2 * ||theta||^2``, the
    function both methods minimise.
    """
    n = split.x_train.shape[0]
    nesterov = momentum > 0
    if method == "SGD":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
            weight_decay=weight_decay)
    else:
        opt = SAGA(model.parameters(), lr=lr, num_examples=n, momentum=momentum,
                   nesterov=nesterov, storage=storage, generator=seed,  # type: ignore[arg-type]
                   weight_decay=weight_decay)
    hist: dict[str, list[float]] = {k: [] for k in ("train_loss", "train_acc", "test_loss",
                                                    "test_acc", "train_objective")}

    def log() -> None:
        for part, (x, y) in (("train", (split.x_train, split.y_train)),
                             ("test", (split.x_test, split.y_test))):
            loss, acc = evaluate(model, x, y)
            hist[f"{part}_loss"].append(loss)
            hist[f"{part}_acc"].append(acc)
        sq = sum(float(p.detach().square().sum()) for p in model.parameters())
        hist["train_objective"].append(hist["train_loss"][-1] + 0.5 * weight_decay * sq)

    log()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).split(batch):
            x, y = split.x_train[idx], split.y_train[idx]
            opt.zero_grad()
            if isinstance(opt, SAGA):
                with opt.record(model):
                    nn.functional.cross_entropy(model(x), y).backward()
                opt.step(idx)
            else:
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        log()
    if isinstance(opt, SAGA):
        hist["table_bytes"] = [float(opt.memory()["table"])]
    return hist


def six_conv(in_channels: int, num_classes: int, width: int = 16) -> nn.Module:
    """Six 3x3 ReLU convolutions (two per resolution, 2x2 max pool after each pair)."""
    layers: list[nn.Module] = []
    c = in_channels
    for i, out in enumerate((width, width, 2 * width, 2 * width, 4 * width, 4 * width)):
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


def plot(results: dict[str, dict[str, list[float]]], title: str, path: Path) -> None:
    """Train/test loss and accuracy per epoch, one line per method."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    first = "train_objective" if any(
        h["train_objective"][-1] != h["train_loss"][-1] for h in results.values()
    ) else "train_loss"
    for ax, key in zip(axes, (first, "test_loss", "train_acc", "test_acc")):
        for name, h in results.items():
            ax.plot(range(len(h[key])), h[key], label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " "))
        if "loss" in key or "objective" in key:
            ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    print(f"wrote {save_figure(fig, path)}")


def table(results: dict[str, dict[str, list[float]]]) -> None:
    """Final metrics per method."""
    print(f"{'method':<16}{'train loss':>12}{'test loss':>12}{'train acc':>11}{'test acc':>10}")
    for name, h in results.items():
        print(f"{name:<16}{h['train_loss'][-1]:>12.5f}{h['test_loss'][-1]:>12.5f}"
              f"{h['train_acc'][-1]:>11.4f}{h['test_acc'][-1]:>10.4f}")


def softmax(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Figure 1: softmax regression."""
    split = data.load(args.data)
    results = {}
    for name, method, mom in (("SGD", "SGD", 0.0), ("SAGA", "SAGA", 0.0),
                              ("Nesterov SGD", "SGD", args.momentum),
                              ("Nesterov SAGA", "SAGA", args.momentum)):
        torch.manual_seed(args.seed)
        model = models.softmax_regression(split.in_channels, split.num_classes,
                                          split.image_size)
        t0 = time.perf_counter()
        results[name] = train(model, method, split, lr=args.lr, epochs=args.epochs,
                              batch=args.batch_size, momentum=mom, seed=args.seed,
                              weight_decay=args.weight_decay)
        print(f"{name}: {time.perf_counter() - t0:.1f} s")
    table(results)
    key = "train_objective" if args.weight_decay else "train_loss"
    ratio = results["SAGA"][key][-1] / results["SGD"][key][-1]
    print(f"final {key.replace('_', ' ')} SAGA / SGD = {ratio:.3f}")
    wd = f", weight decay {args.weight_decay}" if args.weight_decay else ""
    name = f"vr_softmax_wd{args.weight_decay:g}.png" if args.weight_decay else "vr_softmax.png"
    plot(results, f"softmax regression on {args.data}: batch {args.batch_size}, "
         f"lr {args.lr}, momentum {args.momentum} (Nesterov){wd}", args.out / name)
    return results


def cnn(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Figure 2: a six-conv ReLU CNN, warm-started by Adam, then SGD vs SAGA (LowRank)."""
    split = data.load(args.data)
    torch.manual_seed(args.seed)
    warm = six_conv(split.in_channels, split.num_classes)
    opt = torch.optim.Adam(warm.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(args.seed)
    n = split.x_train.shape[0]
    for _ in tqdm(range(args.warm_epochs), desc="Adam warm start"):
        for idx in torch.randperm(n, generator=g).split(args.batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(warm(split.x_train[idx]), split.y_train[idx]).backward()
            opt.step()
    print(f"after warm start: train loss {evaluate(warm, split.x_train, split.y_train)[0]:.4f}"
          f" test acc {evaluate(warm, split.x_test, split.y_test)[1]:.4f}")
    state = {k: v.clone() for k, v in warm.state_dict().items()}
    results = {}
    for name, method, storage in (("SGD", "SGD", None), ("SAGA dense conv", "SAGA", None),
                                  (f"SAGA LowRank({args.rank})", "SAGA", LowRank(args.rank))):
        model = six_conv(split.in_channels, split.num_classes)
        model.load_state_dict(state)
        t0 = time.perf_counter()
        results[name] = train(model, method, split, lr=args.lr, epochs=args.epochs,
                              batch=args.batch_size, momentum=0.0, seed=args.seed,
                              storage=storage)
        print(f"{name}: {time.perf_counter() - t0:.1f} s")
        if "table_bytes" in results[name]:
            dense = n * sum(p.numel() for p in model.parameters()) * 4
            print(f"  table: {results[name]['table_bytes'][0] / 2**20:.1f} MiB "
                  f"(dense would be {dense / 2**20:.1f} MiB)")
    table(results)
    plot(results, f"six-conv CNN on {args.data} after {args.warm_epochs} Adam epochs: "
         f"batch {args.batch_size}, lr {args.lr}", args.out / "vr_cnn.png")
    return results


def main() -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=("softmax", "cnn"))
    p.add_argument("--data", default="digits")
    p.add_argument("--epochs", type=int, default=None, help="default 20 (softmax), 15 (cnn)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="default 1.0 (softmax), 0.05 (cnn)")
    p.add_argument("--momentum", type=float, default=0.5, help="Nesterov momentum (softmax)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="L2 term (softmax): makes the problem strongly convex")
    p.add_argument("--warm-epochs", type=int, default=3)
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the histories here")
    p.add_argument("--out", type=Path, default=Path("results") / "variance_reduction",
                   help="folder of the figure (default results/variance_reduction, git-ignored)")
    p.add_argument("--readme", action="store_true",
                   help=f"regenerate the README's figure in {README_IMG}")
    args = p.parse_args()
    if args.readme:
        args.out = README_IMG
    soft = args.experiment == "softmax"
    args.epochs = args.epochs or (20 if soft else 15)
    args.lr = args.lr or (1.0 if soft else 0.05)
    torch.set_num_threads(2)
    results = softmax(args) if soft else cnn(args)
    if args.json:
        print(f"wrote {write_json(args.json, results)}")


if __name__ == "__main__":
    main()
