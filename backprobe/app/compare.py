"""``backprobe compare``: a grid of estimators x batch sizes x seeds, as a table and a figure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backprobe.app._args import add_common, add_training, estimator_specs, ints, spec_epilog


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "compare", help="grid of estimators x batch sizes x seeds: table + PNG", **spec_epilog())
    add_common(p)
    add_training(p)
    p.add_argument("--estimators", type=estimator_specs,
                   default=["exact", "probe:4", "probe:16", "probe:64"],
                   help="comma-separated specs (default exact,probe:4,probe:16,probe:64)")
    p.add_argument("--batch-sizes", type=ints, default=[32, 128], help="default 32,128")
    p.add_argument("--seeds", type=ints, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--out", default="results/compare", help="directory for compare.{json,png}")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="train nothing: merge compare.json files of grids run separately "
                   "(e.g. one process per seed), print the table, write JSON and PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run (or merge) the grid, print its table, write ``compare.json`` and ``compare.png``."""
    from backprobe.train import CompareResult, compare, echo, run_line, write_json

    if args.merge:
        result = CompareResult.from_json([json.loads(Path(f).read_text()) for f in args.merge])
    else:
        result = compare(
            args.model, args.data, args.estimators, args.batch_sizes, args.seeds,
            epochs=args.epochs, optimizer=args.optimizer, lr=args.lr, data_dir=args.data_dir,
            image_size=args.image_size, device=args.device, skip_first=args.skip_first,
            progress=not args.no_progress, on_run=lambda r: echo(run_line(r)),
        )
    print()
    print(result.table())
    out = Path(args.out)
    print(f"wrote {write_json(out / 'compare.json', result.to_json())}")
    print(f"wrote {result.plot(out / 'compare.png')}")
    return 0
