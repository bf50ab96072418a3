"""Track the Hessian's trace and top eigenvalue while a CNN trains on digits.

Every ``--every`` steps the Hessian of the training loss on a fixed subset of ``--examples``
training images is probed through :mod:`backprobe.linalg`: its top eigenvalue by Lanczos
(``top_eigenpairs``) and its trace with a standard error (``trace(method="auto")``,
stopped at ``--rtol``). The curves go to ``<out>/hessian_tracking.json`` and ``.png``
(default ``results/hessian_tracking``).

Usage:
    python examples/hessian_tracking.py [--steps 300] [--every 50] [--model mnist_cnn]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from backprobe import linalg
from backprobe.app.report import pyplot, save_figure
from backprobe.app.training import build_model, load_data


def main() -> None:
    """Train, probing the Hessian every few steps; write the JSON and the figure."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist_cnn")
    p.add_argument("--image-size", type=int, default=8, help="digits resized (8 = native)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    p.add_argument("--examples", type=int, default=512, help="subset the Hessian is taken on")
    p.add_argument("--rtol", type=float, default=0.1, help="trace: relative standard error")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results/hessian_tracking"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    split = load_data("digits", image_size=args.image_size)
    model = build_model(args.model, split)
    lf = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    sub = (split.x_train[:args.examples], split.y_train[:args.examples])
    gen = torch.Generator().manual_seed(args.seed)
    rows = []

    def probe(step: int) -> None:
        model.eval()
        h = linalg.HessianOperator(model, lf, sub)
        t0 = time.perf_counter()
        top = linalg.top_eigenpairs(h, 1, tol=1e-3, generator=args.seed)
        tr = linalg.trace(h, 20, method="auto", generator=args.seed, rtol=args.rtol,
                          max_matvecs=200)
        with torch.no_grad():
            loss = float(lf(model(sub[0]), sub[1]))
        rows.append({"step": step, "loss": loss, "top_eigenvalue": float(top.values[0]),
                     "trace": tr.value, "trace_std_error": tr.std_error,
                     "trace_method": tr.method,
                     "matvecs": top.num_matvecs + tr.num_matvecs,
                     "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
        model.train()

    step = 0
    while step < args.steps:
        order = torch.randperm(len(split.y_train), generator=gen)
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
            if step % args.every == 0:
                probe(step)
            idx = order[i:i + args.batch_size]
            opt.zero_grad()
            lf(model(split.x_train[idx]), split.y_train[idx]).backward()
            opt.step()
            step += 1
            if step >= args.steps:
                break
    probe(step)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hessian_tracking.json").write_text(json.dumps(rows, indent=2) + "\n")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["loss"] for r in rows], "o-")
    axes[0].set_title("training loss (subset)")
    axes[1].plot(steps, [r["top_eigenvalue"] for r in rows], "o-")
    axes[1].set_title("top Hessian eigenvalue")
    axes[2].errorbar(steps, [r["trace"] for r in rows],
                     yerr=[2 * r["trace_std_error"] for r in rows], fmt="o-", capsize=3)
    axes[2].set_title("Hessian trace (2 std errors)")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    print("wrote", save_figure(fig, args.out / "hessian_tracking.png"))


if __name__ == "__main__":
    main()
