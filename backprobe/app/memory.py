"""``backprobe memory``: per-layer saved activation bytes, exact vs an estimator (or ``--vr``)."""

from __future__ import annotations

import argparse

from backprobe.app._args import add_common, estimator_spec, ints, spec_epilog


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``memory`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "memory", help="per-layer saved activation bytes, exact vs an estimator", **spec_epilog())
    add_common(p, data=False)
    p.add_argument("--input-shape", type=ints, default=[32, 1, 28, 28], help="N,C,H,W")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--estimator", type=estimator_spec, default="probe:16")
    p.add_argument("--json", default=None, help="also write the table as JSON")
    p.add_argument("--vr", action="store_true",
                   help="instead: SAGA per-example gradient-table memory, ours vs El Hanchi's "
                   "table (--model lenet5|vgg16|resnet34|all, default all)")
    p.add_argument("--examples", type=int, default=None,
                   help="training-set size for --vr (default: the paper's, 1000000)")
    p.set_defaults(model=None, func=run)


def run(args: argparse.Namespace) -> int:
    """Print the memory table asked for (and write its JSON)."""
    if args.vr:
        from backprobe.optim.vr_memory import PAPER_TABLE, format_vr_table

        all_ = args.model is None or args.model.lower() == "all"
        print(format_vr_table(list(PAPER_TABLE) if all_ else [args.model], args.examples))
        return 0
    from backprobe.train import memory_report, write_json

    rep = memory_report(args.model or "mnist_cnn", args.input_shape, args.num_classes,
                        args.estimator)
    print(rep)
    if args.json:
        print(f"wrote {write_json(args.json, rep.to_json())}")
    return 0
