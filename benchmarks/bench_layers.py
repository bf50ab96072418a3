"""Exact vs probed Conv2d(C, C, 3x3, pad 1): weight-gradient time, step time, saved bytes.

    python benchmarks/bench_layers.py            # --quick: a few minutes on a laptop CPU
    python benchmarks/bench_layers.py --full     # image size 32..256, channels 4..64, batch 8..64
    python benchmarks/bench_layers.py --threads 1 --clock cpu   # steadier on a busy machine

Prints markdown tables, writes benchmarks/results/layers_<grid>.json and
docs/img/bench_layers_<grid>.png. Speed-ups are medians of per-round ratios against exact,
measured interleaved in the same run (> 1: faster than exact).
"""

import argparse
import sys

import torch

import backprobe.bench as bench

p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
size = p.add_mutually_exclusive_group()
size.add_argument("--quick", dest="grid", action="store_const", const="quick", default="quick")
size.add_argument("--full", dest="grid", action="store_const", const="full")
p.add_argument("--r", default=None, help="comma-separated probe counts (default: per grid)")
p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: per grid)")
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--budget", type=float, default=None, help="seconds per timing, then stop early")
p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
               help="wall time, or process CPU time (steadier when shared; use --threads 1)")
p.add_argument("--suffix", default="", help="appended to the output file names")
args = p.parse_args()

if args.threads:
    torch.set_num_threads(args.threads)
print(bench.machine_info(), file=sys.stderr)
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
