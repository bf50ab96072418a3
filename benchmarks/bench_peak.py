"""Peak memory of one training step, where it sits, and what fits in a budget.

For each network and variant (exact; ``torch.utils.checkpoint.checkpoint_sequential`` with
the best of 2/4/8 segments, or for the U-Net, which is no ``nn.Sequential``, every
double-conv block checkpointed; compact activations only, ``convert(model, Exact())``; probed,
``convert(model, Probe(16))``; and, with ``--in-backward``, probed (plain, ``shaping="dct"``,
and inside checkpointed blocks: ResNet's basic blocks, U-Net's double convolutions, or the
best segment count) with the optimizer stepping inside backward),
measures with :func:`backprobe.peak_memory` (CPU: every allocation and free of the step, in
order; exact for tensor memory, independent of glibc) at two batch sizes:

* the bytes autograd saves for backward (``saved_activation_bytes``);
* the peak of one SGD-with-momentum step above the step's start (weights, momentum and the
  batch already held), and the segment (phase, layer) holding it;
* the largest batch whose total (weights + momentum + batch + peak) fits ``--budget``,
  extrapolated linearly from the two batch sizes (:func:`backprobe.peak.largest_batch`);
* the step time ratio against exact (interleaved rounds, median of per-round ratios).

Usage::

    python benchmarks/bench_peak.py --threads 2 --out benchmarks/results
    python benchmarks/bench_peak.py --models mnist_cnn --no-time
    python benchmarks/bench_peak.py --models unet --no-time --in-backward --out results/bench
    python benchmarks/bench_peak.py --time-only --threads 2 --out benchmarks/results

The U-Net (``unet``: 3x256x256 input, 4 classes, batch 4 and 8) is trained with per-pixel
cross-entropy, labels ``[N, H, W]``.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from typing import Any

import _harness as H
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

import backprobe
from backprobe.app import models as M
from backprobe.peak import largest_batch, peak_memory

GIB = 2**30


def resnet18_imagenet(num_classes: int = 1000) -> nn.Module:
    """ResNet-18 with the ImageNet stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool)."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    c = 64
    for i, p in enumerate((64, 128, 256, 512)):
        layers.append(nn.Sequential(M.BasicBlock(c, p, 1 if i == 0 else 2), M.BasicBlock(p, p)))
        c = p
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


#: name -> (builder, input shape without batch, classes, (small batch, large batch), time batch)
NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int, tuple[int, int], int]] = {
    "mnist_cnn": (lambda: M.mnist_cnn(1, 10, 28), (1, 28, 28), 10, (128, 256), 128),
    "c3d": (lambda: M.c3d(3, 10, 32), (3, 32, 32), 10, (128, 256), 128),
    "vgg11": (lambda: M.vgg(3, 10, 32), (3, 32, 32), 10, (64, 256), 64),
    "resnet18_224": (resnet18_imagenet, (3, 224, 224), 1000, (8, 32), 8),
    "unet": (lambda: M.unet(3, 4, 256), (3, 256, 256), 4, (4, 8), 8),
}

#: networks checkpointed block by block in the probes-plus-checkpointing variant
BLOCKS = {"resnet18_224", "unet"}

#: networks with per-pixel logits ``[N, classes, H, W]``: labels ``[N, H, W]``
DENSE = {"unet"}


class CheckpointedBlocks(nn.Module):
    """``torch.utils.checkpoint`` around one block (recomputed in backward)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return checkpoint(self.block, x, use_reentrant=False)


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Checkpoint every block of a non-sequential model: U-Net's ``nn.Sequential`` double
    convolutions, ResNet's basic blocks."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Sequential | M.BasicBlock) and model is not child and not (
                isinstance(child, nn.Sequential) and any(
                    isinstance(c, M.BasicBlock) for c in child.children())):
            setattr(model, name, CheckpointedBlocks(child))
        else:
            checkpoint_blocks(child)
    return model


class Checkpointed(nn.Module):
    """``checkpoint_sequential`` over a top-level ``nn.Sequential``."""

    def __init__(self, seq: nn.Sequential, segments: int) -> None:
        super().__init__()
        self.seq, self.segments = seq, segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return checkpoint_sequential(self.seq, self.segments, x, use_reentrant=False)


def variant(name: str, base: nn.Module) -> tuple[nn.Module, bool]:
    """``(model, in_backward)``: a fresh copy of ``base`` made into variant ``name``.

    ``name`` is a base variant (``exact``, ``checkpoint:N``, ``checkpoint:blocks``,
    ``compact``, ``probe16``, ``probe16dct``) with optional ``+ckpt:N`` / ``+ckpt:blocks``
    (checkpointing on top of the conversion) and ``+inbwd`` (optimizer step in backward).
    """
    base_name, *mods = name.split("+")
    model = copy.deepcopy(base)
    if base_name == "compact":
        backprobe.convert(model, backprobe.Exact())
    elif base_name.startswith("probe16"):
        shaping = "dct" if base_name == "probe16dct" else None
        backprobe.convert(model, backprobe.Probe(16, seed=0, shaping=shaping))
    elif base_name.startswith("checkpoint"):
        mods.insert(0, "ckpt:" + base_name.split(":")[1])
    elif base_name != "exact":
        raise ValueError(name)
    for mod in mods:
        if mod == "ckpt:blocks":
            model = checkpoint_blocks(model)
        elif mod.startswith("ckpt:"):
            model = Checkpointed(model, int(mod.split(":")[1]))  # type: ignore[arg-type]
        elif mod != "inbwd":
            raise ValueError(name)
    return model, "inbwd" in mods


def make_optimizer(model: nn.Module, in_backward: bool) -> Any:
    """SGD with momentum, plain or stepping inside backward."""
    if in_backward:
        from backprobe.optim.in_backward import step_in_backward

        return step_in_backward(model, torch.optim.SGD, lr=1e-3, momentum=0.9)
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def setup(net: str, name: str,
          batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, Any, nn.Module]:
    """A seeded model of one variant, a seeded batch, its optimizer and the loss."""
    build, shape, classes, _, _ = NETWORKS[net]
    torch.manual_seed(0)
    model, inbwd = variant(name, build())
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    labels = (batch, *shape[1:]) if net in DENSE else (batch,)  # per-pixel: [N, H, W]
    y = torch.randint(0, classes, labels, generator=torch.Generator().manual_seed(2))
    return model, x, y, make_optimizer(model, inbwd), nn.CrossEntropyLoss()


def measure(net: str, name: str, batch: int) -> dict[str, Any]:
    """Saved bytes, peak and its location for one variant at one batch size."""
    model, x, y, opt, loss_fn = setup(net, name, batch)
    saved = backprobe.saved_activation_bytes(model, x, y, loss_fn)
    res = peak_memory(model, x, y, loss_fn, optimizer=opt)
    where = res.where
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {
        "network": net, "variant": name, "batch": batch, "saved_bytes": saved,
        "peak_bytes": res.peak, "peak_phase": where.phase if where else "",
        "peak_layer": where.module if where else "",
        "phase_peaks_bytes": res.by_phase(), "weight_bytes": weights,
        "input_bytes": x.numel() * x.element_size(),
        "top_segments": [vars(s) for s in sorted(res.segments, key=lambda s: -s.peak)[:5]],
    }
    del model, opt, x, y
    gc.collect()
    return out


def fit_budget(small: dict[str, Any], large: dict[str, Any], budget: int) -> int:
    """Largest batch whose weights + momentum + batch + peak fit ``budget`` (linear fit)."""
    def total(r: dict[str, Any]) -> int:
        return 2 * r["weight_bytes"] + r["input_bytes"] + r["peak_bytes"]

    return largest_batch((small["batch"], total(small)), (large["batch"], total(large)), budget)


def step_fn(net: str, name: str, batch: int) -> Callable[[], None]:
    """A closure running one training step of a variant (for timing)."""
    model, x, y, opt, loss_fn = setup(net, name, batch)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    def add(p: Any) -> None:
        p.add_argument("--models", default=",".join(NETWORKS), help="comma-separated networks")
        p.add_argument("--budget-gib", type=float, default=2.0)
        p.add_argument("--repeats", type=int, default=5, help="timed rounds")
        p.add_argument("--no-time", action="store_true", help="skip the step-time ratios")
        p.add_argument("--time-only", action="store_true",
                       help="only step times of exact, compact, probe16, probe16+inbwd "
                       "(step_time.json; no peak measurement, run without a pinned "
                       "MALLOC_MMAP_THRESHOLD_, which makes every large allocation fault)")
        p.add_argument("--in-backward", action="store_true",
                       help="also measure probe16 with the optimizer step inside backward "
                       "(plain, shaped, and inside checkpointed blocks)")

    args = H.arguments(__doc__, add=add)
    if args.time_only:
        time_only(args)
        return
    rows: list[dict[str, Any]] = []
    budget = int(args.budget_gib * GIB)
    for net in args.models.split(","):
        small_b, large_b = NETWORKS[net][3]
        variants = ["exact", "compact", "probe16"] + (
            ["probe16+inbwd", "probe16dct+inbwd"] if args.in_backward else [])
        # checkpoint: the segment count with the lowest peak at the small batch; a model that
        # is not one nn.Sequential (U-Net) checkpoints each of its Sequential blocks instead
        best: tuple[int, str] | None = None
        sequential = isinstance(NETWORKS[net][0](), nn.Sequential)
        for seg in (2, 4, 8) if sequential else ():
            r = measure(net, f"checkpoint:{seg}", small_b)
            H.progress(f"{net} checkpoint:{seg} b={small_b}: {r['peak_bytes'] / 2**20:.1f} MiB")
            if best is None or r["peak_bytes"] < best[0]:
                best = (r["peak_bytes"], f"checkpoint:{seg}")
        variants.insert(1, best[1] if best is not None else "checkpoint:blocks")
        if args.in_backward:  # probes inside checkpointed blocks (ResNet, U-Net) or segments
            blocks = net in BLOCKS or best is None
            variants.append("probe16+ckpt:" + (
                "blocks" if blocks else best[1].split(":")[1]) + "+inbwd")  # type: ignore[index]
        for name in variants:
            small, large = measure(net, name, small_b), measure(net, name, large_b)
            row = {**large, "peak_small_bytes": small["peak_bytes"], "batch_small": small_b,
                   "max_batch_in_budget": fit_budget(small, large, budget)}
            rows.append(row)
            H.progress(f"{net} {name}: saved {large['saved_bytes'] / 2**20:.1f} MiB, peak "
                       f"{large['peak_bytes'] / 2**20:.1f} MiB at {large['peak_phase']} "
                       f"{large['peak_layer']}, fits {row['max_batch_in_budget']}")
        if not args.no_time:
            tb = NETWORKS[net][4]
            fns: dict[str, Callable[[], object]] = {
                name: step_fn(net, name, tb) for name in variants}
            fns = {"exact" if k == "exact" else k: v for k, v in fns.items()}
            times = H.time_interleaved(fns, repeats=args.repeats, warmup=1, reference="exact",
                                       clock=args.clock)
            for row in rows:
                if row["network"] == net:
                    t = times[row["variant"]]
                    row.update(time_batch=tb, step_s=t["median_s"], speed_vs_exact=t["speedup"])
        exact = next(r for r in rows if r["network"] == net and r["variant"] == "exact")
        for row in rows:
            if row["network"] == net:
                row["peak_reduction"] = exact["peak_bytes"] / row["peak_bytes"]
    cols = ["network", "variant", "batch", "saved_bytes", "peak_bytes", "peak_reduction",
            "peak_phase", "peak_layer", "max_batch_in_budget", "speed_vs_exact"]
    print(H.markdown_table(rows, cols))
    path = H.write_json(args.out / f"peak{args.suffix}.json", rows=rows,
                        budget_bytes=budget, optimizer="SGD(momentum=0.9)",
                        method="backprobe.peak_memory (CPU allocator events via torch.profiler)")
    H.progress(f"wrote {path}")


def time_only(args: Any) -> None:
    """Step-time ratios against exact at each network's time batch (``--time-only``)."""
    rows: list[dict[str, Any]] = []
    variants = ["exact", "compact", "probe16", "probe16+inbwd"]
    for net in args.models.split(","):
        tb = NETWORKS[net][4]
        fns: dict[str, Callable[[], object]] = {v: step_fn(net, v, tb) for v in variants}
        times = H.time_interleaved(fns, repeats=args.repeats, warmup=1, reference="exact",
                                   clock=args.clock)
        for v in variants:
            rows.append({"network": net, "variant": v, "batch": tb,
                         "step_s": times[v]["median_s"], "speed_vs_exact": times[v]["speedup"]})
            H.progress(f"{net} b={tb} {v}: {times[v]['median_s'] * 1e3:.1f} ms, "
                       f"{times[v]['speedup']:.2f}x exact's speed")
    print(H.markdown_table(rows, ["network", "variant", "batch", "step_s", "speed_vs_exact"]))
    path = H.write_json(args.out / f"step_time{args.suffix}.json", rows=rows,
                        optimizer="SGD(momentum=0.9)", clock=args.clock, repeats=args.repeats)
    H.progress(f"wrote {path}")


if __name__ == "__main__":
    main()
