"""Exact vs convert(model, Probe(r), example_input=x): saved activation bytes and SGD step time.

    python benchmarks/bench_networks.py          # --quick: Probe(16), 3 rounds
    python benchmarks/bench_networks.py --full   # r = 4, 16, 64, 10 rounds
    python benchmarks/bench_networks.py --threads 1 --clock cpu   # steadier on a busy machine

Networks: 4x Conv(16->16) stack (input 32x16x64x64, XConv's memory example), MNIST CNN
(128x1x28x28), 3C3D (64x3x32x32), VGG-11 without BN (32x3x32x32), ResNet-18 CIFAR (32x3x32x32).
Also prints where VGG's and ResNet-18's saved bytes sit, by module type. Writes
benchmarks/results/networks_<grid>.json and docs/img/bench_networks_<grid>.png.
"""

import sys

import backprobe.bench as bench

args = bench.script_arguments(__doc__, networks=True)
result = bench.run_networks(
    args.grid, networks=args.networks.split(",") if args.networks else None,
    rs=[int(r) for r in args.r.split(",")] if args.r else None, repeats=args.repeats,
    warmup=args.warmup, budget_s=args.budget, clock=args.clock,
    progress=lambda msg: print(msg, file=sys.stderr, flush=True),
)
print(bench.networks_markdown(result))

name = f"networks_{args.grid}{args.suffix}"
out = bench.write_json(f"benchmarks/results/{name}.json", **result)
png = bench.plot_networks(result["rows"], f"docs/img/bench_{name}.png")
print(f"\nwrote {out} and {png}", file=sys.stderr)
