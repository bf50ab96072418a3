"""backprobe.linalg against curvlinops 3.0.1: accuracy at equal matvecs, auto, throughput.

Accuracy: median relative error over ``--seeds`` seeds, both libraries in the same run, on

* ``decaying``: PSD, ``lambda_i = i^-2``, ``n = 1000`` (the issue's published medians at 100
  matvecs: Hutchinson 5.9e-2, Hutch++ 3.6e-4, XTrace 2.9e-4, XNysTrace 1.8e-4);
* ``flat``: PSD, eigenvalues i.i.d. U(0, 1), ``n = 1000`` (deflation wastes matvecs);
* ``mlp_ggn``: the GGN (dense, float64) of an MLP 64-32-10 (ReLU, 2410 parameters) trained
  briefly on the scikit-learn digits (1437 training images), cross-entropy.

Trace methods at 100 matvecs (Hutch++ at 99: curvlinops needs a multiple of 3); diagonal
methods (relative error in the 2-norm) at 100. curvlinops draws from the global RNG, seeded
per repetition; ours gets ``generator=seed``. Rademacher probes throughout.

Throughput: GGN and Hessian products on 3C3D (CIFAR-10 shape, 895k parameters), one batch of
``--batch`` random images, blocks of ``--k`` vectors, ours and curvlinops' operators
interleaved; ratio = median over rounds of t_curvlinops / t_ours (> 1: we are faster).
Accuracy ratios (curvlinops / ours) come with a bootstrap 95% interval over seeds: the
shared methods are the same algorithms, so intervals around 1 mean "equal".

Usage:
    python benchmarks/bench_linalg.py --out benchmarks/results [--seeds 50] [--threads 2]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from _harness import arguments, progress, time_interleaved, write_json
from torch import nn

from backprobe import linalg

TRACE = {  # name -> (our method, curvlinops function name, matvecs)
    "hutchinson_trace": ("hutchinson", "hutchinson_trace", 100),
    "hutchpp_trace": ("hutchpp", "hutchpp_trace", 99),
    "xtrace": ("xtrace", "xtrace", 100),
    "xnystrace": ("xnystrace", None, 100),
    "na_hutchpp": ("na_hutchpp", None, 100),
    "auto": ("auto", None, 100),
}
DIAG = {"hutchinson_diag": ("hutchinson", "hutchinson_diag"), "xdiag": ("xdiag", "xdiag")}


def with_spectrum(lam: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(len(lam), len(lam), dtype=torch.float64, generator=g)).Q
    a = q @ torch.diag(lam) @ q.T
    return (a + a.T) / 2


def mlp_ggn() -> torch.Tensor:
    """Dense GGN of a briefly trained MLP on digits (formed by our operator, in blocks)."""
    from sklearn.datasets import load_digits

    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np[:1437] / 16.0, dtype=torch.float64)
    y = torch.tensor(y_np[:1437])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lf = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        lf(model(x[idx]), y[idx]).backward()
        opt.step()
    op = linalg.GGNOperator(model, lf, (x, y))
    n = op.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    cols = [op.matmat(eye[:, i:i + 128]) for i in range(0, n, 128)]
    a = torch.cat(cols, 1)
    return (a + a.T) / 2


def ratio_ci(theirs: list[float], ours: list[float], reps: int = 2000) -> list[float]:
    """Bootstrap 95% interval of median(theirs) / median(ours) (seeds resampled)."""
    g = torch.Generator().manual_seed(0)
    t, o = torch.tensor(theirs), torch.tensor(ours)
    i = torch.randint(0, len(t), (reps, len(t)), generator=g)
    j = torch.randint(0, len(o), (reps, len(o)), generator=g)
    r = t[i].median(1).values / o[j].median(1).values
    return [float(r.quantile(0.025)), float(r.quantile(0.975))]


def accuracy(name: str, a: torch.Tensor, seeds: int) -> dict[str, object]:
    import curvlinops

    tr = float(a.trace())
    d = a.diagonal()
    out: dict[str, object] = {"n": a.shape[0], "trace": tr}
    rows = {}
    for key, (ours, theirs, m) in TRACE.items():
        e_ours, methods = [], set()
        for s in range(seeds):
            est = linalg.trace(a, m, method=ours, generator=s)
            e_ours.append(abs(est.value - tr) / abs(tr))
            methods.add(est.method)
        row: dict[str, object] = {"matvecs": m, "ours": statistics.median(e_ours),
                                  "ours_method": sorted(methods)}
        if theirs is not None:
            fn = getattr(curvlinops, theirs)
            e_theirs = []
            for s in range(seeds):
                torch.manual_seed(s)
                e_theirs.append(abs(float(fn(a, m)) - tr) / abs(tr))
            row["curvlinops"] = statistics.median(e_theirs)
            row["ratio_curvlinops_over_ours"] = row["curvlinops"] / row["ours"]
            row["ratio_ci95"] = ratio_ci(e_theirs, e_ours)
        rows[key] = row
        progress(f"{name} {key}: {row}")
    best = min(v["ours"] for k, v in rows.items() if k != "auto")
    rows["auto"]["ratio_to_best"] = rows["auto"]["ours"] / best
    rows["auto"]["ratio_to_best_curvlinops"] = rows["auto"]["ours"] / min(
        v["curvlinops"] for v in rows.values() if "curvlinops" in v)
    out["trace"] = rows
    drows = {}
    for key, (ours, theirs) in DIAG.items():
        fn = getattr(curvlinops, theirs)
        e_ours, e_theirs = [], []
        for s in range(seeds):
            est = linalg.diagonal(a, 100, method=ours, generator=s)
            e_ours.append(float((est.value - d).norm() / d.norm()))
            torch.manual_seed(s)
            e_theirs.append(float((fn(a, 100) - d).norm() / d.norm()))
        drows[key] = {"matvecs": 100, "ours": statistics.median(e_ours),
                      "curvlinops": statistics.median(e_theirs)}
        drows[key]["ratio_curvlinops_over_ours"] = drows[key]["curvlinops"] / drows[key]["ours"]
        drows[key]["ratio_ci95"] = ratio_ci(e_theirs, e_ours)
        progress(f"{name} {key}: {drows[key]}")
    out["diagonal"] = drows
    return out


def throughput(batch: int, k: int, repeats: int) -> dict[str, object]:
    from curvlinops import GGNLinearOperator, HessianLinearOperator

    from backprobe.app.models import build

    torch.manual_seed(0)
    model = build("c3d", 3, 10, 32).eval()
    params = list(model.parameters())
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    lf = nn.CrossEntropyLoss()
    v = torch.randn(sum(p.numel() for p in params), k)
    res: dict[str, object] = {"model": "3c3d", "params": v.shape[0], "batch": batch, "k": k}
    for name, ours, theirs in [
        ("ggn", linalg.GGNOperator(model, lf, (x, y)),
         GGNLinearOperator(model, lf, params, [(x, y)], check_deterministic=False)),
        ("hessian", linalg.HessianOperator(model, lf, (x, y)),
         HessianLinearOperator(model, lf, params, [(x, y)], check_deterministic=False)),
    ]:
        diff = float((ours @ v - theirs @ v).norm() / (theirs @ v).norm())
        t = time_interleaved({"curvlinops": lambda op=theirs: op @ v,
                              "ours": lambda op=ours: op @ v},
                             repeats=repeats, warmup=1, reference="curvlinops")
        res[name] = {"relative_difference": diff, "ours_s": t["ours"]["median_s"],
                     "curvlinops_s": t["curvlinops"]["median_s"],
                     "speedup_vs_curvlinops": t["ours"]["speedup"]}
        progress(f"throughput {name}: {res[name]}")
    return res


def main() -> None:
    def add(p):
        p.add_argument("--seeds", type=int, default=50)
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--k", type=int, default=4)
        p.add_argument("--repeats", type=int, default=5)
        p.add_argument("--skip-throughput", action="store_true")
        p.add_argument("--reuse-throughput", action="store_true",
                       help="keep the throughput section of an existing output file")

    args = arguments(__doc__, add=add)
    t0 = time.perf_counter()
    n = 1000
    matrices = {
        "decaying": lambda: with_spectrum(torch.arange(1, n + 1, dtype=torch.float64) ** -2.0),
        "flat": lambda: with_spectrum(torch.rand(n, dtype=torch.float64,
                                                 generator=torch.Generator().manual_seed(1))),
        "mlp_ggn": mlp_ggn,
    }
    results = {name: accuracy(name, make(), args.seeds) for name, make in matrices.items()}
    payload: dict[str, object] = {"seeds": args.seeds, "accuracy": results,
                                  "published_decaying_100": {
                                      "hutchinson": 5.9e-2, "hutchpp": 3.6e-4, "xtrace": 2.9e-4,
                                      "xnystrace": 1.8e-4}}
    path = args.out / f"linalg{args.suffix}.json"
    if args.reuse_throughput and path.exists():
        import json

        payload["throughput"] = json.loads(path.read_text())["throughput"]
    elif not args.skip_throughput:
        payload["throughput"] = throughput(args.batch, args.k, args.repeats)
    payload["elapsed_s"] = time.perf_counter() - t0
    path = write_json(path, **payload)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
