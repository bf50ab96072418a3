"""``backprobe train``: train one model with one estimator (optionally under DDP)."""

from __future__ import annotations

import argparse

from backprobe.app._args import add_common, add_training, estimator_spec, spec_epilog


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("train", help="train one model with one estimator",
                              **spec_epilog())
    add_common(p)
    add_training(p)
    p.add_argument("--estimator", type=estimator_spec, default="exact",
                   help="estimator spec (see below)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--save", default=None, help="save the trained model's state_dict here")
    p.add_argument("--ddp", action="store_true",
                   help="DistributedDataParallel (launch with torchrun; gloo on CPU, nccl on GPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say, print the summary, write the JSON and weights asked for."""
    import torch.distributed as dist

    from backprobe.train import TrainConfig, echo, epoch_line, save_model, train, write_json

    config = TrainConfig(
        model=args.model, data=args.data, estimator=args.estimator, batch_size=args.batch_size,
        epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, seed=args.seed,
        data_dir=args.data_dir, image_size=args.image_size, device=args.device,
        max_steps=args.max_steps, skip_first=args.skip_first,
    )
    result = train(config, ddp=args.ddp, progress=not args.no_progress,
                   on_epoch=lambda e, r: echo(epoch_line(e, r)))
    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    print(result.summary())
    if args.json:
        print(f"wrote {write_json(args.json, result.to_json())}")
    if args.save:
        print(f"wrote {save_model(result, args.save)}")
    return 0
