"""Spectrally shaped probes vs plain probes at equal stored numbers, on real activations.

Trains the MNIST CNN and 3C3D on the digits (upsampled to 28x28 and 32x32, one channel)
with exact SGD. Every convolution has a shadow drop-in copy with ``Probe(r, shaping="dct")``
that sees each training batch (so its running spectrum comes from data already seen). At
a few points during training, for each convolution, the layer's input ``x`` and output
gradient ``g`` of the current batch are captured and ``--draws`` estimates are formed with
each estimator, from the *same* spectrum (restored before every draw: the current batch
never enters the spectrum it is sketched with):

* ``plain``: ``Probe(r)``; ``dct``: ``Probe(r, shaping="dct")``;
  ``dct+deflate``: ``Probe(r, shaping="dct", deflate=max(1, r // 4))``; with
  ``--deflate 4,2`` also ``dct+deflate/2`` (``deflate=max(1, r // 2)``); all keep
  ``N * C * r`` numbers;
* error: ``sqrt(mean ||estimate - exact||_F^2) / ||exact||_F``; ratio = shaped / plain,
  with its standard error over the draws (delta method, ``ratio_*_se``);
* predicted ratio under an isotropic output gradient,
  ``sqrt((sum sqrt(lambda))^2 / (P sum lambda))`` averaged over channels.

The summary gives, per network, r and convolution, the worst ratio over the evaluation
steps; the target of issue 13 is a ratio <= 0.6 on every convolution. A convolution with
no more output positions than ``r`` is skipped (no sketch to compare).

Usage::

    python benchmarks/bench_shaping.py --threads 1 --out benchmarks/results
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import _harness as H
import torch
from torch import nn

import backprobe
from backprobe import Probe
from backprobe.app import data as D
from backprobe.app import models as M
from backprobe.estimators import _shaping

NETS = {"mnist_cnn": (lambda: M.mnist_cnn(1, 10, 28), 28),
        "c3d": (lambda: M.c3d(1, 10, 32), 32)}


def estimators(r: int, divisors: list[int]) -> dict[str, Probe]:
    """The estimators compared at ``r`` stored numbers per (example, channel).

    ``divisors``: one ``dct+deflate`` estimator each, keeping ``max(1, r // d)`` DCT
    coefficients exactly (``d = 4`` is named ``dct+deflate``, others ``dct+deflate/d``);
    none when ``r == 1`` (deflation needs ``deflate < r``).
    """
    ests = {"plain": Probe(r, seed=0), "dct": Probe(r, shaping="dct", seed=0)}
    for d in divisors if r > 1 else []:
        ests[deflate_name(d)] = Probe(r, shaping="dct", deflate=max(1, r // d), seed=0)
    return ests


def deflate_name(divisor: int) -> str:
    """``4 -> "dct+deflate"``, ``2 -> "dct+deflate/2"``."""
    return "dct+deflate" if divisor == 4 else f"dct+deflate/{divisor}"


def ratio_key(est_name: str) -> str:
    """The row key of an estimator's error ratio: ``"dct+deflate/2" -> "ratio_dct_deflate/2"``."""
    return "ratio_" + est_name.replace("+", "_")


def predicted_ratio(lam: torch.Tensor) -> float:
    """``sqrt((sum sqrt(lambda))^2 / (P sum lambda))`` per channel, averaged."""
    lam = lam.flatten(1).double().clamp_min(0)
    p = lam.shape[1]
    ratio = lam.sqrt().sum(1).square() / (p * lam.sum(1)).clamp_min(1e-30)
    return float(ratio.sqrt().mean())


def errors(shadow: nn.Module, x: torch.Tensor, g: torch.Tensor, exact: torch.Tensor,
           draws: int) -> tuple[float, float]:
    """Relative RMS error of ``shadow``'s estimator over ``draws`` draws (spectrum fixed).

    Returns:
        ``(err, rel_se)``: ``err = sqrt(mean_d ||est_d - exact||^2) / ||exact||`` and the
        relative standard error of ``err`` (half that of the mean squared error).
    """
    keep = {k: v.clone() for k, v in shadow.named_buffers(recurse=False)
            if k.startswith("probe_spectrum")}
    weight = shadow.get_parameter("weight")
    sq = []
    for _ in range(draws):
        shadow._buffers.update({k: v.clone() for k, v in keep.items()})
        shadow.zero_grad(set_to_none=True)
        shadow(x).backward(g)
        assert weight.grad is not None
        sq.append(float((weight.grad - exact).square().sum()))
    shadow._buffers.update(keep)
    mse = statistics.fmean(sq)
    rel_se = statistics.stdev(sq) / (draws ** 0.5 * mse) / 2 if draws > 1 and mse > 0 else 0.0
    return mse ** 0.5 / float(exact.norm()), rel_se


def run(net: str, r_values: list[int], steps: int, evals: list[int], batch: int,
        draws: int, seed: int, divisors: list[int]) -> list[dict[str, Any]]:
    """Train ``net`` on digits and compare the estimators at the ``evals`` steps."""
    build, size = NETS[net]
    split = D.load("digits", size=size)
    torch.manual_seed(seed)
    model = build()
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs, f"{net} has no Conv2d"
    # shadows[(conv name, r)][estimator name] = drop-in copy with that estimator
    shadows: dict[tuple[str, int], dict[str, nn.Module]] = {}
    for name, m in convs:
        for r in r_values:
            shadows[(name, r)] = {}
            for est_name, est in estimators(r, divisors).items():
                # a lone conv's input looks like a held data batch: probe it anyway
                s = backprobe.convert(copy.deepcopy(m), est, exact_held_inputs=False)
                shadows[(name, r)][est_name] = s
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def keep_input(name: str) -> Any:
        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            inputs[name] = inp[0].detach()
            out.register_hook(lambda gr: grads.__setitem__(name, gr.detach()))
        return hook

    for name, m in convs:
        m.register_forward_hook(keep_input(name))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, split.x_train.shape[0], (batch,), generator=gen)
        x, y = split.x_train[idx], split.y_train[idx]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if step in evals:
            for name, m in convs:
                xin, g = inputs[name], grads[name]
                w = m.weight.detach().clone().requires_grad_()
                out = nn.functional.conv2d(xin, w, None, m.stride, m.padding, m.dilation,
                                           m.groups)
                (exact,) = torch.autograd.grad(out, w, g)
                positions = out.shape[-2] * out.shape[-1]
                for r in r_values:
                    if r >= positions:  # at least as many probes as positions: no sketch
                        H.progress(f"{net} {name}: r={r} >= {positions} positions, skipped")
                        continue
                    row: dict[str, Any] = {"network": net, "layer": name, "step": step, "r": r,
                                           "in_shape": list(xin.shape)}
                    rel_se = {}
                    for est_name, s in shadows[(name, r)].items():
                        with torch.no_grad():
                            s.get_parameter("weight").copy_(m.weight)
                        row[f"err_{est_name}"], rel_se[est_name] = errors(s, xin, g, exact,
                                                                          draws)
                    lam = shadows[(name, r)]["dct"].get_buffer(_shaping.SPECTRUM)
                    row["predicted_ratio"] = predicted_ratio(lam)
                    for est_name in shadows[(name, r)]:
                        if est_name == "plain":
                            continue
                        ratio = row[f"err_{est_name}"] / row["err_plain"]
                        row[ratio_key(est_name)] = ratio
                        row[ratio_key(est_name) + "_se"] = ratio * (
                            rel_se[est_name] ** 2 + rel_se["plain"] ** 2) ** 0.5
                    rows.append(row)
                    H.progress(f"{net} {name} step {step} r={r}: " + ", ".join(
                        f"{k[6:]} {v:.2f}x" for k, v in row.items()
                        if k.startswith("ratio_") and not k.endswith("_se"))
                        + f", predicted {row['predicted_ratio']:.2f}x")
        # the shadows see this batch after any evaluation (their spectra: data already seen)
        for name, _ in convs:
            for r in r_values:
                for s in shadows[(name, r)].values():
                    with torch.enable_grad():
                        s(inputs[name])
        opt.step()
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Worst (largest) ratio over the evaluation steps per network, r and convolution."""
    keys = sorted({k for row in rows for k in row if k.startswith("ratio_")
                   and not k.endswith("_se")}, key=lambda k: (len(k), k))
    summary = []
    for net, r, layer in dict.fromkeys((row["network"], row["r"], row["layer"]) for row in rows):
        sel = [row for row in rows
               if (row["network"], row["r"], row["layer"]) == (net, r, layer)]
        entry: dict[str, Any] = {"network": net, "r": r, "layer": layer,
                                 "in_shape": sel[0]["in_shape"]}
        for key in keys:
            if key in sel[0]:
                worst = max(sel, key=lambda row: row[key])
                entry["worst_" + key] = worst[key]
                entry["worst_" + key + "_se"] = worst[key + "_se"]
                entry["median_" + key] = statistics.median(row[key] for row in sel)
        entry["max_predicted_ratio"] = max(row["predicted_ratio"] for row in sel)
        summary.append(entry)
    return summary


def main() -> None:
    def add(p: Any) -> None:
        p.add_argument("--r", default="4,8,16", help="comma-separated probe counts")
        p.add_argument("--deflate", default="4",
                       help="comma-separated divisors d: one dct+deflate estimator each, "
                       "deflate = max(1, r // d) (default 4)")
        p.add_argument("--steps", type=int, default=300)
        p.add_argument("--evals", default="20,150,300")
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--draws", type=int, default=24)
        p.add_argument("--seed", type=int, default=0)

    args = H.arguments(__doc__, add=add)
    r_values = H.ints(args.r) or [16]
    evals = H.ints(args.evals) or []
    divisors = H.ints(args.deflate) or []
    if any(d < 1 for d in divisors) or args.draws < 2:
        raise SystemExit("bench_shaping: --deflate divisors must be >= 1 and --draws >= 2")
    rows = []
    for net in NETS:
        rows += run(net, r_values, args.steps, evals, args.batch, args.draws, args.seed,
                    divisors)
    summary = summarize(rows)
    ratio_cols = [k for k in summary[0] if k.startswith("worst_ratio") and not k.endswith("_se")]
    print(H.markdown_table(rows, ["network", "layer", "step", "r", "err_plain"]
                           + [k[6:] for k in ratio_cols] + ["predicted_ratio"]))
    print(H.markdown_table(summary, ["network", "r", "layer"] + ratio_cols
                           + ["max_predicted_ratio"]))
    path = H.write_json(args.out / f"shaping{args.suffix}.json", rows=rows, summary=summary,
                        target="ratio <= 0.6 on every convolution", draws=args.draws,
                        steps=args.steps, evals=evals, batch=args.batch, seed=args.seed,
                        deflate_divisors=divisors)
    H.progress(f"wrote {path}")


if __name__ == "__main__":
    main()
