"""``backprobe memory``: saved activation bytes per layer, exact vs an estimator.

Next to them, the true peak of one training step (SGD with momentum, measured by
:func:`backprobe.peak_memory`) and, with ``--budget``, the largest batch that fits, fitted
linearly in the batch from the peaks at two batch sizes (:func:`backprobe.peak.largest_batch`).

With ``--vr``, the per-example gradient tables of SAGA instead, next to El Hanchi's table
(:mod:`backprobe.app.vr_table`, computed by :mod:`backprobe.optim.vr_memory`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from backprobe.app import _checks as checks
from backprobe.app import models
from backprobe.app._args import add_common, estimator_spec, ints, spec_epilog
from backprobe.app.report import format_bytes, table, write_json
from backprobe.app.training import prepare_model
from backprobe.memory import saved_activation_bytes
from backprobe.peak import largest_batch, peak_memory

__all__ = ["MemoryReport", "StepPeak", "add_parser", "memory_report", "run"]


@dataclass
class StepPeak:
    """Peak memory of one SGD-with-momentum training step of one variant (bytes).

    Attributes:
        peak: the most bytes allocated at once during the step above its start
            (:func:`backprobe.peak_memory`).
        fixed: bytes held before the step: weights + optimizer state + the input batch.
        peak_2x: the same peak at twice the batch (``None`` unless a budget was fitted).
        fixed_2x: the fixed bytes at twice the batch (``None`` unless a budget was fitted).
        max_batch: the largest batch whose ``fixed + peak`` fits the budget, extrapolated
            linearly from the two batch sizes (``None`` without a budget; ``-1`` when the
            total does not grow with the batch).
    """

    peak: int
    fixed: int
    peak_2x: int | None = None
    fixed_2x: int | None = None
    max_batch: int | None = None

    @property
    def total(self) -> int:
        """``fixed + peak``: what the step needs in all."""
        return self.fixed + self.peak


@dataclass
class MemoryReport:
    """Per-layer saved activation bytes of one training step, exact vs an estimator."""

    model: str
    input_shape: tuple[int, ...]
    estimator: str
    rows: list[tuple[str, str, int, int]]  # (layer, type, exact bytes, estimator bytes)
    peaks: dict[str, StepPeak] = field(default_factory=dict)  # "exact" / the estimator
    budget: int | None = None

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
        if self.peaks:
            text += "\n\n" + self._peak_text()
        return text

    def _peak_text(self) -> str:
        head = ["", "saved", "peak of a step", "weights+state+batch", "total"]
        if self.budget is not None:
            head.append(f"largest batch in {format_bytes(self.budget)}")
        saved = {"exact": self.exact_total, self.estimator: self.estimator_total}
        rows = [head]
        for name, p in self.peaks.items():
            row = [name, format_bytes(saved[name]), format_bytes(p.peak), format_bytes(p.fixed),
                   format_bytes(p.total)]
            if self.budget is not None:
                row.append("does not grow" if p.max_batch == -1 else str(p.max_batch))
            rows.append(row)
        n = self.input_shape[0]
        text = (f"one SGD-momentum training step at batch {n}, saved bytes vs peak "
                "(peak: most tensor bytes allocated at once above the step's start)\n"
                + table(rows, [False] + [True] * (len(head) - 1)))
        if self.budget is not None:
            text += (f"\nlargest batch: a linear extrapolation of weights + optimizer state + "
                     f"batch + peak, measured at batch {n} and {2 * n}")
        return text

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model": self.model, "input_shape": list(self.input_shape), "estimator": self.estimator,
            "layers": [{"layer": n, "type": t, "exact_bytes": a, "estimator_bytes": b}
                       for n, t, a, b in self.rows],
            "exact_total": self.exact_total, "estimator_total": self.estimator_total,
            "ratio": self.ratio,
            "peaks": {k: {"peak_bytes": p.peak, "fixed_bytes": p.fixed,
                          "peak_2x_bytes": p.peak_2x, "fixed_2x_bytes": p.fixed_2x,
                          "max_batch_in_budget": p.max_batch}
                      for k, p in self.peaks.items()},
            "budget_bytes": self.budget,
            "max_batch_method": "linear extrapolation from two batch sizes",
        }


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor inside ``obj`` (nested dicts, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _labels(net: nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Random class labels for ``net``'s logits: ``[N]``, or ``[N, *spatial]`` per pixel."""
    with torch.no_grad():
        out_shape = net(x[:1]).shape
    return torch.randint(0, num_classes, (x.shape[0], *out_shape[2:]))


def _step_peak(model: str, shape: tuple[int, ...], num_classes: int, estimator: str | None,
               seed: int) -> tuple[int, int]:
    """``(peak, weights + optimizer state + batch)`` of one SGD-momentum step, in bytes."""
    with torch.random.fork_rng(devices=[]):  # seeded, without moving the caller's RNG
        torch.manual_seed(seed)
        x = torch.randn(shape)
        size = shape[2:] if len(shape) > 3 else shape[2]
        net = models.build(model, shape[1], num_classes, size)  # type: ignore[arg-type]
        y = _labels(net, x, num_classes)
        if estimator is not None:
            net, _ = prepare_model(net, estimator, x)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        # peak_memory's warm-up step creates the momentum buffers before the measured step
        res = peak_memory(net, x, y, nn.CrossEntropyLoss(), optimizer=opt)
    fixed = (sum(p.numel() * p.element_size() for p in net.parameters())
             + _tensor_bytes(list(opt.state.values())) + _tensor_bytes(x) + _tensor_bytes(y))
    return res.peak, fixed


def _peaks(model: str, shape: tuple[int, ...], num_classes: int, estimator: str,
           budget: int | None, seed: int) -> dict[str, StepPeak]:
    out = {}
    for name, spec in (("exact", None), (estimator, estimator)):
        peak, fixed = _step_peak(model, shape, num_classes, spec, seed)
        p = StepPeak(peak, fixed)
        if budget is not None:
            n = shape[0]
            p.peak_2x, p.fixed_2x = _step_peak(model, (2 * n, *shape[1:]), num_classes, spec,
                                               seed)
            p.max_batch = largest_batch((n, p.total), (2 * n, p.fixed_2x + p.peak_2x), budget)
        out[name] = p
    return out


def memory_report(model: str, input_shape: Sequence[int], num_classes: int, estimator: str,
                  *, seed: int = 0, peak: bool = False,
                  budget: int | None = None) -> MemoryReport:
    """Measure saved activation bytes per leaf module for a random batch of ``input_shape``.

    With ``peak`` (implied by ``budget``), also the peak of one SGD-with-momentum training
    step (:func:`backprobe.peak_memory`, after one warm-up step) for plain autograd and for the
    estimator; with ``budget``, the peaks at batch ``N`` and ``2N`` give the largest batch
    whose weights + optimizer state + batch + peak fit, by linear extrapolation
    (:func:`backprobe.peak.largest_batch`).

    Args:
        model: a :data:`backprobe.models.MODELS` name.
        input_shape: ``(N, C, H, W)``.
        num_classes: logits of the model.
        estimator: spec string.
        seed: seeds the model, input and labels.
        peak: also measure the peak of a training step.
        budget: bytes available for the largest-batch fit (``None``: no fit).

    Returns:
        A :class:`MemoryReport` (``print`` it for the table).

    Raises:
        ValueError: a bad shape, or a ``budget`` below 1 byte.
    """
    shape = checks.shape("--input-shape", input_shape)
    if len(shape) < 3:
        raise ValueError(f"input shape must be (N, C, *spatial), got {shape}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget < 1):
        raise ValueError(f"budget must be a positive number of bytes, got {budget!r}")
    torch.manual_seed(seed)
    x = torch.randn(shape)
    size = shape[2:] if len(shape) > 3 else shape[2]
    plain = models.build(model, shape[1], num_classes, size)  # type: ignore[arg-type]
    y = _labels(plain, x, num_classes)
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
    peaks = (_peaks(model, shape, num_classes, estimator, budget, seed)
             if peak or budget is not None else {})
    return MemoryReport(model, shape, estimator, rows, peaks, budget)


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
    p.add_argument("--budget", default=None, metavar="SIZE",
                   help="memory budget, e.g. 2GiB, 512MiB, 1.5GB: also report the largest "
                   "batch whose weights + optimizer state + batch + peak fit (a linear "
                   "extrapolation from the peaks at batch N and 2N)")
    p.add_argument("--no-peak", action="store_true",
                   help="saved bytes only (skip measuring the peak of a training step)")
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
    budget = None if args.budget is None else checks.size_bytes("--budget", args.budget)
    if budget is not None and args.no_peak:
        raise ValueError("--budget needs the peak; drop --no-peak")
    rep = memory_report(args.model or "mnist_cnn", args.input_shape, args.num_classes,
                        args.estimator, peak=not args.no_peak, budget=budget)
    print(rep)
    if args.json:
        print(f"wrote {write_json(args.json, rep.to_json())}")
    return 0
