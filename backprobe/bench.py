"""Benchmarks: exact vs probed weight gradients, for single layers and whole networks.

Every timing compares candidates measured *in the same run, interleaved*: each round calls
every candidate once (starting at a different one each round), and a candidate's speed-up is
the median over rounds of ``t_exact / t_candidate``. Absolute medians and the machine are
recorded next to the ratios, so a noisy machine shows as noise, not as a bias.

Library use (the scripts in ``benchmarks/`` and a ``backprobe bench`` CLI are thin wrappers
around :func:`run_layers` and :func:`run_networks`)::

    >>> import backprobe.bench as bench
    >>> result = bench.run_layers("quick", rs=[16], clock="cpu")
    >>> print(bench.layers_markdown(result))
    >>> bench.write_json("benchmarks/results/layers_quick.json", **result)
    >>> probes = bench.probe_candidates([16], [("joint", False)])  # finer-grained pieces
    >>> rows = bench.bench_layer(bench.LayerCase(32, 16, 64), probes, repeats=5)

Conventions: ``speedup > 1`` means faster than exact; ``memory_reduction`` is
``exact bytes / candidate bytes`` of what autograd keeps for backward (parameters excluded).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import backprobe
from backprobe.estimators import Estimator, Probe
from backprobe.layers import AffineOp, bind
from backprobe.memory import saved_activation_bytes, saved_tensors
from backprobe.nn import EstimatedLayer

REFERENCE = "exact"
#: Probes drawing more numbers than this per call are not timed (hours on a CPU).
MAX_PROBE_ENTRIES = 2**28
NO_WGRAD = "bound: no weight grad"
EXACT_COMPACT = "exact + compact activations"
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
#: (mode, per_sample) combinations of :class:`~backprobe.Probe` benchmarked by default.
VARIANTS: tuple[tuple[str, bool], ...] = (
    ("channel", True), ("channel", False), ("joint", True), ("joint", False),
)


# -- machine and timing ------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, threads, versions, load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def script_arguments(doc: str | None, *, networks: bool = False) -> argparse.Namespace:
    """Parse the options both benchmark scripts share, set torch's threads, log the machine."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="grid", action="store_const", const="quick",
                      default="quick")
    size.add_argument("--full", dest="grid", action="store_const", const="full")
    if networks:
        p.add_argument("--networks", default=None,
                       help="comma-separated substrings of network names")
    p.add_argument("--r", default=None, help="comma-separated probe counts (default: per grid)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: per grid)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--budget", type=float, default=None,
                   help="seconds per timing, then stop early")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or process CPU time (steadier when shared; use --threads 1)")
    p.add_argument("--suffix", default="", help="appended to the output file names")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_info(), file=sys.stderr)
    return args


def time_interleaved(
    fns: dict[str, Callable[[], object]], *, repeats: int = 10, warmup: int = 2,
    reference: str = REFERENCE, budget_s: float | None = None, min_repeats: int = 3,
    clock: str = "wall",
) -> dict[str, dict[str, float]]:
    """Time candidates round-robin and compare each with ``reference`` round by round.

    Each round calls every candidate once, starting one further along each round (so no
    candidate always runs first). Warm-up rounds are discarded.

    Args:
        fns: name -> zero-argument callable; must contain ``reference``.
        repeats: timed rounds.
        warmup: untimed rounds first.
        reference: the key the ratios are taken against (the exact path).
        budget_s: stop after this many seconds of timed rounds (once ``min_repeats`` ran).
        min_repeats: rounds always timed, whatever the budget.
        clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``: CPU
            seconds of all this process's threads; on a machine shared with other jobs run
            it with one torch thread, where it is far steadier than wall time).

    Returns:
        ``{name: {"median_s", "speedup", "repeats"}}`` where ``speedup`` is the median over
        rounds of ``t_reference / t_name`` (1.0 for the reference itself).

    Raises:
        KeyError: if ``reference`` is not in ``fns``.
    """
    if reference not in fns:
        raise KeyError(f"time_interleaved: reference {reference!r} not among {list(fns)}")
    if clock not in CLOCKS:
        raise ValueError(f"time_interleaved: clock must be one of {list(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for i in range(warmup + repeats):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            t0 = now()
            fns[name]()
            dt = now() - t0
            if i >= warmup:
                times[name].append(dt)
        if i < warmup:
            start = time.perf_counter()
        elif budget_s is not None and i + 1 - warmup >= min_repeats:
            if time.perf_counter() - start > budget_s:
                break
    ref = times[reference]
    return {
        n: {
            "median_s": statistics.median(ts),
            "speedup": statistics.median(r / t for r, t in zip(ref, ts, strict=True)),
            "repeats": len(ts),
        }
        for n, ts in times.items()
    }


def probe_name(probe: Probe) -> str:
    """Short label, e.g. ``"r16 channel per-sample"`` or ``"r4 joint shared"``."""
    share = "per-sample" if probe.per_sample else "shared"
    return f"r{probe.num_probes} {probe.mode} {share}"


def probe_candidates(
    rs: Iterable[int], variants: Iterable[tuple[str, bool]] = VARIANTS, seed: int = 0
) -> dict[str, Probe]:
    """``{label: Probe(r, mode=..., per_sample=...)}`` for every ``r`` and variant."""
    probes = [
        Probe(r, mode=mode, per_sample=ps, seed=seed) for mode, ps in variants for r in rs
    ]
    return {probe_name(p): p for p in probes}


def _describe(name: str, est: Probe | None) -> dict[str, Any]:
    if est is None:
        return {"candidate": name, "r": None, "mode": None, "per_sample": None}
    return {"candidate": name, "r": est.num_probes, "mode": est.mode,
            "per_sample": est.per_sample}


# -- single layers -----------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCase:
    """A ``Conv2d(C, C, 3x3, pad 1, no bias)`` applied to ``[batch, C, size, size]``."""

    batch: int
    channels: int
    image_size: int


def layer_grid(kind: str = "quick") -> list[LayerCase]:
    """The benchmarked layer shapes.

    ``"quick"`` sweeps the image size (32, 64, 128) at batch 8 and 16 channels, plus one layer
    of the XConv stack (batch 32, 16 channels, 64x64); ``"full"`` sweeps, one axis at a time
    around batch 32 / 16 channels / 64x64, image size 32..256, channels 4..64, batch 8..64.
    """
    if kind == "quick":
        return [LayerCase(8, 16, s) for s in (32, 64, 128)] + [LayerCase(32, 16, 64)]
    if kind != "full":
        raise ValueError(f"layer_grid: kind must be 'quick' or 'full', got {kind!r}")
    cases = [LayerCase(32, 16, s) for s in (32, 64, 128, 256)]  # batch 32, 16 channels
    cases += [LayerCase(32, c, 64) for c in (4, 8, 32, 64)]
    cases += [LayerCase(b, 16, 64) for b in (8, 16, 64)]
    return cases


def bench_layer(
    case: LayerCase, probes: dict[str, Probe], *, repeats: int = 10, warmup: int = 2,
    budget_s: float | None = None, clock: str = "wall", seed: int = 0,
    max_probe_entries: int = MAX_PROBE_ENTRIES,
) -> list[dict[str, Any]]:
    """Exact vs each probe on one convolution: weight-gradient time, step time, saved bytes.

    * ``wgrad``: the weight gradient alone, from what forward kept: ``op.weight_grad(x, g)``
      for exact, ``probe.weight_grad(op, sketch, meta, g)`` for a probe (``pack`` done once
      beforehand, outside the timing).
    * ``step``: forward + backward of the layer, input and weight gradients (as inside a
      network): plain ``nn.Conv2d`` vs ``backprobe.nn.Conv2d(estimator=probe)``.
    * ``saved_bytes``: what autograd keeps for backward (the weight excluded).

    The step is also timed without any weight gradient (row ``"bound: no weight grad"``,
    forward + input gradient only): no estimator's step can beat that bound. Probes
    drawing more than ``max_probe_entries`` numbers per call (``N * r * Q``, e.g.
    joint mode at 256x256) are not timed: their row says ``"skipped"`` in ``path``.

    Returns:
        One row per candidate (``"exact"`` first, the bound last) with the case, times and
        ratios.
    """
    gen = torch.Generator().manual_seed(seed)
    n, c, s = case.batch, case.channels, case.image_size
    x = torch.randn(n, c, s, s, generator=gen).requires_grad_(True)
    g = torch.randn(n, c, s, s, generator=gen)
    exact = nn.Conv2d(c, c, 3, padding=1, bias=False)
    xin, op = bind(exact, x.detach())

    def entries(p: Probe) -> int:
        b, _, q = op.probe_view(xin, p.mode).shape
        return b * p.num_probes * q if p.per_sample else p.num_probes * q

    skipped = {k: p for k, p in probes.items() if entries(p) > max_probe_entries}
    probes = {k: p for k, p in probes.items() if k not in skipped}
    probed = {k: backprobe.nn.Conv2d(c, c, 3, padding=1, bias=False, estimator=p)
              for k, p in probes.items()}
    for m in probed.values():
        m.weight = exact.weight

    def step(module: nn.Conv2d) -> Callable[[], object]:
        return lambda: torch.autograd.grad(module(x), (x, module.weight), g)

    def wgrad_fn(probe: Probe) -> Callable[[], object]:
        saved, meta = probe.pack(op, xin)  # forward's sketch, made once outside the timing
        return lambda: probe.weight_grad(op, saved, meta, g)

    wgrad_fns: dict[str, Callable[[], object]] = {REFERENCE: lambda: op.weight_grad(xin, g)}
    step_fns: dict[str, Callable[[], object]] = {
        REFERENCE: step(exact),
        NO_WGRAD: lambda: torch.autograd.grad(exact(x), (x,), g),
    }
    for k, p in probes.items():
        wgrad_fns[k] = wgrad_fn(p)
        step_fns[k] = step(probed[k])
    kw: dict[str, Any] = {"repeats": repeats, "warmup": warmup, "budget_s": budget_s,
                          "clock": clock}
    wgrad = time_interleaved(wgrad_fns, **kw)
    steps = time_interleaved(step_fns, **kw)

    rows = []
    modules: dict[str, nn.Module] = {REFERENCE: exact, **probed}
    exact_bytes = 0
    for k, module in modules.items():
        with saved_tensors(exclude=[exact.weight]) as log:
            module(x)
        if k == REFERENCE:
            exact_bytes = log.bytes
        rows.append({
            **asdict(case), **_describe(k, probes.get(k)),
            "path": getattr(module, "last_path", None) or "exact",
            "wgrad_s": wgrad[k]["median_s"], "wgrad_speedup": wgrad[k]["speedup"],
            "step_s": steps[k]["median_s"], "step_speedup": steps[k]["speedup"],
            "saved_bytes": log.bytes, "memory_reduction": exact_bytes / max(log.bytes, 1),
            "repeats": min(wgrad[k]["repeats"], steps[k]["repeats"]),
        })
    for k, p in skipped.items():
        rows.append({**asdict(case), **_describe(k, p),
                     "path": f"skipped ({entries(p):.2e} probe entries per call)"})
    rows.append({
        **asdict(case), **_describe(NO_WGRAD, None), "path": "exact",
        "step_s": steps[NO_WGRAD]["median_s"], "step_speedup": steps[NO_WGRAD]["speedup"],
        "repeats": steps[NO_WGRAD]["repeats"],
    })
    return rows


def bench_layers(
    cases: Sequence[LayerCase], probes: dict[str, Probe], *,
    progress: Callable[[str], None] | None = None, **kw: Any,
) -> list[dict[str, Any]]:
    """:func:`bench_layer` over ``cases``; ``kw`` goes to it (repeats, warmup, budget_s)."""
    rows: list[dict[str, Any]] = []
    for case in cases:
        if progress is not None:
            progress(f"layer {case}")
        rows += bench_layer(case, probes, **kw)
    return rows


# -- networks ----------------------------------------------------------------------------
def conv_stack(channels: int = 16, depth: int = 4) -> nn.Sequential:
    """XConv's memory example: ``depth`` x ``Conv(C -> C, 3x3, pad 1, no bias)-ReLU``."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.ReLU()]
    return nn.Sequential(*layers)


def mean_loss(out: Tensor, target: Tensor) -> Tensor:
    """``out.mean()``: a linear loss that keeps nothing, so saved bytes are the layers' own."""
    return out.mean()


@dataclass(frozen=True)
class NetworkCase:
    """A network, its input shape and loss (``num_classes=None``: :func:`mean_loss`)."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int | None = 10

    def data(self, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A fixed random batch ``(x, y)``."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(self.input_shape, generator=gen)
        if self.num_classes is None:
            return x, torch.zeros(())
        return x, torch.randint(0, self.num_classes, (self.input_shape[0],), generator=gen)

    def loss_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        """Cross-entropy for classifiers, :func:`mean_loss` otherwise."""
        return nn.CrossEntropyLoss() if self.num_classes is not None else mean_loss


def network_cases() -> list[NetworkCase]:
    """The benchmarked networks (models from :mod:`backprobe.models`)."""
    from backprobe.models import build

    return [
        NetworkCase("conv_stack (4x Conv16)", conv_stack, (32, 16, 64, 64), None),
        NetworkCase("mnist_cnn", lambda: build("mnist_cnn", 1, 10, 28), (128, 1, 28, 28)),
        NetworkCase("3c3d", lambda: build("c3d", 3, 10, 32), (64, 3, 32, 32)),
        NetworkCase("vgg11 (no BN)", lambda: build("vgg", 3, 10, 32), (32, 3, 32, 32)),
        NetworkCase("resnet18", lambda: build("resnet18", 3, 10, 32), (32, 3, 32, 32)),
    ]


class FreeWeightGrad(Estimator):
    """A timing bound, not an estimator: keeps nothing and returns a zero weight gradient.

    Forward and the input and bias gradients are exact, so a model converted with it runs
    the whole step except the convolution weight gradients.
    """

    natural_layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def pack(self, op: AffineOp, x: Tensor) -> tuple[tuple[Tensor, ...], Any]:
        return (), None

    def saved_numbers(self, op: AffineOp, x: Tensor) -> int:
        return 0

    def backward(self, op, saved, meta, g, weight, input_shape, mask):  # noqa: D102
        gi, _, gb = op.backward(None, g, weight, input_shape, (mask[0], False, mask[2]))
        return gi, (torch.zeros_like(weight) if mask[1] else None), gb


def _train_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> Callable[[], object]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def bench_network(
    case: NetworkCase, probes: dict[str, Probe], *, repeats: int = 5, warmup: int = 1,
    budget_s: float | None = None, clock: str = "wall", seed: int = 0,
) -> list[dict[str, Any]]:
    """Exact vs ``convert(model, probe, example_input=x)``: saved bytes and SGD step time.

    Besides plain exact and one model per probe, the candidate ``"exact + compact
    activations"`` (``convert(model, Exact())``: exact weight gradients, 1-bit ReLU masks,
    int8 max-pool offsets) separates the cost of compact activations from that of probing,
    and ``"bound: no weight grad"`` (:class:`FreeWeightGrad` on every convolution) is the step
    time no estimator of convolution weight gradients can beat. All candidates start from the same
    weights; each has its own SGD optimizer (lr 1e-3), so weights drift apart slightly while
    timing, which does not change the cost.

    Returns:
        One row per candidate (``"exact"`` first).
    """
    torch.manual_seed(seed)
    base = case.build()
    x, y = case.data(seed)
    loss_fn = case.loss_fn()
    models: dict[str, nn.Module] = {
        REFERENCE: base,
        EXACT_COMPACT: backprobe.convert(copy.deepcopy(base), backprobe.Exact(), example_input=x),
    }
    for k, p in probes.items():
        models[k] = backprobe.convert(copy.deepcopy(base), p, example_input=x)
    free = backprobe.convert(copy.deepcopy(base), FreeWeightGrad(), compact_activations=False)
    steps = {
        k: _train_step(m, torch.optim.SGD(m.parameters(), lr=1e-3), x, y, loss_fn)
        for k, m in {**models, NO_WGRAD: free}.items()
    }
    times = time_interleaved(steps, repeats=repeats, warmup=warmup, budget_s=budget_s,
                             clock=clock)
    rows = []
    exact_bytes = 1
    for k, m in models.items():
        nbytes = int(saved_activation_bytes(m, x, y, loss_fn))  # type: ignore[arg-type]
        if k == REFERENCE:
            exact_bytes = nbytes
        layers = [mod for mod in m.modules() if isinstance(mod, EstimatedLayer)]
        rows.append({
            "network": case.name, "input_shape": list(case.input_shape),
            **_describe(k, probes.get(k)),
            "estimator_layers": sum(mod.last_path == "estimator" for mod in layers),
            "exact_fallback_layers": sum(mod.last_path == "exact" for mod in layers),
            "saved_bytes": nbytes, "memory_reduction": exact_bytes / max(nbytes, 1),
            "step_s": times[k]["median_s"], "step_speedup": times[k]["speedup"],
            "repeats": times[k]["repeats"],
        })
    rows.append({
        "network": case.name, "input_shape": list(case.input_shape),
        **_describe(NO_WGRAD, None), "step_s": times[NO_WGRAD]["median_s"],
        "step_speedup": times[NO_WGRAD]["speedup"], "repeats": times[NO_WGRAD]["repeats"],
    })
    return rows


def saved_bytes_by_type(
    model: nn.Module, x: Tensor, target: Tensor | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, int]:
    """Saved activation bytes grouped by the saving module's type, largest first.

    Probed layers show as ``"Conv2d (probed)"``, compact activations as e.g.
    ``"ReLU (compact)"``; functional ops and the loss as ``"functional/loss"``.
    """
    per_layer = saved_activation_bytes(model, x, target, loss_fn, per_layer=True)
    assert isinstance(per_layer, dict)
    modules = dict(model.named_modules())
    out: dict[str, int] = {}
    for name, nbytes in per_layer.items():
        m = modules.get(name) if name else None
        if m is None:
            key = "functional/loss"
        else:
            key = type(m).__name__
            if isinstance(m, EstimatedLayer):
                key += " (probed)" if m.last_path == "estimator" else " (exact fallback)"
            elif type(m).__module__.startswith("backprobe"):
                key += " (compact)"
        out[key] = out.get(key, 0) + nbytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def memory_breakdown(case: NetworkCase, probe: Probe, seed: int = 0) -> list[dict[str, Any]]:
    """Where saved bytes sit, by module type, for exact and ``convert(model, probe)``."""
    torch.manual_seed(seed)
    exact = case.build()
    x, y = case.data(seed)
    loss_fn = case.loss_fn()
    probed = backprobe.convert(copy.deepcopy(exact), probe, example_input=x)
    rows = []
    for label, m in ((REFERENCE, exact), (probe_name(probe), probed)):
        groups = saved_bytes_by_type(m, x, y, loss_fn)
        total = sum(groups.values())
        for key, nbytes in groups.items():
            rows.append({"network": case.name, "candidate": label, "module_type": key,
                         "saved_bytes": nbytes, "share": nbytes / max(total, 1)})
    return rows


# -- whole benchmarks (what the scripts and a ``backprobe bench`` CLI call) ---------------
#: Defaults per grid: probe counts, timed rounds, seconds per timing before stopping early.
LAYER_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {"r": (4, 16, 64), "repeats": 5, "budget_s": 5.0},
    "full": {"r": (4, 8, 16, 32, 64), "repeats": 10, "budget_s": 30.0},
}
NETWORK_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {"r": (16,), "repeats": 3, "budget_s": 20.0},
    "full": {"r": (4, 16, 64), "repeats": 10, "budget_s": 120.0},
}


def run_layers(
    grid: str = "quick", *, rs: Sequence[int] | None = None, repeats: int | None = None,
    warmup: int = 1, budget_s: float | None = None, clock: str = "wall",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The layer benchmark: every case of ``layer_grid(grid)``, exact vs all probe variants.

    Args:
        grid: ``"quick"`` or ``"full"``; arguments left ``None`` take its
            :data:`LAYER_DEFAULTS`.
        rs: probe counts.
        repeats: timed rounds.
        warmup: untimed rounds.
        budget_s: seconds of timed rounds per timing before stopping early.
        clock: ``"wall"`` or ``"cpu"`` (see :func:`time_interleaved`).
        progress: called with a line per case.

    Returns:
        ``{"config": ..., "rows": [...]}`` (pass to :func:`write_json`, :func:`layers_markdown`).
    """
    d = LAYER_DEFAULTS[grid]
    rs = tuple(rs or d["r"])
    repeats = repeats or d["repeats"]
    budget_s = d["budget_s"] if budget_s is None else budget_s
    cases = layer_grid(grid)
    rows = bench_layers(cases, probe_candidates(rs), repeats=repeats, warmup=warmup,
                        budget_s=budget_s, clock=clock, progress=progress)
    config = {"grid": grid, "r": list(rs), "repeats": repeats, "warmup": warmup,
              "budget_s": budget_s, "clock": clock, "cases": [asdict(c) for c in cases]}
    return {"config": config, "rows": rows}


def layers_markdown(result: dict[str, Any]) -> str:
    """One markdown table per layer case of a :func:`run_layers` result."""
    parts = []
    for case in result["config"]["cases"]:
        sel = [r for r in result["rows"]
               if all(r[k] == v for k, v in case.items())]
        n, c, s = case["batch"], case["channels"], case["image_size"]
        parts.append(f"### Conv2d({c}->{c}, 3x3, pad 1), input {n}x{c}x{s}x{s}\n\n"
                     + markdown_table(sel, LAYER_COLUMNS[3:]))
    return "\n\n".join(parts)


def run_networks(
    grid: str = "quick", *, networks: Sequence[str] | None = None,
    rs: Sequence[int] | None = None, repeats: int | None = None, warmup: int = 1,
    budget_s: float | None = None, clock: str = "wall",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The network benchmark: exact vs ``convert(model, Probe(r))`` on :func:`network_cases`.

    Candidates: channel mode with per-sample and with shared probes, joint mode with shared
    probes, for each ``r``; per-sample joint mode only on the conv stack (it draws ``r``
    probe images the size of each example, in forward and again in backward: on the big
    networks it is many times slower than exact). Also where VGG's and ResNet-18's saved
    bytes sit, by module type, for ``Probe(16)``.

    Args:
        grid: ``"quick"`` or ``"full"`` (defaults from :data:`NETWORK_DEFAULTS`).
        networks: substrings of network names to keep (default: all).
        rs: probe counts.
        repeats: timed rounds.
        warmup: untimed rounds.
        budget_s: seconds of timed rounds per network before stopping early.
        clock: ``"wall"`` or ``"cpu"`` (see :func:`time_interleaved`).
        progress: called with a line per network.

    Returns:
        ``{"config": ..., "rows": [...], "breakdown": [...]}``.
    """
    d = NETWORK_DEFAULTS[grid]
    rs = tuple(rs or d["r"])
    repeats = repeats or d["repeats"]
    budget_s = d["budget_s"] if budget_s is None else budget_s
    cases = network_cases()
    if networks:
        cases = [c for c in cases if any(s in c.name for s in networks)]
    shared = [v for v in VARIANTS if v != ("joint", True)]
    rows: list[dict[str, Any]] = []
    breakdown: list[dict[str, Any]] = []
    for case in cases:
        if progress is not None:
            progress(f"network {case.name}")
        stack = case.name.startswith("conv_stack")
        probes = probe_candidates(rs, VARIANTS if stack else shared)
        rows += bench_network(case, probes, repeats=repeats, warmup=warmup, budget_s=budget_s,
                              clock=clock)
        if case.name.startswith(("vgg", "resnet18")):
            breakdown += memory_breakdown(case, Probe(16, seed=0))
    config = {"grid": grid, "r": list(rs), "repeats": repeats, "warmup": warmup,
              "budget_s": budget_s, "clock": clock, "networks": [c.name for c in cases]}
    return {"config": config, "rows": rows, "breakdown": breakdown}


def networks_markdown(result: dict[str, Any]) -> str:
    """The tables of a :func:`run_networks` result."""
    out = ("### Networks: saved activation bytes and SGD step time vs exact\n\n"
           + markdown_table(result["rows"], NETWORK_COLUMNS))
    if result["breakdown"]:
        out += ("\n\n### Where the saved bytes sit, by module type (Probe(16))\n\n"
                + markdown_table(result["breakdown"], BREAKDOWN_COLUMNS))
    return out


# -- output ------------------------------------------------------------------------------
LAYER_COLUMNS = ("batch", "channels", "image_size", "candidate", "wgrad_s", "wgrad_speedup",
                 "step_s", "step_speedup", "saved_bytes", "memory_reduction", "path")
NETWORK_COLUMNS = ("network", "candidate", "estimator_layers", "exact_fallback_layers",
                   "saved_bytes", "memory_reduction", "step_s", "step_speedup")
BREAKDOWN_COLUMNS = ("network", "candidate", "module_type", "saved_bytes", "share")


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return ""
    if key.endswith("_s"):
        return f"{v * 1e3:.1f} ms"
    if key.endswith("bytes"):
        return f"{v / 2**10:.1f} KiB" if v < 2**20 else f"{v / 2**20:.1f} MiB"
    if key == "share":
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.0f}x" if v >= 100 else f"{v:.2f}x"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a markdown table: times in ms, bytes in MiB, ratios as ``1.23x``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c, r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, **payload: Any) -> Path:
    """Write ``{"machine": machine_info(), **payload}`` as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine_info(), **payload}, indent=1) + "\n")
    return path


def plot_layers(rows: Sequence[dict[str, Any]], path: str | Path, *, batch: int,
                channels: int) -> Path:
    """Weight-gradient time, step time and saved bytes vs image size, one line per ``r``.

    One row of panels per (mode, per_sample) variant; exact is the black dashed line.
    Only rows with the given ``batch`` and ``channels`` are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["batch"] == batch and r["channels"] == channels]
    variants = sorted({(r["mode"], r["per_sample"]) for r in rows if r["r"] is not None})
    metrics = (("wgrad_s", "weight gradient [ms]", 1e3), ("step_s", "forward+backward [ms]", 1e3),
               ("saved_bytes", "saved for backward [MiB]", 2.0**-20))
    fig, axes = plt.subplots(len(variants), 3, figsize=(13, 3.2 * len(variants)), squeeze=False)
    def line(name: str) -> list[dict[str, Any]]:
        return sorted((r for r in rows if r["candidate"] == name), key=lambda r: r["image_size"])

    exact, bound = line(REFERENCE), line(NO_WGRAD)
    rs = sorted({r["r"] for r in rows if r["r"] is not None})
    sizes = sorted({r["image_size"] for r in rows})
    for (mode, ps), axrow in zip(variants, axes, strict=True):
        for ax, (key, label, scale) in zip(axrow, metrics, strict=True):
            ax.plot([r["image_size"] for r in exact], [r[key] * scale for r in exact],
                    "k--o", label="exact")
            if key == "step_s" and bound:
                ax.plot([r["image_size"] for r in bound], [r[key] * scale for r in bound],
                        ":", color="gray", label="no weight grad (bound)")
            for rr in rs:
                sel = [r for r in rows if (r["mode"], r["per_sample"], r["r"]) == (mode, ps, rr)
                       and r.get(key) is not None]
                pts = sorted(sel, key=lambda r: r["image_size"])
                ax.plot([r["image_size"] for r in pts], [r[key] * scale for r in pts], "-o",
                        label=f"r={rr}")
            ax.set(yscale="log", xlabel="image size", ylabel=label,
                   title=f"{mode}, {'per-sample' if ps else 'shared'} probes")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, labels=[str(s) for s in sizes])
            ax.minorticks_off()
    axes[0][1].legend(fontsize=8)
    fig.suptitle(f"Conv2d({channels}->{channels}, 3x3), batch {batch}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_networks(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Bars per network: memory reduction and step speed-up of each probe vs exact (=1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(dict.fromkeys(r["network"] for r in rows))
    cands = list(dict.fromkeys(r["candidate"] for r in rows if r["candidate"] != REFERENCE))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    width = 0.8 / max(len(cands), 1)
    for ax, key, label in ((axes[0], "memory_reduction", "saved-bytes reduction (exact = 1)"),
                           (axes[1], "step_speedup", "train-step speed-up (exact = 1)")):
        for i, c in enumerate(cands):
            vals = [next((r.get(key) or float("nan") for r in rows
                          if r["network"] == n and r["candidate"] == c), float("nan"))
                    for n in nets]
            ax.bar([j + i * width for j in range(len(nets))], vals, width, label=c)
        ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(nets))], labels=nets,
                      rotation=20, fontsize=8)
        ax.set_ylabel(label)
        if key == "memory_reduction":
            ax.set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
