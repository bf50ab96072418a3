"""SGD, Adam, DiagGGN-MC and KFAC on the digits data set (MNIST CNN), one plot.

The curvature optimizers get their preconditioners from the same backward pass through
``backprobe.quantities.record``. Writes
``results/optimizer_comparison/optim_comparison.png`` (``--out``; ``--readme`` regenerates
the README's ``docs/img/optim_comparison.png``).

    python examples/optimizer_comparison.py --epochs 8
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

from backprobe.app import data, models  # noqa: E402
from backprobe.app.report import save_figure  # noqa: E402
from backprobe.optim import diag_ggn_sgd, kfac_sgd  # noqa: E402
from backprobe.quantities import record  # noqa: E402

README_OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "optim_comparison.png"
OUT = Path("results") / "optimizer_comparison" / "optim_comparison.png"


def make_optimizer(name: str, params):  # noqa: ANN001
    """The optimizer ``name`` with the step sizes used in the plot."""
    if name == "SGD":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    if name == "Adam":
        return torch.optim.Adam(params, lr=1e-3)
    if name == "DiagGGN-MC":
        return diag_ggn_sgd(params, lr=0.02, damping=0.1, beta=0.95, generator=0)
    if name == "KFAC":
        return kfac_sgd(params, lr=0.2, damping=0.1, beta=0.95, update_every=5, generator=0)
    raise ValueError(name)


def run(name: str, split: data.DataSplit, epochs: int, batch: int, size: int) -> dict:
    """Train a fresh MNIST CNN with optimizer ``name``; per-step losses, per-epoch accuracy."""
    torch.manual_seed(0)
    model = models.build("mnist_cnn", 1, 10, size)
    loss_fn = nn.CrossEntropyLoss()
    opt = make_optimizer(name, model.parameters())
    quantities = opt.quantities() if hasattr(opt, "quantities") else []
    g = torch.Generator().manual_seed(0)
    losses, accs, t0 = [], [], time.perf_counter()
    n = split.x_train.shape[0]
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n, generator=g).split(batch):
            x, y = split.x_train[idx], split.y_train[idx]
            opt.zero_grad()
            with record(model, *quantities, loss_fn=loss_fn):
                loss = loss_fn(model(x), y)
                loss.backward()
            opt.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            accs.append((model(split.x_test).argmax(1) == split.y_test).float().mean().item())
    return {"loss": losses, "acc": accs, "seconds": time.perf_counter() - t0}


def main() -> None:
    """Train with every optimizer and plot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=16, help="resize the 8x8 digits")
    ap.add_argument("--out", type=Path, default=OUT, help=f"the figure (default {OUT})")
    ap.add_argument("--readme", action="store_true", help=f"write the README's {README_OUT}")
    ap.add_argument("--optimizers", default="SGD,Adam,DiagGGN-MC,KFAC")
    a = ap.parse_args()
    torch.set_num_threads(2)
    split = data.load("digits", size=a.size)
    results = {}
    ap_names = a.optimizers.split(",")
    for name in ap_names:
        results[name] = run(name, split, a.epochs, a.batch, a.size)
        r = results[name]
        print(f"{name:>10}: final train loss {r['loss'][-1]:.3f}, test acc {r['acc'][-1]:.3f}, "
              f"{r['seconds']:.1f} s")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results.items():
        k = 5
        smooth = torch.tensor(r["loss"]).unfold(0, k, 1).mean(1) if len(r["loss"]) > k else \
            torch.tensor(r["loss"])
        ax1.plot(smooth.numpy(), label=name)
        ax2.plot(range(1, len(r["acc"]) + 1), r["acc"], marker="o", label=name)
    ax1.set(xlabel="step", ylabel="train loss (moving average of 5)", yscale="log",
            title="digits, MNIST CNN")
    ax2.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    print(f"wrote {save_figure(fig, README_OUT if a.readme else a.out, dpi=120)}")


if __name__ == "__main__":
    main()
