"""``backprobe variance``: XConv's validation figures (estimate histograms, gradient std)."""

from __future__ import annotations

import argparse

from backprobe.app._args import add_common, ints


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``variance`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("variance", help="XConv validation figures: estimate histograms, "
                              "gradient std across minibatches")
    add_common(p)
    p.add_argument("--probes", type=ints, default=[4, 8, 16, 32], help="default 4,8,16,32")
    p.add_argument("--probe-options", default="",
                   help="spec options appended to probe:R, e.g. gaussian:joint")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--draws", type=int, default=200, help="probe draws per histogram")
    p.add_argument("--minibatches", type=int, default=40)
    p.add_argument("--hist-layers", type=int, default=2, help="conv layers with histograms")
    p.add_argument("--weights-per-layer", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/variance", help="directory for the PNGs and JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the study, print its table and the files written."""
    from backprobe.train import variance_study

    result = variance_study(
        args.model, args.data, args.probes, out=args.out, probe_options=args.probe_options,
        batch_size=args.batch_size, draws=args.draws, minibatches=args.minibatches,
        hist_layers=args.hist_layers, weights_per_layer=args.weights_per_layer, seed=args.seed,
        data_dir=args.data_dir, image_size=args.image_size, progress=not args.no_progress,
    )
    print(result.table())
    for f in result.files:
        print(f"wrote {f}")
    return 0
