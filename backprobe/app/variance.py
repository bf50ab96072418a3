"""``backprobe variance``: XConv's validation figures at initialisation.

:func:`variance_study` draws histograms of probed estimates of single weights against the
true gradient, and the standard deviation of each conv layer's weight gradient across
minibatches, exact and probed.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backprobe.app import _checks as checks
from backprobe.app._args import add_common, ints
from backprobe.app.report import progress_bar, pyplot, save_figure, table, write_json
from backprobe.app.spec import parse_estimator
from backprobe.app.training import build_model, load_data
from backprobe.estimators import Estimator, choose
from backprobe.layers import bind

__all__ = ["VarianceResult", "add_parser", "run", "variance_study"]

_Conv = nn.modules.conv._ConvNd


def _conv_layers(model: nn.Module) -> list[tuple[str, _Conv]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Conv)]


def _layer_io(model: nn.Module, layers: list[tuple[str, _Conv]], x: Tensor, y: Tensor
              ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Per conv layer: its input, its output gradient and its exact weight gradient."""
    inputs: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    handles = []
    for name, m in layers:
        def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor, name: str = name) -> None:
            inputs[name] = inp[0].detach()
            out.register_hook(lambda g: grads.__setitem__(name, g.detach()))
        handles.append(m.register_forward_hook(hook))
    try:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, m in layers:
        assert m.weight.grad is not None
        out[n] = (inputs[n], grads[n], m.weight.grad.detach().clone())
    return out


def _probed_grad(module: nn.Module, est: Estimator, x: Tensor, g: Tensor) -> Tensor:
    """One probed weight gradient of ``module`` for input ``x`` and output gradient ``g``.

    Input gradients of probed layers are exact, so ``g`` is the same as in a fully probed
    network and this is the distribution of that network's weight gradient.
    """
    xc, op = bind(module, x)
    chosen, _ = choose(est, op, xc)  # the converted layer's own choice: estimator or exact
    saved, meta = chosen.pack(op, xc)
    return chosen.weight_grad(op, saved, meta, g)


@dataclass
class VarianceResult:
    """Numbers behind the variance figures (see :func:`variance_study`)."""

    model: str
    data: str
    probes: list[int]
    spec_template: str
    batch_size: int
    draws: int
    minibatches: int
    #: input kind -> list of {"layer", "index", "true", "estimates": {r: [..]}}
    histograms: dict[str, list[dict[str, Any]]]
    #: layer -> {"exact": std, "probe:r": std, ...} (mean over weights of std over minibatches)
    std: dict[str, dict[str, float]]
    files: list[str] = field(default_factory=list)

    def table(self) -> str:
        """Histogram summary (bias and spread of the probed estimates) and the std table."""
        rows = [["input", "weight", "true"] + [f"r={r} mean (sd)" for r in self.probes]]
        for kind, entries in self.histograms.items():
            for e in entries:
                row = [kind, f"{e['layer']}{list(e['index'])}", f"{e['true']:+.2e}"]
                for r in self.probes:
                    v = torch.tensor(e["estimates"][str(r)])
                    row.append(f"{float(v.mean()):+.2e} ({float(v.std()):.1e})")
                rows.append(row)
        keys = ["exact"] + [self.spec_template.format(r=r) for r in self.probes]
        std_rows = [["layer"] + keys]
        std_rows += [[layer] + [f"{vals[k]:.3e}" for k in keys] for layer, vals in self.std.items()]
        return (
            f"probed estimates of single weights over {self.draws} draws "
            f"(batch {self.batch_size})\n"
            + table(rows) + "\n\n"
            + f"std of each conv layer's weight gradient across {self.minibatches} minibatches "
            "(mean over weights)\n" + table(std_rows, [False] + [True] * len(keys))
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _plot_histograms(
    entries: list[dict[str, Any]], probes: list[int], title: str, path: Path
) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(len(entries), len(probes), squeeze=False,
                             figsize=(3.2 * len(probes), 2.3 * len(entries)))
    for i, e in enumerate(entries):
        for j, r in enumerate(probes):
            ax = axes[i][j]
            v = torch.tensor(e["estimates"][str(r)])
            ax.hist(v.numpy(), bins=30, color="0.7")
            ax.axvline(e["true"], color="k", lw=2, label="true gradient")
            ax.axvline(float(v.mean()), color="tab:red", ls="--", label="mean")
            ax.axvline(float(v.median()), color="tab:blue", ls=":", lw=2, label="median")
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"r = {r}")
            if j == 0:
                ax.set_ylabel(f"layer {e['layer']}\nw{list(e['index'])}", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_std(std: dict[str, dict[str, float]], keys: list[str], labels: dict[str, str],
              title: str, path: Path) -> Path:
    plt = pyplot()
    layers = list(std)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(layers) * len(keys) / 3), 4))
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        xs = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(layers))]
        ax.bar(xs, [std[layer][key] for layer in layers], width, label=key,
               color="k" if key == "exact" else None)
    ax.set_xticks(range(len(layers)), [labels.get(layer, layer) for layer in layers])
    ax.set_ylabel("std across minibatches (mean over weights)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_figure(fig, path)


def variance_study(
    model: str = "mnist_cnn", data: str = "digits", probes: Sequence[int] = (4, 8, 16, 32), *,
    out: str | os.PathLike[str] | None = None, probe_options: str = "", batch_size: int = 32,
    draws: int = 200, minibatches: int = 40, hist_layers: int = 2, weights_per_layer: int = 2,
    seed: int = 0, data_dir: str | None = None, image_size: int | None = None,
    progress: bool = False,
) -> VarianceResult:
    """The XConv validation figures for ``model`` at initialisation.

    1. Histograms: for a fixed batch (random-normal inputs with random labels, and real
       images), ``draws`` probed estimates of ``weights_per_layer`` random weights of each
       of the first ``hist_layers`` conv layers, per ``r`` in ``probes``, against the true
       gradient (mean and median marked). Unbiasedness shows as the mean on the true value.
    2. Standard deviation of each conv layer's weight gradient across ``minibatches``
       training minibatches, exact and probed (one probe draw per minibatch, for each ``r``):
       the probing noise next to the minibatch noise SGD already lives with.

    Args:
        model: a :data:`backprobe.models.MODELS` name.
        data: a :data:`backprobe.data.DATASETS` name.
        data_dir: directory of the data files.
        image_size: resize images (default :func:`default_image_size`).
        probes: numbers of probes ``r``.
        out: directory for ``variance_hist_normal.png``, ``variance_hist_images.png``,
            ``variance_std.png`` and ``variance.json`` (nothing written if ``None``).
        probe_options: spec options appended to ``probe:R`` (e.g. ``"gaussian:joint"``).
        batch_size: examples per batch.
        draws: probe draws per histogram.
        minibatches: minibatches for the standard deviations.
        hist_layers: how many conv layers (from the input) get histograms.
        weights_per_layer: weights per layer in the histograms.
        seed: seeds the model, the weight choice, the random inputs and the probes.
        progress: tqdm bars.

    Returns:
        A :class:`VarianceResult` (``files`` lists the written paths).
    """
    probes = [int(r) for r in probes]
    for r in probes:
        checks.positive("--probes", r, allow_none=False)
    for flag, value in (("--batch-size", batch_size), ("--draws", draws),
                        ("--hist-layers", hist_layers),
                        ("--weights-per-layer", weights_per_layer)):
        checks.positive(flag, value, allow_none=False)
    if minibatches < 2:
        raise ValueError(f"--minibatches must be at least 2 (a standard deviation needs two), "
                         f"got {minibatches}")
    checks.output_dir("--out", out)
    template = "probe:{r}" + (f":{probe_options.strip(':')}" if probe_options.strip(":") else "")
    for r in probes:
        parse_estimator(template.format(r=r))
    split = load_data(data, data_dir=data_dir, image_size=image_size)
    if batch_size * 2 > len(split.x_train):
        raise ValueError(f"--batch-size {batch_size} leaves fewer than two minibatches in the "
                         f"training set ({len(split.x_train)} examples of {split.name})")
    torch.manual_seed(seed)
    net = build_model(model, split)
    layers = _conv_layers(net)
    if not layers:
        raise ValueError(f"variance_study: {model} has no convolution layers")
    pick_gen = torch.Generator().manual_seed(seed)
    picks: list[tuple[str, _Conv, tuple[int, ...]]] = []
    for name, m in layers[:hist_layers]:
        shape = m.weight.shape
        for flat in torch.randperm(int(math.prod(shape)), generator=pick_gen)[:weights_per_layer]:
            picks.append((name, m, tuple(int(i) for i in torch.unravel_index(flat, shape))))
    estimators = {r: parse_estimator(template.format(r=r)) for r in probes}

    inputs = {
        "normal": (torch.randn(batch_size, *split.input_shape, generator=pick_gen),
                   torch.randint(0, split.num_classes, (batch_size,), generator=pick_gen)),
        "images": (split.x_train[:batch_size], split.y_train[:batch_size]),
    }
    histograms: dict[str, list[dict[str, Any]]] = {}
    total = len(inputs) * len(probes) * draws
    bar = progress_bar(range(total), progress, desc="variance: histograms", unit="draw")
    it = iter(bar)
    for kind, (x, y) in inputs.items():
        io = _layer_io(net, layers, x, y)
        entries: list[dict[str, Any]] = [
            {"layer": n, "index": list(idx), "true": float(io[n][2][idx]),
                    "estimates": {str(r): [] for r in probes}} for n, _, idx in picks]
        for r in probes:
            for _ in range(draws):
                next(it, None)
                grads = {n: _probed_grad(m, estimators[r], io[n][0], io[n][1])
                         for n, m in layers[:hist_layers]}
                for e, (n, _, idx) in zip(entries, picks):
                    e["estimates"][str(r)].append(float(grads[n][idx]))
        histograms[kind] = entries
    if progress:
        bar.close()

    keys = ["exact"] + [template.format(r=r) for r in probes]
    samples: dict[str, dict[str, list[Tensor]]] = {n: {k: [] for k in keys} for n, _ in layers}
    order = torch.randperm(len(split.x_train), generator=pick_gen)
    chunks = [c for c in order.split(batch_size) if len(c) == batch_size][:minibatches]
    if len(chunks) < 2:
        raise ValueError("variance_study: need at least two full minibatches")
    for chunk in progress_bar(chunks, progress, desc="variance: minibatches", unit="batch"):
        io = _layer_io(net, layers, split.x_train[chunk], split.y_train[chunk])
        for n, m in layers:
            samples[n]["exact"].append(io[n][2])
            for r, key in zip(probes, keys[1:]):
                samples[n][key].append(_probed_grad(m, estimators[r], io[n][0], io[n][1]))
    std = {n: {k: float(torch.stack(v).std(dim=0).mean()) for k, v in per.items()}
           for n, per in samples.items()}

    result = VarianceResult(model, split.name, probes, template, batch_size, draws,
                            len(chunks), histograms, std)
    if out is not None:
        out = Path(out)
        names = {"normal": "random-normal inputs", "images": f"{split.name} images"}
        for kind, entries in histograms.items():
            path = _plot_histograms(entries, probes, f"{model}: probed weight-gradient estimates, "
                                    f"{names[kind]} (batch {batch_size}, {draws} draws)",
                                    out / f"variance_hist_{kind}.png")
            result.files.append(str(path))
        labels = {n: f"{n}: {type(m).__name__} {m.in_channels}->{m.out_channels}"
                  for n, m in layers}
        path = _plot_std(std, keys, labels, f"{model} on {split.name}: gradient std across "
                         f"{len(chunks)} "
                         f"minibatches of {batch_size}", out / "variance_std.png")
        result.files.append(str(path))
        result.files.append(str(write_json(out / "variance.json", result.to_json())))
    return result


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``variance`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("variance", help="XConv validation figures: estimate histograms, "
                              "gradient std across minibatches")
    add_common(p)
    p.add_argument("--probes", type=ints, default=[4, 8, 16, 32], help="default 4,8,16,32")
    p.add_argument("--probe-options", default="",
                   help="spec options appended to probe:R, e.g. gaussian:joint")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--draws", type=int, default=200, help="probe draws per histogram")
    p.add_argument("--minibatches", type=int, default=40)
    p.add_argument("--hist-layers", type=int, default=2, help="conv layers with histograms")
    p.add_argument("--weights-per-layer", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/variance", help="directory for the PNGs and JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the study, print its table and the files written."""
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
