"""Mem-AOP-GD in miniature: Figures 2-3 of Hernandez, Rini, Duman on small data.

Three experiments, each comparing exact backprop with AOP (policies ``topk``, ``randk``,
``weightedk``; with and without memory) by validation loss per epoch:

(a) one dense layer, least squares: UCI energy efficiency (ENB2012, if a CSV/xlsx of it is
    found in ``--data-dir``) else scikit-learn's diabetes data; batch 144, K in {18, 9, 3},
    SGD lr 0.01, 100 epochs.
(b) one dense layer, softmax regression on scikit-learn digits (standardised, split
    1437/360 with ``train_test_split(random_state=0, stratify=y)``); batch 64,
    K in {32, 16, 8}, SGD lr 0.1, 30 epochs (plus product-level error feedback); and a
    10-seed check of topk at K = 16 against exact, seed by seed.
(c) a small CNN on the same digits with AOP on every layer (K = a fraction of each layer's
    rows), SGD lr 0.1, 12 epochs, at most 2 seeds.

Writes ``aop_{regression,digits,cnn}.png`` and ``aop_experiments.json`` under ``--out``
(default ``results/aop_experiments``, git-ignored); ``--readme`` regenerates the README's
(``docs/img/`` and ``benchmarks/results/``). Prints markdown tables. About 3-4 minutes on
2 CPU cores (``--seeds 1`` for a quicker run).

Usage:
    python examples/aop_experiments.py [--data-dir DIR] [--seeds 3] [--only a,b,c] [--readme]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import backprobe
from backprobe.app.report import save_figure, write_json
from backprobe.estimators.aop import AOP

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("topk", "randk", "weightedk")
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


# -- data ----------------------------------------------------------------------------------
def _read_enb(data_dir: Path | None) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The ENB2012 table (8 features, 2 targets) from a CSV or xlsx in ``data_dir``."""
    if data_dir is None or not data_dir.is_dir():
        return None
    for path in sorted(data_dir.iterdir()):
        if "enb2012" not in path.name.lower():
            continue
        rows: list[list[str]] = []
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as fh:
                rows = [r for r in csv.reader(fh) if r]
        elif path.suffix.lower() in (".xlsx", ".xls"):
            try:
                import openpyxl  # type: ignore[import-not-found]
            except ImportError:
                print(f"found {path} but openpyxl is not installed; save it as CSV instead")
                continue
            sheet = openpyxl.load_workbook(path, read_only=True).active
            rows = [[str(c) for c in r] for r in sheet.iter_rows(values_only=True)]
        table = []
        for r in rows:
            try:
                vals = [float(c) for c in r[:10]]
            except ValueError:
                continue  # header
            if len(vals) == 10:
                table.append(vals)
        if table:
            arr = np.asarray(table)
            return arr[:, :8], arr[:, 8:10], f"UCI energy efficiency ({path.name})"
    return None


def regression_data(data_dir: Path | None) -> tuple[Data, str]:
    """Standardised regression data (train/validation 80/20) and its name."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    found = _read_enb(data_dir)
    if found is None:
        x, y = load_diabetes(return_X_y=True)
        y, name = y[:, None], "scikit-learn diabetes (no ENB2012 file found)"
    else:
        x, y, name = found
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.2, random_state=0)
    mx, sx, my, sy = xtr.mean(0), xtr.std(0) + 1e-12, ytr.mean(0), ytr.std(0)
    tensors = [((xtr - mx) / sx), ((xva - mx) / sx), ((ytr - my) / sy), ((yva - my) / sy)]
    xtr_t, xva_t, ytr_t, yva_t = (torch.tensor(t, dtype=torch.float32) for t in tensors)
    return (xtr_t, ytr_t, xva_t, yva_t), name


def digits_data() -> Data:
    """Standardised digits, fixed stratified split 1437/360."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=360, random_state=0, stratify=y)
    mean, std = xtr.mean(0), xtr.std(0)
    std[std == 0] = 1.0  # pixels that are constant in the training set
    xtr, xva = (xtr - mean) / std, (xva - mean) / std
    return (torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr),
            torch.tensor(xva, dtype=torch.float32), torch.tensor(yva))


# -- training ------------------------------------------------------------------------------
def train(
    make_model: Callable[[], nn.Module], estimator: AOP | None, data: Data,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: int, lr: float, epochs: int, seed: int, reshape: tuple[int, ...] = (),
) -> dict[str, list[float]]:
    """Train with plain SGD; return validation loss (and accuracy for labels) per epoch."""
    xtr, ytr, xva, yva = data
    if reshape:
        xtr, xva = xtr.reshape(-1, *reshape), xva.reshape(-1, *reshape)
    torch.manual_seed(seed)
    model = make_model()
    if estimator is not None:
        backprobe.convert(model, estimator, layers=(nn.Linear, nn.Conv2d))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {"val_loss": [], "val_acc": []}

    def evaluate() -> None:
        with torch.no_grad():
            out = model(xva)
            hist["val_loss"].append(float(loss_fn(out, yva)))
            if not yva.is_floating_point():
                hist["val_acc"].append(float((out.argmax(1) == yva).float().mean()))

    evaluate()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        evaluate()
    if not hist["val_acc"]:
        del hist["val_acc"]
    return hist


def label(policy: str | None, memory: bool | str) -> str:
    """Name of a configuration in tables and legends."""
    if policy is None:
        return "exact"
    mem = {True: "memory", False: "no memory", "error_feedback": "error feedback"}[memory]
    return f"{policy}, {mem}"


def sweep(
    name: str, ks: list, memories: list, policies: tuple[str, ...], seeds: int,
    run: Callable[[AOP | None, int], dict[str, list[float]]],
) -> dict:
    """Run exact and every (K, policy, memory) for ``seeds`` seeds; mean curves per config."""
    configs: list[tuple] = [(None, None, False)]
    configs += [(k, p, m) for k in ks for p in policies for m in memories]
    results = []
    bar = tqdm(total=len(configs) * seeds, desc=name, leave=False)
    for k, policy, memory in configs:
        curves = []
        for seed in range(seeds):
            est = None if k is None else AOP(k, policy=policy, memory=memory, seed=1000 + seed)
            curves.append(run(est, seed))
            bar.update()
        entry = {"k": k, "policy": policy, "memory": memory, "label": label(policy, memory)}
        for key in curves[0]:
            arr = np.array([c[key] for c in curves])
            entry[key] = arr.mean(0).tolist()
            entry[f"final_{key}"] = float(arr[:, -1].mean())
            entry[f"final_{key}_std"] = float(arr[:, -1].std())
        results.append(entry)
    bar.close()
    return {"runs": results}


# -- output --------------------------------------------------------------------------------
STYLE = {True: "-", False: "--", "error_feedback": ":"}
COLOR = {"topk": "tab:blue", "randk": "tab:orange", "weightedk": "tab:green"}


def plot(res: dict, ks: list, title: str, path: Path, key: str = "val_loss") -> None:
    """One panel per K: exact (black) and each policy with (solid) / without (dashed) memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.4), sharey=True)
    exact = next(r for r in res["runs"] if r["policy"] is None)
    for ax, k in zip(axes, ks, strict=True):
        ax.plot(exact[key], color="black", lw=2, label="exact")
        for r in res["runs"]:
            if r["k"] == k:
                ax.plot(r[key], STYLE[r["memory"]], color=COLOR[r["policy"]], lw=1.3,
                        label=r["label"])
        ax.set_title(f"K = {k}" if isinstance(k, int) else f"K = {k:g} M")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation {key.split('_')[1]}")
    axes[-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def table(res: dict, ks: list, memories: list, key: str = "final_val_loss") -> str:
    """Markdown: rows policy x memory, columns K, cells mean (std) of the final value."""
    exact = next(r for r in res["runs"] if r["policy"] is None)
    head = "| policy | memory | " + " | ".join(
        f"K={k}" if isinstance(k, int) else f"K={k:g}M" for k in ks) + " |"
    lines = [head, "|" + "---|" * (len(ks) + 2),
             f"| exact | - | {exact[key]:.4f} ({exact[key + '_std']:.4f}) "
             + "| " * (len(ks) - 1) + "|"]
    for p in POLICIES:
        for m in memories:
            cells = [next((r for r in res["runs"]
                           if (r["k"], r["policy"], r["memory"]) == (k, p, m)), None) for k in ks]
            if all(c is None for c in cells):
                continue
            vals = [f"{c[key]:.4f} ({c[key + '_std']:.4f})" if c else "" for c in cells]
            mem = {True: "yes", False: "no", "error_feedback": "error feedback"}[m]
            lines.append(f"| {p} | {mem} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def target_check(digits: Data, seeds: int) -> dict:
    """Digits, K = 16: final validation loss of topk with / without memory vs exact, per seed."""
    finals: dict[str, list[float]] = {}
    makers: dict[str, Callable[[int], AOP | None]] = {
        "exact": lambda s: None,
        "topk, memory": lambda s: AOP(16, policy="topk", memory=True, seed=1000 + s),
        "topk, no memory": lambda s: AOP(16, policy="topk", memory=False, seed=1000 + s),
    }
    for name, make in tqdm(makers.items(), desc="target", leave=False):
        finals[name] = [train(lambda: nn.Linear(64, 10), make(s), digits, F.cross_entropy, 64,
                              0.1, 30, s)["val_loss"][-1] for s in range(seeds)]
    exact = np.array(finals["exact"])
    summary: dict = {"seeds": seeds, "final_val_loss": finals}
    print(f"\ndigits, K=16, {seeds} seeds: final validation loss relative to exact (same seed)\n")
    print("| config | mean loss | mean ratio - 1 | SE | per-seed ratios |\n|---|---|---|---|---|")
    for name in ("topk, memory", "topk, no memory"):
        ratio = np.array(finals[name]) / exact
        se = float(ratio.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else float("nan")
        summary[name] = {"mean_ratio_minus_1": float(ratio.mean() - 1), "se": se}
        print(f"| {name} | {np.mean(finals[name]):.4f} | {ratio.mean() - 1:+.3f} | {se:.3f} | "
              + " ".join(f"{r:.3f}" for r in ratio) + " |")
    print(f"| exact | {exact.mean():.4f} | | | |")
    return summary


class SmallCNN(nn.Sequential):
    """conv(1->16) relu conv(16->32) relu maxpool flatten linear(512->10), for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 10),
        )


def main() -> None:
    """Run the selected experiments and write figures, JSON and tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="directory with ENB2012 CSV/xlsx")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--target-seeds", type=int, default=10,
                    help="seeds for the K=16 topk check on digits (part b)")
    ap.add_argument("--only", default="a,b,c")
    ap.add_argument("--out", type=Path, default=Path("results") / "aop_experiments",
                    help="folder of the figures and JSON (default results/aop_experiments)")
    ap.add_argument("--readme", action="store_true",
                    help="regenerate the README's: figures in docs/img, JSON in benchmarks/results")
    ap.add_argument("--threads", type=int, default=1, help="small models: 1 is fastest")
    args = ap.parse_args()
    args.img_dir = ROOT / "docs" / "img" if args.readme else args.out
    args.json = (ROOT / "benchmarks" / "results" if args.readme else args.out) \
        / "aop_experiments.json"
    torch.set_num_threads(args.threads)
    which = set(args.only.split(","))
    out: dict = {"seeds": args.seeds, "machine": platform.platform(), "torch": torch.__version__,
                 "threads": args.threads}
    if args.json.exists():  # keep the parts not rerun
        out = {**json.loads(args.json.read_text()), **out}
    t0 = time.time()
    ks: list
    mems: list

    if "a" in which:
        data, name = regression_data(args.data_dir)
        ks, mems = [18, 9, 3], [True, False]
        d_in, d_out = data[0].shape[1], data[1].shape[1]
        res = sweep("regression", ks, mems, POLICIES, args.seeds, lambda est, seed: train(
            lambda: nn.Linear(d_in, d_out), est, data, F.mse_loss, 144, 0.01, 100, seed))
        res.update(dataset=name, batch=144, lr=0.01, epochs=100, ks=ks)
        out["regression"] = res
        plot(res, ks, f"(a) one dense layer, least squares on {name.split(' (')[0]}, batch 144",
             args.img_dir / "aop_regression.png")
        print(f"\n(a) {name}: final validation MSE (standardised targets), mean (std) over "
              f"{args.seeds} seeds\n")
        print(table(res, ks, mems))

    if "b" in which or "c" in which:
        digits = digits_data()
    if "b" in which:
        ks, mems = [32, 16, 8], [True, False, "error_feedback"]
        res = sweep("digits", ks, mems, POLICIES, args.seeds, lambda est, seed: train(
            lambda: nn.Linear(64, 10), est, digits, F.cross_entropy, 64, 0.1, 30, seed))
        res.update(dataset="sklearn digits 1437/360", batch=64, lr=0.1, epochs=30, ks=ks)
        exact = next(r for r in res["runs"] if r["policy"] is None)["final_val_loss"]
        for r in res["runs"]:
            r["final_val_loss_vs_exact"] = r["final_val_loss"] / exact - 1
        out["digits"] = res
        plot(res, ks, "(b) softmax regression on digits, batch 64 (solid: memory, dashed: "
             "none, dotted: error feedback)", args.img_dir / "aop_digits.png")
        print(f"\n(b) digits softmax regression: final validation cross-entropy, mean (std) "
              f"over {args.seeds} seeds\n")
        print(table(res, ks, mems))
        print("\nfinal accuracy\n")
        print(table(res, ks, mems, key="final_val_acc"))
        out["digits_target"] = target_check(digits, args.target_seeds)

    if "c" in which:
        ks, mems = [0.5, 0.25, 0.125], [True, False]  # K as a fraction of each layer's rows
        seeds = min(args.seeds, 2)  # the CNN runs dominate the time
        res = sweep("cnn", ks, mems, ("topk", "weightedk"), seeds, lambda est, seed: train(
            SmallCNN, est, digits, F.cross_entropy, 64, 0.1, 12, seed, reshape=(1, 8, 8)))
        res.update(dataset="sklearn digits 1437/360", batch=64, lr=0.1, epochs=12, ks=ks,
                   seeds=seeds,
                   model="conv16-conv32-pool-linear, AOP on every layer, K = fraction of rows")
        out["cnn"] = res
        plot(res, ks, "(c) small CNN on digits, AOP on every layer", args.img_dir / "aop_cnn.png")
        print(f"\n(c) small CNN on digits: final validation cross-entropy, mean (std) over "
              f"{seeds} seeds\n")
        print(table(res, ks, mems))
        print("\nfinal accuracy\n")
        print(table(res, ks, mems, key="final_val_acc"))

    out["seconds"] = round(time.time() - t0, 1)
    write_json(args.json, out)
    print(f"\nwrote {args.json} and figures in {args.img_dir} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
