"""Exact vs probed Conv2d(C, C, 3x3, pad 1): weight-gradient time, step time, saved bytes.

    python benchmarks/bench_layers.py            # --quick: a few minutes on a laptop CPU
    python benchmarks/bench_layers.py --full     # image size 32..256, channels 4..64, batch 8..64
    python benchmarks/bench_layers.py --threads 1 --clock cpu   # steadier on a busy machine
    python benchmarks/bench_layers.py --out benchmarks/results  # the README's figures

Prints markdown tables, writes <out>/layers_<grid>.json and <out>/bench_layers_<grid>.png
(``--out`` default: the git-ignored results/bench). Speed-ups are medians of per-round ratios
against exact, measured interleaved in the same run (> 1: faster than exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from _harness import REFERENCE, arguments, ints, markdown_table, progress, time_interleaved
from _harness import write_json as write_result
from _probes import MAX_PROBE_ENTRIES, NO_WGRAD, describe, probe_candidates
from torch import nn

import backprobe
from backprobe.app.report import pyplot, save_figure
from backprobe.estimators import Probe
from backprobe.layers import bind
from backprobe.memory import saved_tensors

LAYER_COLUMNS = ("batch", "channels", "image_size", "candidate", "wgrad_s", "wgrad_speedup",
                 "step_s", "step_speedup", "saved_bytes", "memory_reduction", "path")
#: Defaults per grid: probe counts, timed rounds, seconds per timing before stopping early.
LAYER_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {"r": (4, 16, 64), "repeats": 5, "budget_s": 5.0},
    "full": {"r": (4, 8, 16, 32, 64), "repeats": 10, "budget_s": 30.0},
}


@dataclass(frozen=True)
class LayerCase:
    """A ``Conv2d(C, C, 3x3, pad 1, no bias)`` applied to ``[batch, C, size, size]``."""

    batch: int
    channels: int
    image_size: int


def layer_grid(kind: str = "quick") -> list[LayerCase]:
    """The benchmarked layer shapes.

    ``"quick"`` sweeps the image size (32, 64, 128) at batch 8 and 16 channels, plus one layer
    of the XConv stack (batch 32, 16 channels, 64x64); ``"full"`` sweeps, one axis at a time
    around batch 32 / 16 channels / 64x64, image size 32..256, channels 4..64, batch 8..64.
    """
    if kind == "quick":
        return [LayerCase(8, 16, s) for s in (32, 64, 128)] + [LayerCase(32, 16, 64)]
    if kind != "full":
        raise ValueError(f"layer_grid: kind must be 'quick' or 'full', got {kind!r}")
    cases = [LayerCase(32, 16, s) for s in (32, 64, 128, 256)]  # batch 32, 16 channels
    cases += [LayerCase(32, c, 64) for c in (4, 8, 32, 64)]
    cases += [LayerCase(b, 16, 64) for b in (8, 16, 64)]
    return cases


def bench_layer(
    case: LayerCase, probes: dict[str, Probe], *, repeats: int = 10, warmup: int = 2,
    budget_s: float | None = None, clock: str = "wall", seed: int = 0,
    max_probe_entries: int = MAX_PROBE_ENTRIES,
) -> list[dict[str, Any]]:
    """Exact vs each probe on one convolution: weight-gradient time, step time, saved bytes.

    * ``wgrad``: the weight gradient alone, from what forward kept: ``op.weight_grad(x, g)``
      for exact, ``probe.weight_grad(op, sketch, meta, g)`` for a probe (``pack`` done once
      beforehand, outside the timing).
    * ``step``: forward + backward of the layer, input and weight gradients (as inside a
      network): plain ``nn.Conv2d`` vs ``backprobe.nn.Conv2d(estimator=probe)``.
    * ``saved_bytes``: what autograd keeps for backward (the weight excluded).

    The step is also timed without any weight gradient (row ``"bound: no weight grad"``,
    forward + input gradient only): no estimator's step can beat that bound. Probes
    drawing more than ``max_probe_entries`` numbers per call (``N * r * Q``, e.g.
    joint mode at 256x256) are not timed: their row says ``"skipped"`` in ``path``.

    Returns:
        One row per candidate (``"exact"`` first, the bound last) with the case, times and
        ratios.
    """
    gen = torch.Generator().manual_seed(seed)
    n, c, s = case.batch, case.channels, case.image_size
    x = torch.randn(n, c, s, s, generator=gen).requires_grad_(True)
    g = torch.randn(n, c, s, s, generator=gen)
    exact = nn.Conv2d(c, c, 3, padding=1, bias=False)
    xin, op = bind(exact, x.detach())

    def entries(p: Probe) -> int:
        b, _, q = op.probe_view(xin, p.mode).shape
        return b * p.num_probes * q if p.per_sample else p.num_probes * q

    skipped = {k: p for k, p in probes.items() if entries(p) > max_probe_entries}
    probes = {k: p for k, p in probes.items() if k not in skipped}
    probed = {k: backprobe.nn.Conv2d(c, c, 3, padding=1, bias=False, estimator=p)
              for k, p in probes.items()}
    for m in probed.values():
        m.weight = exact.weight

    def step(module: nn.Conv2d) -> Callable[[], object]:
        return lambda: torch.autograd.grad(module(x), (x, module.weight), g)

    def wgrad_fn(probe: Probe) -> Callable[[], object]:
        saved, meta = probe.pack(op, xin)  # forward's sketch, made once outside the timing
        return lambda: probe.weight_grad(op, saved, meta, g)

    wgrad_fns: dict[str, Callable[[], object]] = {REFERENCE: lambda: op.weight_grad(xin, g)}
    step_fns: dict[str, Callable[[], object]] = {
        REFERENCE: step(exact),
        NO_WGRAD: lambda: torch.autograd.grad(exact(x), (x,), g),
    }
    for k, p in probes.items():
        wgrad_fns[k] = wgrad_fn(p)
        step_fns[k] = step(probed[k])
    kw: dict[str, Any] = {"repeats": repeats, "warmup": warmup, "budget_s": budget_s,
                          "clock": clock}
    wgrad = time_interleaved(wgrad_fns, **kw)
    steps = time_interleaved(step_fns, **kw)

    rows = []
    modules: dict[str, nn.Module] = {REFERENCE: exact, **probed}
    exact_bytes = 0
    for k, module in modules.items():
        with saved_tensors(exclude=[exact.weight]) as log:
            module(x)
        if k == REFERENCE:
            exact_bytes = log.bytes
        rows.append({
            **asdict(case), **describe(k, probes.get(k)),
            "path": getattr(module, "last_path", None) or "exact",
            "wgrad_s": wgrad[k]["median_s"], "wgrad_speedup": wgrad[k]["speedup"],
            "step_s": steps[k]["median_s"], "step_speedup": steps[k]["speedup"],
            "saved_bytes": log.bytes, "memory_reduction": exact_bytes / max(log.bytes, 1),
            "repeats": min(wgrad[k]["repeats"], steps[k]["repeats"]),
        })
    for k, p in skipped.items():
        rows.append({**asdict(case), **describe(k, p),
                     "path": f"skipped ({entries(p):.2e} probe entries per call)"})
    rows.append({
        **asdict(case), **describe(NO_WGRAD, None), "path": "exact",
        "step_s": steps[NO_WGRAD]["median_s"], "step_speedup": steps[NO_WGRAD]["speedup"],
        "repeats": steps[NO_WGRAD]["repeats"],
    })
    return rows


def bench_layers(
    cases: Sequence[LayerCase], probes: dict[str, Probe], *,
    progress: Callable[[str], None] | None = None, **kw: Any,
) -> list[dict[str, Any]]:
    """:func:`bench_layer` over ``cases``; ``kw`` goes to it (repeats, warmup, budget_s)."""
    rows: list[dict[str, Any]] = []
    for case in cases:
        if progress is not None:
            progress(f"layer {case}")
        rows += bench_layer(case, probes, **kw)
    return rows


def run_layers(
    grid: str = "quick", *, rs: Sequence[int] | None = None, repeats: int | None = None,
    warmup: int = 1, budget_s: float | None = None, clock: str = "wall",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The layer benchmark: every case of ``layer_grid(grid)``, exact vs all probe variants.

    Args:
        grid: ``"quick"`` or ``"full"``; arguments left ``None`` take its
            :data:`LAYER_DEFAULTS`.
        rs: probe counts.
        repeats: timed rounds.
        warmup: untimed rounds.
        budget_s: seconds of timed rounds per timing before stopping early.
        clock: ``"wall"`` or ``"cpu"`` (see :func:`time_interleaved`).
        progress: called with a line per case.

    Returns:
        ``{"config": ..., "rows": [...]}`` (pass to :func:`write_json`, :func:`layers_markdown`).
    """
    d = LAYER_DEFAULTS[grid]
    rs = tuple(rs or d["r"])
    repeats = repeats or d["repeats"]
    budget_s = d["budget_s"] if budget_s is None else budget_s
    cases = layer_grid(grid)
    rows = bench_layers(cases, probe_candidates(rs), repeats=repeats, warmup=warmup,
                        budget_s=budget_s, clock=clock, progress=progress)
    config = {"grid": grid, "r": list(rs), "repeats": repeats, "warmup": warmup,
              "budget_s": budget_s, "clock": clock, "cases": [asdict(c) for c in cases]}
    return {"config": config, "rows": rows}


def layers_markdown(result: dict[str, Any]) -> str:
    """One markdown table per layer case of a :func:`run_layers` result."""
    parts = []
    for case in result["config"]["cases"]:
        sel = [r for r in result["rows"]
               if all(r[k] == v for k, v in case.items())]
        n, c, s = case["batch"], case["channels"], case["image_size"]
        parts.append(f"### Conv2d({c}->{c}, 3x3, pad 1), input {n}x{c}x{s}x{s}\n\n"
                     + markdown_table(sel, LAYER_COLUMNS[3:]))
    return "\n\n".join(parts)


def plot_layers(rows: Sequence[dict[str, Any]], path: str | Path, *, batch: int,
                channels: int) -> Path:
    """Weight-gradient time, step time and saved bytes vs image size, one line per ``r``.

    One row of panels per (mode, per_sample) variant; exact is the black dashed line.
    Only rows with the given ``batch`` and ``channels`` are drawn.
    """
    plt = pyplot()
    rows = [r for r in rows if r["batch"] == batch and r["channels"] == channels]
    variants = sorted({(r["mode"], r["per_sample"]) for r in rows if r["r"] is not None})
    metrics = (("wgrad_s", "weight gradient [ms]", 1e3), ("step_s", "forward+backward [ms]", 1e3),
               ("saved_bytes", "saved for backward [MiB]", 2.0**-20))
    fig, axes = plt.subplots(len(variants), 3, figsize=(13, 3.2 * len(variants)), squeeze=False)
    def line(name: str) -> list[dict[str, Any]]:
        return sorted((r for r in rows if r["candidate"] == name), key=lambda r: r["image_size"])

    exact, bound = line(REFERENCE), line(NO_WGRAD)
    rs = sorted({r["r"] for r in rows if r["r"] is not None})
    sizes = sorted({r["image_size"] for r in rows})
    for (mode, ps), axrow in zip(variants, axes, strict=True):
        for ax, (key, label, scale) in zip(axrow, metrics, strict=True):
            ax.plot([r["image_size"] for r in exact], [r[key] * scale for r in exact],
                    "k--o", label="exact")
            if key == "step_s" and bound:
                ax.plot([r["image_size"] for r in bound], [r[key] * scale for r in bound],
                        ":", color="gray", label="no weight grad (bound)")
            for rr in rs:
                sel = [r for r in rows if (r["mode"], r["per_sample"], r["r"]) == (mode, ps, rr)
                       and r.get(key) is not None]
                pts = sorted(sel, key=lambda r: r["image_size"])
                ax.plot([r["image_size"] for r in pts], [r[key] * scale for r in pts], "-o",
                        label=f"r={rr}")
            ax.set(yscale="log", xlabel="image size", ylabel=label,
                   title=f"{mode}, {'per-sample' if ps else 'shared'} probes")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, labels=[str(s) for s in sizes])
            ax.minorticks_off()
    axes[0][1].legend(fontsize=8)
    fig.suptitle(f"Conv2d({channels}->{channels}, 3x3), batch {batch}")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def main() -> None:
    """Run the layer benchmark as the flags say; print its tables, write JSON and PNG."""
    args = arguments(__doc__, grid=True)
    result = run_layers(args.grid, rs=ints(args.r), repeats=args.repeats, warmup=args.warmup,
                        budget_s=args.budget, clock=args.clock, progress=progress)
    print(layers_markdown(result))
    name = f"layers_{args.grid}{args.suffix}"
    out = write_result(args.out / f"{name}.json", **result)
    first = result["config"]["cases"][0]  # the image-size sweep shares batch and channels
    png = plot_layers(result["rows"], args.out / f"bench_{name}.png", batch=first["batch"],
                      channels=first["channels"])
    progress(f"\nwrote {out} and {png}")


if __name__ == "__main__":
    main()
