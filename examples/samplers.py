"""Langevin samplers (SGLD, MALA, underdamped BAOAB) on a 2-D Gaussian and on digits.

(a) A correlated 2-D Gaussian: samples over the target's density contours, and the running
    error of the sample mean and covariance against the exact ones. SGLD's error levels off at
    its O(lr) bias (dashed: the exact stationary covariance of the discretised chain); MALA is
    exact; BAOAB's position marginal is exact for a Gaussian.
(b) Bayesian logistic regression, digit 3 vs 8 of scikit-learn's digits (standardised
    pixels plus a bias, Gaussian prior N(0, prior_var I)): test accuracy and test
    log-likelihood of the posterior-predictive average vs steps. SGLD uses mini-batches with
    the potential scaled as U_hat = (N / B) * sum_batch f_i + prior; MALA and the underdamped
    sampler use the full batch.

Writes ``samplers_gaussian.png`` and ``samplers_logreg.png`` under ``--out`` (default
``results/samplers``; ``--readme``: the README's ``docs/img/``) and prints a
table. Defaults run in well under a minute on 2 CPU threads:

    python examples/samplers.py --steps 10000 --logreg-steps 10000
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from backprobe.app import data  # noqa: E402
from backprobe.app.report import save_figure  # noqa: E402
from backprobe.optim.langevin import (  # noqa: E402
    MALA,
    SGLD,
    UnderdampedLangevin,
    minibatch_potential,
)

README_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
DT = torch.float64
COLORS = {"SGLD": "tab:blue", "MALA": "tab:orange", "Underdamped": "tab:green"}


def make_sampler(name: str, params: list[torch.Tensor], lr: float, args: argparse.Namespace):
    """``SGLD``, ``MALA`` or ``Underdamped`` (BAOAB with ``args.friction``), seeded."""
    seed = args.seed
    if name == "SGLD":
        return SGLD(params, lr=lr, generator=seed)
    if name == "MALA":
        return MALA(params, lr=lr, generator=seed)
    return UnderdampedLangevin(params, lr=lr, friction=args.friction, generator=seed)


# --------------------------------------------------------------------------------------------
# (a) 2-D Gaussian
# --------------------------------------------------------------------------------------------


def gaussian(args: argparse.Namespace) -> list[dict]:
    """Sample N(m, S) (correlation 0.8) with each sampler; plot samples and running errors.

    ``--chains`` chains run side by side as one ``[chains, 2]`` parameter (independent noise;
    MALA makes one joint accept decision for all of them, a valid sampler of the product
    target). Mean and covariance are pooled over chains and steps after burn-in.
    """
    mean = torch.tensor([1.0, -1.0], dtype=DT)
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=DT)
    prec = torch.linalg.inv(cov)
    lrs = {"SGLD": args.gauss_lr_sgld, "MALA": args.gauss_lr_mala, "Underdamped": args.gauss_lr_ud}

    fig, axes = plt.subplots(1, 5, figsize=(22, 4.2))
    grid = torch.linspace(-3.5, 3.5, 200, dtype=DT)
    gx, gy = torch.meshgrid(grid + mean[0], grid + mean[1], indexing="xy")
    d = torch.stack([gx - mean[0], gy - mean[1]], -1)
    density = torch.exp(-0.5 * ((d @ prec) * d).sum(-1))
    rows = []
    for ax, name in zip(axes[:3], lrs):
        x = torch.zeros(args.chains, 2, dtype=DT, requires_grad=True)
        opt = make_sampler(name, [x], lrs[name], args)

        def closure(x=x, opt=opt):  # noqa: ANN001, ANN202
            opt.zero_grad()
            dx = x - mean
            u = 0.5 * ((dx @ prec) * dx).sum()  # sum over chains of 1/2 (x-m)^T A (x-m)
            u.backward()
            return u

        t0, out = time.perf_counter(), []
        for _ in tqdm(range(args.steps), desc=f"gaussian {name}", leave=False, disable=None):
            opt.step(closure)
            out.append(x.detach().clone())
        seconds = time.perf_counter() - t0
        s = torch.stack(out)[args.burn_in:]  # [T, chains, 2]
        n = args.chains * torch.arange(1, s.shape[0] + 1, dtype=DT)[:, None]
        run_mean = s.sum(1).cumsum(0) / n
        run_second = torch.einsum("tci,tcj->tij", s, s).cumsum(0) / n[..., None]
        run_cov = run_second - run_mean[:, :, None] * run_mean[:, None, :]
        err_mean = (run_mean - mean).norm(dim=1)
        err_cov = (run_cov - cov).flatten(1).norm(dim=1)

        ax.contour(gx, gy, density, levels=6, colors="k", linewidths=0.8)
        pts = s[::10].reshape(-1, 2)[:3000]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.3, color=COLORS[name])
        ax.set_title(f"{name} (lr={lrs[name]})")
        ax.set_aspect("equal")
        steps = torch.arange(args.burn_in + 1, args.steps + 1)
        axes[3].loglog(steps, err_mean, color=COLORS[name], label=name)
        axes[4].loglog(steps, err_cov, color=COLORS[name], label=name)
        accept = getattr(opt, "accept_rate", float("nan"))
        rows.append({"problem": "gaussian", "sampler": name, "lr": lrs[name],
                     "mean err": err_mean[-1].item(), "cov err": err_cov[-1].item(),
                     "accept": accept, "seconds": seconds})

    # SGLD's stationary covariance for U = 1/2 x^T A x is (A - lr A^2 / 2)^{-1}, not A^{-1}.
    h = lrs["SGLD"]
    bias = (torch.linalg.inv(prec - 0.5 * h * prec @ prec) - cov).norm().item()
    axes[4].axhline(bias, color=COLORS["SGLD"], ls="--", lw=1, label="SGLD bias (exact)")
    axes[3].set(title="running error of the mean", xlabel="step", ylabel="|mean - m|")
    axes[4].set(title="running error of the covariance", xlabel="step", ylabel="|cov - S|_F")
    axes[3].legend()
    axes[4].legend()
    fig.suptitle(f"2-D Gaussian, correlation 0.8: {args.chains} chains per sampler")
    fig.tight_layout()
    save_figure(fig, args.out / "samplers_gaussian.png")
    return rows


# --------------------------------------------------------------------------------------------
# (b) Bayesian logistic regression on digits, 3 vs 8
# --------------------------------------------------------------------------------------------


def digits_3_vs_8() -> tuple[torch.Tensor, ...]:
    """Standardised pixels plus a constant column; labels 1 for an 8, 0 for a 3."""
    split = data.load("digits", normalize=False)

    def pick(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (y == 3) | (y == 8)
        return x[keep].flatten(1).to(DT), (y[keep] == 8).to(DT)

    x_tr, y_tr = pick(split.x_train, split.y_train)
    x_te, y_te = pick(split.x_test, split.y_test)
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp_min(1e-3)  # constant pixels stay 0
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    ones = torch.ones
    x_tr = torch.cat([x_tr, ones(len(x_tr), 1, dtype=DT)], 1)
    x_te = torch.cat([x_te, ones(len(x_te), 1, dtype=DT)], 1)
    return x_tr, y_tr, x_te, y_te


def logreg(args: argparse.Namespace) -> list[dict]:
    """Posterior-predictive accuracy / log-likelihood vs steps for each sampler, plus MAP."""
    x_tr, y_tr, x_te, y_te = digits_3_vs_8()
    n, dim = x_tr.shape

    def nll(w: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        x, y = (x_tr, y_tr) if idx is None else (x_tr[idx], y_tr[idx])
        z = x @ w
        return F.softplus(z) - y * z  # -log p(y | x, w) per example

    def prior(w: torch.Tensor) -> torch.Tensor:
        return 0.5 * w.pow(2).sum() / args.prior_var

    def test_metrics(prob: torch.Tensor) -> tuple[float, float]:
        p = prob.clamp(1e-12, 1 - 1e-12)
        acc = ((p > 0.5).to(DT) == y_te).to(DT).mean().item()
        ll = (y_te * p.log() + (1 - y_te) * (1 - p).log()).mean().item()
        return acc, ll

    # MAP reference (L-BFGS on the full potential).
    w_map = torch.zeros(dim, dtype=DT, requires_grad=True)
    lbfgs = torch.optim.LBFGS([w_map], max_iter=200, line_search_fn="strong_wolfe")

    def map_closure() -> torch.Tensor:
        lbfgs.zero_grad()
        u = nll(w_map).sum() + prior(w_map)
        u.backward()
        return u

    t0 = time.perf_counter()
    lbfgs.step(map_closure)
    map_seconds = time.perf_counter() - t0
    map_acc, map_ll = test_metrics(torch.sigmoid(x_te @ w_map.detach()))
    rows = [{"problem": "logreg 3v8", "sampler": "MAP (L-BFGS)", "lr": float("nan"),
             "test acc": map_acc, "test ll": map_ll, "accept": float("nan"),
             "seconds": map_seconds}]

    lrs = {"SGLD": args.lr_sgld, "MALA": args.lr_mala, "Underdamped": args.lr_ud}
    gen = torch.Generator().manual_seed(args.seed)
    fig, (ax_acc, ax_ll) = plt.subplots(1, 2, figsize=(11, 4))
    for name, lr in lrs.items():
        w = w_map.detach().clone().requires_grad_()  # every chain starts at the MAP
        opt = make_sampler(name, [w], lr, args)

        def closure(w=w, opt=opt, name=name):  # noqa: ANN001, ANN202
            opt.zero_grad()
            if name == "SGLD":  # unbiased mini-batch estimate of U
                idx = torch.randint(0, n, (args.batch,), generator=gen)
                u = minibatch_potential(nll(w, idx), n, prior(w))
            else:
                u = nll(w).sum() + prior(w)
            u.backward()
            return u

        pred_sum, kept, curve = torch.zeros(len(y_te), dtype=DT), 0, []
        t0 = time.perf_counter()
        for t in tqdm(range(1, args.logreg_steps + 1), desc=f"logreg {name}", leave=False,
                      disable=None):
            opt.step(closure)
            if t > args.logreg_burn_in and t % args.thin == 0:
                pred_sum += torch.sigmoid(x_te @ w.detach())
                kept += 1
                curve.append((t, *test_metrics(pred_sum / kept)))
        seconds = time.perf_counter() - t0
        steps, accs, lls = zip(*curve)
        ax_acc.plot(steps, accs, color=COLORS[name], label=name)
        ax_ll.plot(steps, lls, color=COLORS[name], label=name)
        rows.append({"problem": "logreg 3v8", "sampler": name, "lr": lr, "test acc": accs[-1],
                     "test ll": lls[-1], "accept": getattr(opt, "accept_rate", float("nan")),
                     "seconds": seconds})
    for ax, value in ((ax_acc, map_acc), (ax_ll, map_ll)):
        ax.axhline(value, color="k", ls="--", lw=1, label="MAP")
        ax.set_xlabel("step")
        ax.legend()
    ax_acc.set(title="posterior-predictive test accuracy", ylabel="accuracy")
    ax_ll.set(title="posterior-predictive test log-likelihood", ylabel="mean log p(y | x)")
    fig.suptitle(f"Bayesian logistic regression, digits 3 vs 8 (N={n}, d={dim})")
    fig.tight_layout()
    save_figure(fig, args.out / "samplers_logreg.png")
    return rows


def print_table(rows: list[dict]) -> None:
    """A plain-text table of every row's numbers."""
    keys = ["problem", "sampler", "lr", "mean err", "cov err", "test acc", "test ll", "accept",
            "seconds"]
    print(" | ".join(f"{k:>12}" for k in keys))
    print("-|-".join("-" * 12 for _ in keys))
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k, "")
            if isinstance(v, float):
                v = "" if math.isnan(v) else f"{v:.4g}"
            cells.append(f"{v:>12}")
        print(" | ".join(cells))


def main() -> None:
    """Parse arguments, run both problems, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10000, help="Gaussian: steps per sampler")
    parser.add_argument("--chains", type=int, default=16, help="Gaussian: chains per sampler")
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--gauss-lr-sgld", type=float, default=0.1)
    parser.add_argument("--gauss-lr-mala", type=float, default=0.1)
    parser.add_argument("--gauss-lr-ud", type=float, default=0.5)
    parser.add_argument("--friction", type=float, default=1.0, help="underdamped friction")
    parser.add_argument("--logreg-steps", type=int, default=10000)
    parser.add_argument("--logreg-burn-in", type=int, default=1000)
    parser.add_argument("--thin", type=int, default=10, help="keep every thin-th sample")
    parser.add_argument("--batch", type=int, default=32, help="SGLD mini-batch size")
    parser.add_argument("--prior-var", type=float, default=1.0)
    parser.add_argument("--lr-sgld", type=float, default=5e-3)
    parser.add_argument("--lr-mala", type=float, default=0.02)
    parser.add_argument("--lr-ud", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results") / "samplers",
                        help="folder of the figures (default results/samplers, git-ignored)")
    parser.add_argument("--readme", action="store_true",
                        help=f"regenerate the README's figures in {README_IMG}")
    args = parser.parse_args()
    if args.readme:
        args.out = README_IMG
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rows = gaussian(args) + logreg(args)
    print_table(rows)
    print(f"wrote {args.out / 'samplers_gaussian.png'} and {args.out / 'samplers_logreg.png'}")


if __name__ == "__main__":
    main()
