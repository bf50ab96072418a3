"""Backward time of AOP (Mem-AOP-GD) against exact autograd, interleaved in one run.

Two measurements per model and K/M in {1/2, 1/4, 1/8}:

* weight-gradient part: the exact ``G^T X`` of one layer (``op.weight_grad``, what autograd
  calls) against AOP's ``weight_grad`` on the same ``x`` and ``g`` (selection, gather,
  matmul, memory update);
* full backward: ``loss.backward()`` of a plain torch model against the same model
  converted with AOP on every Linear/Conv layer (input gradients stay exact in both).

Exact and AOP are timed alternately (pairs); the speed-up is the median of the per-pair
ratios exact/AOP. Results: ``<out>/aop_bench.json`` (``--out`` default: the git-ignored
results/bench; ``--out benchmarks/results`` for the README's figures) and a markdown table.

A fresh 4096 x 4096 gradient costs tens of ms of page faults with glibc's default malloc
(large blocks are mmap'ed and returned on free); that fixed cost is the same for exact and
AOP and caps the ratio. ``--malloc-reuse`` reruns the script with glibc told to keep freed
memory (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``, as jemalloc or tcmalloc
would) and writes ``aop_bench_malloc_reuse.json``.

Usage:
    python benchmarks/bench_aop.py [--reps 7] [--threads 1] [--malloc-reuse]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _harness import arguments, machine_info, time_interleaved, timed, write_json
from torch import nn

import backprobe
from backprobe.estimators.aop import AOP, reset_memory
from backprobe.layers import bind

FRACTIONS = (0.5, 0.25, 0.125)
VARIANTS = (("topk", True), ("topk", False), ("randk", False))
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def pairs(exact: Callable[[], object], other: Callable[[], object], reps: int) -> dict:
    """Exact and AOP interleaved ``reps`` rounds (one warm-up): median times and ratio."""
    res = time_interleaved({"exact": exact, "aop": other}, repeats=reps, warmup=1)
    return {"exact_ms": 1e3 * res["exact"]["median_s"], "aop_ms": 1e3 * res["aop"]["median_s"],
            "speedup": res["aop"]["speedup"]}


def wide_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10)
    )


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 10),
    )


def weight_grad_part(layer: nn.Module, x: torch.Tensor, reps: int,
                     variants: tuple = VARIANTS) -> list[dict]:
    """One layer's weight gradient: exact ``op.weight_grad`` vs AOP's, same x and g."""
    xin, op = bind(layer, x)
    with torch.no_grad():
        g = torch.randn_like(layer(x))
    rows = op.canonical_output_grad(g).shape[0] * op.canonical_output_grad(g).shape[1]
    out = []
    for frac in FRACTIONS:
        for policy, memory in variants:
            aop = AOP(frac, policy=policy, memory=memory, seed=0)
            est = aop.for_module(layer)  # binds the memory buffers to the layer
            def approx(est: backprobe.Estimator = est) -> object:
                return est.weight_grad(op, (xin,), None, g)

            res = pairs(lambda: op.weight_grad(xin, g), approx, reps)
            res.update(fraction=frac, k=aop.num_rows(rows), rows=rows, policy=policy,
                       memory=memory)
            out.append(res)
            reset_memory(layer)
    return out


def full_backward(make: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor,
                  reps: int, variants: tuple = VARIANTS) -> list[dict]:
    """``loss.backward()`` of the plain model vs the AOP-converted copy (forward untimed)."""
    torch.manual_seed(0)
    plain = make()
    out = []
    for frac in FRACTIONS:
        for policy, memory in variants:
            model = backprobe.convert(copy.deepcopy(plain), AOP(frac, policy=policy,
                                      memory=memory, seed=0), compact_activations=False)

            def run(m: nn.Module) -> Callable[[], float]:
                def step() -> float:
                    loss = F.cross_entropy(m(x), y)
                    m.zero_grad(set_to_none=True)
                    return timed(loss.backward)
                return step

            run(plain)(), run(model)()
            te: list[float] = []
            to: list[float] = []
            for _ in range(reps):
                te.append(run(plain)())
                to.append(run(model)())
            out.append({
                "fraction": frac, "policy": policy, "memory": memory,
                "exact_ms": 1e3 * statistics.median(te), "aop_ms": 1e3 * statistics.median(to),
                "speedup": statistics.median(e / o for e, o in zip(te, to, strict=True)),
            })
    return out


def table(rows: list[dict], model: str, part: str) -> list[str]:
    lines = []
    for r in rows:
        mem = {True: "memory", False: "no memory"}[r["memory"]]
        lines.append(
            f"| {model} | {part} | 1/{round(1 / r['fraction'])} | {r['policy']}, {mem} | "
            f"{r['exact_ms']:.1f} | {r['aop_ms']:.1f} | {r['speedup']:.2f}x |"
        )
    return lines


def main() -> None:
    def add(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--reps", type=int, default=7)
        ap.add_argument("--malloc-reuse", action="store_true")

    if "--threads" not in sys.argv:  # one thread by default: on a shared, oversubscribed
        sys.argv += ["--threads", "1"]  # machine more threads mostly add barrier stalls
    args = arguments(__doc__, add=add)
    if args.malloc_reuse and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    name = "aop_bench_malloc_reuse" if args.malloc_reuse else "aop_bench"
    gen = torch.Generator().manual_seed(0)
    machine = machine_info()
    cpu, threads = machine["cpu"], machine["torch_threads"]
    result: dict = {
        "reps": args.reps, "malloc_reuse": args.malloc_reuse,
        "note": "shared machine: timings are noisy; ratios are medians of interleaved pairs",
    }
    t0 = time.time()

    torch.manual_seed(0)
    x = torch.randn(256, 4096, generator=gen)
    y = torch.randint(0, 10, (256,), generator=gen)
    layer = nn.Linear(4096, 4096)
    result["mlp_weight_grad"] = weight_grad_part(layer, x, args.reps)
    result["mlp_backward"] = full_backward(wide_mlp, x, y, max(3, args.reps // 2))

    xc = torch.randn(64, 3, 32, 32, generator=gen)
    yc = torch.randint(0, 10, (64,), generator=gen)
    conv = nn.Conv2d(32, 64, 3, padding=1)
    xconv = torch.randn(64, 32, 16, 16, generator=gen)
    result["cnn_weight_grad"] = weight_grad_part(conv, xconv, args.reps, VARIANTS[:2])
    result["cnn_backward"] = full_backward(small_cnn, xc, yc, args.reps, VARIANTS[:2])
    result["seconds"] = round(time.time() - t0, 1)

    out = write_json(args.out / f"{name}{args.suffix}.json", **result)
    lines = [
        f"AOP backward vs exact on {cpu}, {threads} threads, torch {torch.__version__} "
        f"(median of per-pair ratios; malloc reuse: {args.malloc_reuse}; shared machine, "
        "noisy)", "",
        "| model | part | K/M | policy | exact ms | AOP ms | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += table(result["mlp_weight_grad"], "MLP 4096, batch 256", "W-grad, 1 layer")
    lines += table(result["mlp_backward"], "MLP 4096, batch 256", "full backward")
    lines += table(result["cnn_weight_grad"], "CNN, batch 64", "W-grad, conv 32->64 16x16")
    lines += table(result["cnn_backward"], "CNN, batch 64", "full backward")
    print("\n".join(lines))
    print(f"\nwrote {out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
