"""Exact vs probed Conv2d(C, C, 3x3, pad 1): weight-gradient time, step time, saved bytes.

    python benchmarks/bench_layers.py            # --quick: a few minutes on a laptop CPU
    python benchmarks/bench_layers.py --full     # image size 32..256, channels 4..64, batch 8..64
    python benchmarks/bench_layers.py --threads 1 --clock cpu   # steadier on a busy machine

Prints markdown tables, writes benchmarks/results/layers_<grid>.json and
docs/img/bench_layers_<grid>.png. Speed-ups are medians of per-round ratios against exact,
measured interleaved in the same run (> 1: faster than exact).
"""

import sys

import backprobe.bench as bench

args = bench.script_arguments(__doc__)
result = bench.run_layers(
    args.grid, rs=[int(r) for r in args.r.split(",")] if args.r else None,
    repeats=args.repeats, warmup=args.warmup, budget_s=args.budget, clock=args.clock,
    progress=lambda msg: print(msg, file=sys.stderr, flush=True),
)
print(bench.layers_markdown(result))

name = f"layers_{args.grid}{args.suffix}"
out = bench.write_json(f"benchmarks/results/{name}.json", **result)
first = result["config"]["cases"][0]  # the image-size sweep shares batch and channels
png = bench.plot_layers(result["rows"], f"docs/img/bench_{name}.png",
                        batch=first["batch"], channels=first["channels"])
print(f"\nwrote {out} and {png}", file=sys.stderr)
