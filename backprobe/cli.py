"""The ``backprobe`` command line: argument parsing over :mod:`backprobe.train` and ``bench``.

Subcommands::

    backprobe train    --model mnist_cnn --data digits --estimator probe:16 --epochs 10
    backprobe compare  --estimators exact,probe:4,probe:16,probe:64 --batch-sizes 32,128
    backprobe memory   --model c3d --input-shape 32,3,32,32 --estimator probe:16
    backprobe variance --model mnist_cnn --data digits --probes 4,8,16,32
    backprobe bench    layers|networks ...
    torchrun --nproc_per_node 2 -m backprobe train ... --ddp

Every subcommand only parses its flags, calls one library function and prints what it returns.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from backprobe.spec import grammar, parse_estimator, parse_list

__all__ = ["build_parser", "main"]


def _spec(text: str) -> str:
    try:
        parse_estimator(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _specs(text: str) -> list[str]:
    try:
        return parse_list(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def _common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    p.add_argument("--model", default="mnist_cnn", help="model name (backprobe.models.MODELS)")
    if data:
        p.add_argument("--data", default="digits", help="digits | mnist | fashion-mnist | cifar10")
        p.add_argument("--data-dir", default=None, help="directory of the data files")
        p.add_argument("--image-size", type=int, default=None,
                       help="resize images (default: 28 for digits, native otherwise)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 2e-3 for adam, 0.01 for sgd with momentum 0.9)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--skip-first", action="store_true",
                   help="keep the first conv/linear layer exact (convert(skip_first=True))")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``backprobe`` (one subparser per subcommand)."""
    parser = argparse.ArgumentParser(
        prog="backprobe", description="Low-memory backprop with probed weight gradients.",
        epilog="estimator specs:\n" + grammar(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="train one model with one estimator",
                       epilog="estimator specs:\n" + grammar(), formatter_class=fmt)
    _common(p)
    _training(p)
    p.add_argument("--estimator", type=_spec, default="exact", help="estimator spec (see below)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--save", default=None, help="save the trained model's state_dict here")
    p.add_argument("--ddp", action="store_true",
                   help="DistributedDataParallel (launch with torchrun; gloo on CPU, nccl on GPU)")

    p = sub.add_parser("compare", help="grid of estimators x batch sizes x seeds: table + PNG",
                       epilog="estimator specs:\n" + grammar(), formatter_class=fmt)
    _common(p)
    _training(p)
    p.add_argument("--estimators", type=_specs,
                   default=["exact", "probe:4", "probe:16", "probe:64"],
                   help="comma-separated specs (default exact,probe:4,probe:16,probe:64)")
    p.add_argument("--batch-sizes", type=_ints, default=[32, 128], help="default 32,128")
    p.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--out", default="results/compare", help="directory for compare.{json,png}")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="train nothing: merge compare.json files of grids run separately "
                   "(e.g. one process per seed), print the table, write JSON and PNG")

    p = sub.add_parser("memory", help="per-layer saved activation bytes, exact vs an estimator",
                       epilog="estimator specs:\n" + grammar(), formatter_class=fmt)
    _common(p, data=False)
    p.add_argument("--input-shape", type=_ints, default=[32, 1, 28, 28], help="N,C,H,W")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--estimator", type=_spec, default="probe:16")
    p.add_argument("--json", default=None, help="also write the table as JSON")
    p.add_argument("--vr", action="store_true",
                   help="instead: SAGA per-example gradient-table memory, ours vs El Hanchi's "
                   "table (--model lenet5|vgg16|resnet34|all, default all)")
    p.add_argument("--examples", type=int, default=None,
                   help="training-set size for --vr (default: the paper's, 1000000)")
    p.set_defaults(model=None)

    p = sub.add_parser("variance", help="XConv validation figures: estimate histograms, "
                       "gradient std across minibatches")
    _common(p)
    p.add_argument("--probes", type=_ints, default=[4, 8, 16, 32], help="default 4,8,16,32")
    p.add_argument("--probe-options", default="",
                   help="spec options appended to probe:R, e.g. gaussian:joint")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--draws", type=int, default=200, help="probe draws per histogram")
    p.add_argument("--minibatches", type=int, default=40)
    p.add_argument("--hist-layers", type=int, default=2, help="conv layers with histograms")
    p.add_argument("--weights-per-layer", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/variance", help="directory for the PNGs and JSON")

    p = sub.add_parser("bench", help="layer and network benchmarks (backprobe.bench)")
    p.add_argument("what", choices=("layers", "networks"), help="which benchmark")
    p.add_argument("--full", action="store_true", help="the full grid instead of the quick one")
    p.add_argument("--r", type=_ints, default=None, help="probe counts (default: per grid)")
    p.add_argument("--networks", default=None,
                   help="comma-separated substrings of network names to run (networks only)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: per grid)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed rounds per timing before stopping early")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or process CPU time (steadier on a shared machine)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default="results/bench", help="directory for the JSON and PNG")
    return parser


def _train(args: argparse.Namespace) -> int:
    from backprobe.train import TrainConfig, echo, epoch_line, save_model, train, write_json

    config = TrainConfig(
        model=args.model, data=args.data, estimator=args.estimator, batch_size=args.batch_size,
        epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, seed=args.seed,
        data_dir=args.data_dir, image_size=args.image_size, device=args.device,
        max_steps=args.max_steps, skip_first=args.skip_first,
    )
    result = train(config, ddp=args.ddp, progress=not args.no_progress,
                   on_epoch=lambda e, r: echo(epoch_line(e, r)))
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    print(result.summary())
    if args.json:
        print(f"wrote {write_json(args.json, result.to_json())}")
    if args.save:
        print(f"wrote {save_model(result, args.save)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
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


def _memory(args: argparse.Namespace) -> int:
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


def _variance(args: argparse.Namespace) -> int:
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


def _bench(args: argparse.Namespace) -> int:
    import backprobe.bench as bench  # imported lazily: it pulls in the benchmark helpers

    grid = "full" if args.full else "quick"
    common = dict(rs=args.r, repeats=args.repeats, warmup=args.warmup, budget_s=args.budget,
                  clock=args.clock, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(bench.machine_info(), file=sys.stderr)
    out = Path(args.out) / f"{args.what}_{grid}"
    if args.what == "layers":
        result = bench.run_layers(grid, **common)
        print(bench.layers_markdown(result))
        first = result["config"]["cases"][0]
        png = bench.plot_layers(result["rows"], out.with_suffix(".png"), batch=first["batch"],
                                channels=first["channels"])
    else:
        nets = args.networks.split(",") if args.networks else None
        result = bench.run_networks(grid, networks=nets, **common)
        print(bench.networks_markdown(result))
        png = bench.plot_networks(result["rows"], out.with_suffix(".png"))
    print(f"wrote {bench.write_json(out.with_suffix('.json'), **result)}")
    print(f"wrote {png}")
    return 0


_COMMANDS = {"train": _train, "compare": _compare, "memory": _memory, "variance": _variance,
             "bench": _bench}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``backprobe`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = getattr(args, "threads", None)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"backprobe {args.command}: error: {err}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
