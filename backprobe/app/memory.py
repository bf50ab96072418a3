"""``backprobe memory``: saved activation bytes per layer, exact vs an estimator.

With ``--vr``, the per-example gradient tables of SAGA instead, next to El Hanchi's table
(:mod:`backprobe.app.vr_table`, computed by :mod:`backprobe.optim.vr_memory`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from backprobe.app import _checks as checks
from backprobe.app import models
from backprobe.app._args import add_common, estimator_spec, ints, spec_epilog
from backprobe.app.report import format_bytes, table, write_json
from backprobe.app.training import prepare_model
from backprobe.memory import saved_activation_bytes

__all__ = ["MemoryReport", "add_parser", "memory_report", "run"]


@dataclass
class MemoryReport:
    """Per-layer saved activation bytes of one training step, exact vs an estimator."""

    model: str
    input_shape: tuple[int, ...]
    estimator: str
    rows: list[tuple[str, str, int, int]]  # (layer, type, exact bytes, estimator bytes)

    @property
    def exact_total(self) -> int:
        """Total bytes kept by plain autograd."""
        return sum(r[2] for r in self.rows)

    @property
    def estimator_total(self) -> int:
        """Total bytes kept with the estimator (and compact activations)."""
        return sum(r[3] for r in self.rows)

    @property
    def ratio(self) -> float:
        """``exact_total / estimator_total``."""
        return self.exact_total / max(self.estimator_total, 1)

    def __str__(self) -> str:
        def ratio(a: int, b: int) -> str:
            return "-" if a == 0 or b == 0 else f"{a / b:.1f}x"

        def exact_cell(a: int, b: int) -> str:
            # plain autograd keeps this layer's input once, for the layer before (same storage)
            return "shared*" if a == 0 and b > 0 else format_bytes(a)

        rows = [["layer", "type", "exact", self.estimator, "ratio"]]
        rows += [[n or "(loss, functional)", t, exact_cell(a, b), format_bytes(b), ratio(a, b)]
                 for n, t, a, b in self.rows]
        rows.append(["total", "", format_bytes(self.exact_total),
                     format_bytes(self.estimator_total),
                     ratio(self.exact_total, self.estimator_total)])
        title = (f"saved activations of one training step: {self.model}, input "
                 f"{'x'.join(map(str, self.input_shape))}, exact vs {self.estimator}")
        text = title + "\n" + table(rows, [False, False, True, True, True])
        if any(a == 0 and b > 0 for _, _, a, b in self.rows):
            text += ("\n* plain autograd keeps nothing of its own here: this layer's input is "
                     "the tensor the layer before already keeps (one storage, counted there); "
                     f"with {self.estimator} the layer before keeps less (e.g. a 1-bit ReLU "
                     "mask), so this layer keeps its input itself")
        return text

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model": self.model, "input_shape": list(self.input_shape), "estimator": self.estimator,
            "layers": [{"layer": n, "type": t, "exact_bytes": a, "estimator_bytes": b}
                       for n, t, a, b in self.rows],
            "exact_total": self.exact_total, "estimator_total": self.estimator_total,
            "ratio": self.ratio,
        }


def memory_report(model: str, input_shape: Sequence[int], num_classes: int, estimator: str,
                  *, seed: int = 0) -> MemoryReport:
    """Measure saved activation bytes per leaf module for a random batch of ``input_shape``.

    Args:
        model: a :data:`backprobe.models.MODELS` name.
        input_shape: ``(N, C, H, W)``.
        num_classes: logits of the model.
        estimator: spec string.
        seed: seeds the model, input and labels.

    Returns:
        A :class:`MemoryReport` (``print`` it for the table).
    """
    shape = checks.shape("--input-shape", input_shape)
    if len(shape) < 3:
        raise ValueError(f"input shape must be (N, C, *spatial), got {shape}")
    torch.manual_seed(seed)
    x = torch.randn(shape)
    y = torch.randint(0, num_classes, (shape[0],))
    size = shape[2:] if len(shape) > 3 else shape[2]
    plain = models.build(model, shape[1], num_classes, size)  # type: ignore[arg-type]
    conv = models.build(model, shape[1], num_classes, size)  # type: ignore[arg-type]
    conv, _ = prepare_model(conv, estimator, x)
    loss = nn.CrossEntropyLoss()
    exact = saved_activation_bytes(plain, x, y, loss, per_layer=True)
    est = saved_activation_bytes(conv, x, y, loss, per_layer=True)
    assert isinstance(exact, dict) and isinstance(est, dict)
    types = {n: type(m).__name__ for n, m in plain.named_modules() if n}
    names = [n for n, m in plain.named_modules() if n in exact or n in est]
    names += [n for n in sorted(set(exact) | set(est)) if n not in names]
    rows = [(n, types.get(n, ""), exact.get(n, 0), est.get(n, 0)) for n in names]
    return MemoryReport(model, shape, estimator, rows)


# ---------------------------------------------------------------------------------------------
# Variance study (XConv validation figures)
# ---------------------------------------------------------------------------------------------


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
        checks.positive("--examples", args.examples)
        from backprobe.app.vr_table import PAPER_TABLE, format_vr_table

        all_ = args.model is None or args.model.lower() == "all"
        print(format_vr_table(list(PAPER_TABLE) if all_ else [args.model], args.examples))
        return 0
    checks.output_file("--json", args.json)
    checks.positive("--num-classes", args.num_classes, allow_none=False)
    checks.positive("--examples", args.examples)
    rep = memory_report(args.model or "mnist_cnn", args.input_shape, args.num_classes,
                        args.estimator)
    print(rep)
    if args.json:
        print(f"wrote {write_json(args.json, rep.to_json())}")
    return 0
