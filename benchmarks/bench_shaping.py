"""Spectrally shaped probes vs plain probes at equal stored numbers, on real activations.

Trains the MNIST CNN and 3C3D on the digits (upsampled to 28x28 and 32x32, one channel)
with exact SGD. Every convolution has a shadow drop-in copy with ``Probe(r, shaping="dct")``
that sees each training batch (so its running spectrum comes from data already seen). At
a few points during training, for each convolution, the layer's input ``x`` and output
gradient ``g`` of the current batch are captured and ``--draws`` estimates are formed with
each estimator, from the *same* spectrum (restored before every draw: the current batch
never enters the spectrum it is sketched with):

* ``plain``: ``Probe(r)``; ``dct``: ``Probe(r, shaping="dct")``;
  ``dct+deflate``: ``Probe(r, shaping="dct", deflate=r // 4)`` (all keep ``N * C * r``);
* error: ``sqrt(mean ||estimate - exact||_F^2) / ||exact||_F``; ratio = shaped / plain;
* predicted ratio under an isotropic output gradient,
  ``sqrt((sum sqrt(lambda))^2 / (P sum lambda))`` averaged over channels.

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


def estimators(r: int) -> dict[str, Probe]:
    """The estimators compared at ``r`` stored numbers per (example, channel)."""
    return {"plain": Probe(r, seed=0), "dct": Probe(r, shaping="dct", seed=0),
            "dct+deflate": Probe(r, shaping="dct", deflate=max(1, r // 4), seed=0)}


def predicted_ratio(lam: torch.Tensor) -> float:
    """``sqrt((sum sqrt(lambda))^2 / (P sum lambda))`` per channel, averaged."""
    lam = lam.flatten(1).double().clamp_min(0)
    p = lam.shape[1]
    ratio = lam.sqrt().sum(1).square() / (p * lam.sum(1)).clamp_min(1e-30)
    return float(ratio.sqrt().mean())


def errors(shadow: nn.Module, x: torch.Tensor, g: torch.Tensor, exact: torch.Tensor,
           draws: int) -> float:
    """Relative RMS error of ``shadow``'s estimator over ``draws`` draws (spectrum fixed)."""
    keep = {k: v.clone() for k, v in shadow._buffers.items() if k.startswith("probe_spectrum")}
    sq = 0.0
    for _ in range(draws):
        shadow._buffers.update({k: v.clone() for k, v in keep.items()})
        shadow.zero_grad(set_to_none=True)
        shadow(x).backward(g)
        sq += float((shadow.weight.grad - exact).square().sum())
    shadow._buffers.update(keep)
    return (sq / draws) ** 0.5 / float(exact.norm())


def run(net: str, r_values: list[int], steps: int, evals: list[int], batch: int,
        draws: int, seed: int) -> list[dict[str, Any]]:
    """Train ``net`` on digits and compare the estimators at the ``evals`` steps."""
    build, size = NETS[net]
    split = D.load("digits", size=size)
    torch.manual_seed(seed)
    model = build()
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    # shadows[(conv name, r)][estimator name] = drop-in copy with that estimator
    shadows: dict[tuple[str, int], dict[str, nn.Module]] = {}
    for name, m in convs:
        for r in r_values:
            shadows[(name, r)] = {}
            for est_name, est in estimators(r).items():
                s = backprobe.convert(copy.deepcopy(m), est)
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
                for r in r_values:
                    row: dict[str, Any] = {"network": net, "layer": name, "step": step, "r": r,
                                           "in_shape": list(xin.shape)}
                    for est_name, s in shadows[(name, r)].items():
                        s.weight.data.copy_(m.weight.data)
                        row[f"err_{est_name}"] = errors(s, xin, g, exact, draws)
                    lam = shadows[(name, r)]["dct"]._buffers[_shaping.SPECTRUM]
                    row["predicted_ratio"] = predicted_ratio(lam)
                    row["ratio_dct"] = row["err_dct"] / row["err_plain"]
                    row["ratio_dct_deflate"] = row["err_dct+deflate"] / row["err_plain"]
                    rows.append(row)
                    H.progress(f"{net} {name} step {step} r={r}: dct {row['ratio_dct']:.2f}x, "
                               f"+deflate {row['ratio_dct_deflate']:.2f}x, predicted "
                               f"{row['predicted_ratio']:.2f}x")
        # the shadows see this batch after any evaluation (their spectra: data already seen)
        for name, _ in convs:
            for r in r_values:
                for s in shadows[(name, r)].values():
                    with torch.enable_grad():
                        s(inputs[name])
        opt.step()
    return rows


def main() -> None:
    def add(p: Any) -> None:
        p.add_argument("--r", default="4,8,16", help="comma-separated probe counts")
        p.add_argument("--steps", type=int, default=300)
        p.add_argument("--evals", default="20,150,300")
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--draws", type=int, default=24)
        p.add_argument("--seed", type=int, default=0)

    args = H.arguments(__doc__, add=add)
    r_values = H.ints(args.r) or [16]
    evals = H.ints(args.evals) or []
    rows = []
    for net in NETS:
        rows += run(net, r_values, args.steps, evals, args.batch, args.draws, args.seed)
    summary = []
    for net in NETS:
        for r in r_values:
            sel = [row for row in rows if row["network"] == net and row["r"] == r]
            summary.append({
                "network": net, "r": r,
                "worst_ratio_dct": max(s["ratio_dct"] for s in sel),
                "median_ratio_dct": statistics.median(s["ratio_dct"] for s in sel),
                "worst_ratio_dct_deflate": max(s["ratio_dct_deflate"] for s in sel),
                "median_ratio_dct_deflate": statistics.median(s["ratio_dct_deflate"] for s in sel),
            })
    print(H.markdown_table(rows, ["network", "layer", "step", "r", "err_plain", "ratio_dct",
                                  "ratio_dct_deflate", "predicted_ratio"]))
    print(H.markdown_table(summary, list(summary[0])))
    path = H.write_json(args.out / f"shaping{args.suffix}.json", rows=rows, summary=summary,
                        target="ratio <= 0.6 on every convolution", draws=args.draws)
    H.progress(f"wrote {path}")


if __name__ == "__main__":
    main()
