"""Exact vs convert(model, Probe(r), example_input=x): saved activation bytes and SGD step time.

    python benchmarks/bench_networks.py          # --quick: Probe(16), 3 rounds
    python benchmarks/bench_networks.py --full   # r = 4, 16, 64, 10 rounds
    python benchmarks/bench_networks.py --threads 1 --clock cpu   # steadier on a busy machine
    python benchmarks/bench_networks.py --out benchmarks/results  # the README's figures

Networks: 4x Conv(16->16) stack (input 32x16x64x64, XConv's memory example), MNIST CNN
(128x1x28x28), 3C3D (64x3x32x32), VGG-11 without BN (32x3x32x32), ResNet-18 CIFAR (32x3x32x32).
Also prints where VGG's and ResNet-18's saved bytes sit, by module type. Writes
<out>/networks_<grid>.json and <out>/bench_networks_<grid>.png (``--out`` default: the
git-ignored results/bench).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _harness import REFERENCE, arguments, ints, markdown_table, progress, time_interleaved
from _harness import write_json as write_result
from _probes import EXACT_COMPACT, NO_WGRAD, VARIANTS, describe, probe_candidates, probe_name
from torch import Tensor, nn

import backprobe
from backprobe.app.models import build
from backprobe.app.report import pyplot, save_figure
from backprobe.estimators import Estimator, Probe
from backprobe.layers import AffineOp
from backprobe.memory import saved_activation_bytes
from backprobe.nn import EstimatedLayer

NETWORK_COLUMNS = ("network", "candidate", "estimator_layers", "exact_fallback_layers",
                   "saved_bytes", "memory_reduction", "step_s", "step_speedup")
BREAKDOWN_COLUMNS = ("network", "candidate", "module_type", "saved_bytes", "share")
NETWORK_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {"r": (16,), "repeats": 3, "budget_s": 20.0},
    "full": {"r": (4, 16, 64), "repeats": 10, "budget_s": 120.0},
}


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
            **describe(k, probes.get(k)),
            "estimator_layers": sum(mod.last_path == "estimator" for mod in layers),
            "exact_fallback_layers": sum(mod.last_path == "exact" for mod in layers),
            "exact_held_input_layers": sum(mod.last_path == "held" for mod in layers),
            "saved_bytes": nbytes, "memory_reduction": exact_bytes / max(nbytes, 1),
            "step_s": times[k]["median_s"], "step_speedup": times[k]["speedup"],
            "repeats": times[k]["repeats"],
        })
    rows.append({
        "network": case.name, "input_shape": list(case.input_shape),
        **describe(NO_WGRAD, None), "step_s": times[NO_WGRAD]["median_s"],
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
                key += {"estimator": " (probed)", "held": " (exact, held input)"}.get(
                    m.last_path or "", " (exact fallback)")
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
        unknown = [s for s in networks if not any(s in c.name for c in cases)]
        if unknown:
            raise ValueError(f"--networks {','.join(unknown)} matches no network; names: "
                             + ", ".join(c.name for c in cases))
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


def plot_networks(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Bars per network: memory reduction and step speed-up of each probe vs exact (=1)."""
    plt = pyplot()
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
    return save_figure(fig, path, dpi=100)


def main() -> None:
    """Run the network benchmark as the flags say; print its tables, write JSON and PNG."""
    def add(p: Any) -> None:
        p.add_argument("--networks", default=None,
                       help="comma-separated substrings of network names")

    args = arguments(__doc__, grid=True, add=add)
    try:
        result = run_networks(
            args.grid, networks=args.networks.split(",") if args.networks else None,
            rs=ints(args.r), repeats=args.repeats, warmup=args.warmup, budget_s=args.budget,
            clock=args.clock, progress=progress,
        )
    except ValueError as err:  # bad --networks: before any work, nothing written
        print(f"bench_networks.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(networks_markdown(result))
    name = f"networks_{args.grid}{args.suffix}"
    out = write_result(args.out / f"{name}.json", **result)
    png = plot_networks(result["rows"], args.out / f"bench_{name}.png")
    progress(f"\nwrote {out} and {png}")


if __name__ == "__main__":
    main()
