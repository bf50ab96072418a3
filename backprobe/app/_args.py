"""Argument types and flag groups shared by the subcommands of :mod:`backprobe.app.cli`."""

from __future__ import annotations

import argparse
from typing import Any

from backprobe.app.models import MODELS
from backprobe.app.spec import grammar, parse_estimator, parse_list

__all__ = ["add_common", "add_training", "estimator_spec", "estimator_specs", "ints",
           "spec_epilog"]


def estimator_spec(text: str) -> str:
    """Argparse type: one estimator spec such as ``probe:16:gaussian``, checked, kept as text."""
    try:
        parse_estimator(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def estimator_specs(text: str) -> list[str]:
    """Argparse type: a comma-separated list of estimator specs."""
    try:
        return parse_list(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def ints(text: str) -> list[int]:
    """Argparse type: comma-separated integers, at least one."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def spec_epilog() -> dict[str, Any]:
    """Keyword arguments of ``add_parser`` that print the estimator grammar under the help."""
    return {"epilog": "estimator specs:\n" + grammar(),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    """Add ``--model``, the data flags (when ``data``), ``--threads`` and ``--no-progress``."""
    p.add_argument("--model", default="mnist_cnn", metavar="NAME",
                   help=f"model: {', '.join(MODELS)} (default mnist_cnn)")
    if data:
        p.add_argument("--data", default="digits", help="digits | mnist | fashion-mnist | cifar10")
        p.add_argument("--data-dir", default=None, help="directory of the data files")
        p.add_argument("--image-size", type=int, default=None,
                       help="resize images (default: 28 for digits, native otherwise)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (without a terminal: one line per loop, no redraws)")


def add_training(p: argparse.ArgumentParser) -> None:
    """Add the optimisation flags shared by ``train`` and ``compare``."""
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 2e-3 for adam, 0.01 for sgd with momentum 0.9)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--skip-first", action="store_true",
                   help="keep the first conv/linear layer exact (convert(skip_first=True))")
