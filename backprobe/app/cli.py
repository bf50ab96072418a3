"""The ``backprobe`` command line.

Subcommands::

    backprobe train    --model mnist_cnn --data digits --estimator probe:16 --epochs 10
    backprobe compare  --estimators exact,probe:4,probe:16,probe:64 --batch-sizes 32,128
    backprobe memory   --model c3d --input-shape 32,3,32,32 --estimator probe:16
    backprobe variance --model mnist_cnn --data digits --probes 4,8,16,32
    backprobe bench    layers|networks ...
    torchrun --nproc_per_node 2 -m backprobe train ... --ddp

Each subcommand is one module of :data:`COMMANDS` exposing ``add_parser(subparsers)`` (which
adds its subparser and ``set_defaults(func=run)``) and ``run(args) -> int`` (the exit status).
Adding a command is one import and one entry in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from backprobe import __version__
from backprobe.app import bench, compare, fwi, memory, spectrum, training, variance
from backprobe.app._checks import missing_cli_extra, positive
from backprobe.app.spec import grammar

__all__ = ["COMMANDS", "build_parser", "main"]

#: The command modules, in the order ``backprobe --help`` lists them.
COMMANDS: tuple[ModuleType, ...] = (training, compare, memory, variance, bench, fwi, spectrum)


def build_parser(commands: Sequence[ModuleType] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser of ``backprobe``: one subparser per module of ``commands``.

    Args:
        commands: modules exposing ``add_parser(subparsers)``.

    Returns:
        The parser; ``parse_args`` leaves the command's ``run`` in ``args.func``.
    """
    parser = argparse.ArgumentParser(
        prog="backprobe", description="Low-memory backprop with probed weight gradients.",
        epilog="estimator specs:\n" + grammar(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"backprobe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``backprobe`` with ``argv`` (default ``sys.argv[1:]``).

    Args:
        argv: the arguments after the program name.

    Returns:
        The exit status: the command's, or 2 with one line ``backprobe CMD: error: ...`` on
        standard error for a usage error (``ValueError``, ``FileNotFoundError``: bad values,
        paths, devices, ``--ddp`` outside ``torchrun``) or a missing ``cli`` extra; 130 after
        Ctrl-C (the command saves what is complete first).
    """
    parser = build_parser()
    args = parser.parse_args(argv)

    def fail(message: str) -> NoReturn:
        parser.exit(2, f"backprobe {args.command}: error: {message}\n")

    missing = missing_cli_extra()
    if missing:
        fail(f"{' and '.join(missing)} not installed: the backprobe command needs the cli "
             "extra (pip install 'backprobe[cli]')")
    try:
        threads = getattr(args, "threads", None)
        positive("--threads", threads)
        if threads:
            import torch

            torch.set_num_threads(threads)
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as err:
        fail(str(err).splitlines()[0] if isinstance(err, FileNotFoundError) else str(err))
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] not in ("tqdm", "matplotlib", "sklearn"):
            raise
        fail(f"{err.name} not installed: pip install 'backprobe[cli]'")
    except KeyboardInterrupt:
        print(f"backprobe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
