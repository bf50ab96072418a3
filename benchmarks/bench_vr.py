"""Variance-reduced optimizers: step time against SGD, and the table bytes of big models.

1. Step time on the MNIST CNN (digits resized to 28x28, N = 1437 training examples): one
   SGD step (zero_grad, forward, backward, step) against one SAGA step with recording
   (``opt.record(model)``) for each storage, and one SVRG step (two closures); interleaved
   rounds, median of per-round ratios against SGD.
2. Memory: VGG16 with ``Partition(128, LowRank(1))`` (rank-1 + Partition-128) as the
   optimizer allocates it, measured as the bytes of its table tensors, against the
   calculator (``backprobe.optim.vr_memory.storage_bytes``): CIFAR-10 shapes (N = 50,000,
   through a real SAGA step on one whole group) and the paper's ImageNet VGG16 with
   N = 1,000,000 (tables built by the optimizer's own ``make_tables``; zero pages are mapped
   lazily, so the bytes are counted, not touched).

    python benchmarks/bench_vr.py [--repeats 15] [--threads 2] [--out benchmarks/results]

Writes <out>/vr_bench.json (``--out`` default: the git-ignored results/bench).
"""

from __future__ import annotations

from typing import Any

import torch
from _harness import arguments, time_interleaved, write_json
from torch import nn

from backprobe.app import data, models
from backprobe.optim import SAGA, SVRG, Dense, Factored, LowRank, Partition, full_gradient
from backprobe.optim.storage import slot_count
from backprobe.optim.tables import make_tables
from backprobe.optim.vr_memory import storage_bytes


def step_times(batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per-step time of SGD, SAGA (each storage) and SVRG on the MNIST CNN."""
    split = data.load("digits", size=28)
    x_all, y_all = split.x_train, split.y_train
    n = x_all.shape[0]
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)

    def batch_idx() -> torch.Tensor:
        return torch.randperm(n, generator=gen)[:batch]

    def sgd_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        idx = batch_idx()
        opt.zero_grad()
        loss_fn(model(x_all[idx]), y_all[idx]).backward()
        opt.step()

    def saga_step(model: nn.Module, opt: SAGA) -> None:
        idx = batch_idx()
        opt.zero_grad()
        with opt.record(model):
            loss_fn(model(x_all[idx]), y_all[idx]).backward()
        opt.step(idx)

    def build() -> nn.Module:
        torch.manual_seed(0)
        return models.build("mnist_cnn", 1, 10, 28)

    fns = {}
    m = build()
    o = torch.optim.SGD(m.parameters(), lr=0.01)
    fns["SGD"] = lambda m=m, o=o: sgd_step(m, o)
    for name, storage in (("SAGA Factored", Factored()), ("SAGA Dense", Dense()),
                          ("SAGA LowRank(1)", LowRank(1)),
                          ("SAGA Partition(128)", Partition(128))):
        m = build()
        o = SAGA(m.parameters(), lr=0.01, num_examples=n, storage=storage)
        fns[name] = lambda m=m, o=o: saga_step(m, o)
    m = build()
    fg = full_gradient(m, loss_fn, list(zip(x_all.split(256), y_all.split(256))), n)
    svrg = SVRG(m.parameters(), lr=0.01, full_gradient=fg, snapshot_every=10**9)
    svrg.snapshot()
    svrg.steps = 1

    def svrg_step(m: nn.Module = m) -> None:
        idx = batch_idx()

        def closure() -> torch.Tensor:
            svrg.zero_grad()
            loss = loss_fn(m(x_all[idx]), y_all[idx])
            loss.backward()
            return loss

        svrg.step(closure)

    fns["SVRG"] = svrg_step
    res = time_interleaved(fns, repeats=repeats, warmup=3, reference="SGD")
    for r in res.values():
        r["overhead"] = 1 / r["speedup"]
    return res


def vgg16_memory() -> list[dict[str, object]]:
    """Table bytes held by SAGA with rank-1 + Partition-128 on VGG16, against the calculator."""
    spec = Partition(128, LowRank(1))
    rows = []
    # CIFAR-10 shapes, a real SAGA step on one whole group (no per-example recording needed)
    torch.manual_seed(0)
    model = models.vgg16(3, 10, 32, head="cifar")
    n = 50_000
    opt = SAGA(model.parameters(), lr=0.01, num_examples=n, storage=spec)
    idx = torch.arange(128)
    opt.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(128, 3, 32, 32)),
                                torch.randint(0, 10, (128,))).backward()
    opt.step(idx)
    rows.append({"model": "VGG16 (CIFAR-10 shapes, cifar head)", "examples": n,
                 "measured_bytes": opt.memory()["table"],
                 "calculator_bytes": storage_bytes(model, n, spec)})
    # ImageNet VGG16 at the paper's N = 1e6: the optimizer's table builder
    model = models.vgg16(3, 1000, 224)
    n = 1_000_000
    params = [p for p in model.parameters()]
    tables = make_tables(spec, params, slot_count(spec, n), None, torch.Generator())
    rows.append({"model": "VGG16 (ImageNet, paper)", "examples": n,
                 "measured_bytes": sum(t.nbytes for t in tables),
                 "calculator_bytes": storage_bytes(model, n, spec)})
    return rows


def main() -> None:
    """Run both parts, print markdown tables, write JSON."""
    def add(p: Any) -> None:
        p.add_argument("--repeats", type=int, default=15)
        p.add_argument("--batches", default="16,128")

    args = arguments(__doc__, add=add)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "steps": {}}
    print("\n| batch | method | median step (ms) | time / SGD |\n|---|---|---:|---:|")
    for b in map(int, args.batches.split(",")):
        res = step_times(b, args.repeats)
        out["steps"][str(b)] = res
        for name, r in res.items():
            print(f"| {b} | {name} | {1e3 * r['median_s']:.2f} | {r['overhead']:.2f}x |")
    mem = vgg16_memory()
    out["memory"] = mem
    print("\n| model | N | measured table | calculator |\n|---|---:|---:|---:|")
    for r in mem:
        print(f"| {r['model']} | {r['examples']:,} | {r['measured_bytes'] / 1e9:.4f} GB | "
              f"{r['calculator_bytes'] / 1e9:.4f} GB |")
    print(f"wrote {write_json(args.out / f'vr_bench{args.suffix}.json', **out)}")


if __name__ == "__main__":
    main()
