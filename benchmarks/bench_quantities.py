"""Overhead of per-example quantities and curvature over a plain backward pass.

Side by side: backprobe.quantities, BackPACK 1.7.1, Opacus (per-sample gradients) and
torch.func (vmap of grad). One step = forward + loss + backward on a fixed batch.

* time: each method's step is interleaved with a plain step; the reported overhead is the
  median of the per-pair ratios (robust to a shared, noisy machine), next to medians of the
  absolute times;
* memory: a fresh process per (model, method) runs two steps and reports its peak resident
  set size (``VmHWM`` after resetting it once the model is built, since Linux carries
  ``ru_maxrss`` over from the parent); the extra over the plain step's process is shown.

Peers are optional (``pip install --no-deps backpack-for-pytorch==1.7.1 unfoldNd einops
opacus opt-einsum``); a missing or failing peer is recorded as such.

    python benchmarks/bench_quantities.py                 # 3C3D and ALL-CNN-C
    python benchmarks/bench_quantities.py --models c3d --reps 5
    python benchmarks/bench_quantities.py --check-backpack   # values equal BackPACK's

Writes <out>/quantities_<model>.json (``--out`` default: the git-ignored results/bench;
``--out benchmarks/results`` for the README's figures).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from _harness import arguments, timed, write_json
from torch import nn

from backprobe import quantities as Q
from backprobe.app import models

CONFIG = {  # name: (builder args, batch)
    "c3d": (("c3d", 3, 10, 32), 64),
    "allcnnc": (("allcnnc", 3, 100, 32), 64),
}
OURS = {
    "BatchGrad": lambda: [Q.BatchGrad()],
    "BatchL2Grad": lambda: [Q.BatchL2Grad()],
    "FirstOrder4": lambda: [Q.BatchGrad(), Q.Variance(), Q.SumGradSquared(), Q.BatchL2Grad()],
    "DiagGGNMC": lambda: [Q.DiagGGNMC()],
    "KFAC": lambda: [Q.KFAC()],
    "DiagGGNExact": lambda: [Q.DiagGGNExact()],
}
SKIP = {"allcnnc": {"DiagGGNExact"}}  # 100 classes: 100 backpropagated columns, minutes/step


def _backpack_exts(name: str) -> list:
    from backpack import extensions as E

    return {
        "BatchGrad": lambda: [E.BatchGrad()],
        "BatchL2Grad": lambda: [E.BatchL2Grad()],
        "FirstOrder4": lambda: [E.BatchGrad(), E.Variance(), E.SumGradSquared(), E.BatchL2Grad()],
        "DiagGGNMC": lambda: [E.DiagGGNMC()],
        "KFAC": lambda: [E.KFAC()],
        "DiagGGNExact": lambda: [E.DiagGGNExact()],
    }[name]()


def make_step(method: str, model_name: str):
    """Return a zero-argument step function for ``method`` (a fresh copy of the model)."""
    args, batch = CONFIG[model_name]
    torch.manual_seed(0)
    model = models.build(*args)
    model.eval()  # dropout off: per-example quantities and torch.func need a deterministic net
    x = torch.randn(batch, args[1], args[3], args[3])
    y = torch.randint(0, args[2], (batch,))
    loss_fn = nn.CrossEntropyLoss()

    if method == "plain":
        def step():
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
        return step
    kind, _, qname = method.partition(":")
    if kind == "ours":
        base, reuse = qname.removesuffix("+reuse"), qname.endswith("+reuse")

        def step():
            model.zero_grad(set_to_none=True)
            with Q.record(model, *OURS[base](), loss_fn=loss_fn, reuse_buffers=reuse):
                loss_fn(model(x), y).backward()
        return step
    if kind == "backpack":
        from backpack import backpack, extend

        bmodel, bloss = extend(copy.deepcopy(model)), extend(nn.CrossEntropyLoss())

        def step():
            bmodel.zero_grad(set_to_none=True)
            with backpack(*_backpack_exts(qname)):
                bloss(bmodel(x), y).backward()
        return step
    if kind == "opacus":
        from opacus import GradSampleModule

        gsm = GradSampleModule(copy.deepcopy(model), loss_reduction="mean")
        gsm.train()  # Opacus records activations only in train mode
        for m in gsm.modules():  # ... but keep dropout off, as for everyone else
            if isinstance(m, nn.Dropout):
                m.p = 0.0

        def step():
            gsm.zero_grad(set_to_none=True)
            loss_fn(gsm(x), y).backward()
        return step
    if kind == "torchfunc":
        from torch.func import functional_call, grad, vmap

        params = {k: p.detach() for k, p in model.named_parameters()}

        def one(p, xn, yn):
            out = functional_call(model, p, (xn.unsqueeze(0),))
            return nn.functional.cross_entropy(out, yn.unsqueeze(0)) / batch

        per_sample = vmap(grad(one), in_dims=(None, 0, 0))

        def step():
            per_sample(params, x, y)
        return step
    raise ValueError(method)


def methods_for(model_name: str) -> list[str]:
    out = []
    for q in OURS:
        if q in SKIP.get(model_name, ()):
            continue
        out += [f"ours:{q}", f"backpack:{q}"]
    return out + ["ours:BatchGrad+reuse", "ours:FirstOrder4+reuse", "opacus:BatchGrad",
                  "torchfunc:BatchGrad"]


def time_model(model_name: str, reps: int) -> dict:
    plain = make_step("plain", model_name)
    steps, errors = {}, {}
    for m in methods_for(model_name):
        try:
            steps[m] = make_step(m, model_name)
            steps[m]()  # warm-up, and a check that the peer runs at all
        except Exception as e:  # noqa: BLE001 - a failing peer is a result
            errors[m] = f"{type(e).__name__}: {e}"[:300]
            steps.pop(m, None)
    plain()
    ratios: dict[str, list[float]] = {m: [] for m in steps}
    times: dict[str, list[float]] = {m: [] for m in steps}
    base: list[float] = []
    for r in range(reps):
        for m, step in steps.items():
            tp = timed(plain)
            tm = timed(step)
            base.append(tp)
            times[m].append(tm)
            ratios[m].append(tm / tp)
        print(f"  {model_name}: rep {r + 1}/{reps} done", file=sys.stderr, flush=True)
    return {
        "plain_s": statistics.median(base),
        "methods": {
            m: {"ratio": statistics.median(ratios[m]), "ratios": ratios[m],
                "time_s": statistics.median(times[m])}
            for m in steps
        },
        "errors": errors,
    }


def _peak_rss_mb() -> float:
    """Peak resident set size since the last reset (``VmHWM``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(model_name: str, method: str) -> None:
    step = make_step(method, model_name)
    # Linux keeps ru_maxrss across fork/exec (the parent's peak would leak in): reset the
    # high-water mark instead, after imports and model construction.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    step()
    step()
    print(json.dumps({"maxrss_mb": _peak_rss_mb()}))


def memory_model(model_name: str) -> dict:
    out = {}
    for m in ["plain", *methods_for(model_name)]:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", model_name, m],
            capture_output=True, text=True, timeout=1800,
        )
        try:
            out[m] = json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_mb"]
        except (IndexError, ValueError, KeyError):
            out[m] = None
    return out


def table(model_name: str, res: dict) -> str:
    lines = [
        f"### {model_name} (batch {CONFIG[model_name][1]}, plain step "
        f"{res['plain_s'] * 1000:.0f} ms, peak RSS {res['memory'].get('plain') or 0:.0f} MB)",
        "",
        "| quantity | backprobe | BackPACK 1.7.1 | extra memory (MB) backprobe / BackPACK |",
        "|---|---|---|---|",
    ]
    mem, meth = res["memory"], res["methods"]
    base_mem = mem.get("plain") or 0.0

    def cell(m: str) -> str:
        if m in meth:
            return f"{meth[m]['ratio']:.2f}x ({meth[m]['time_s'] * 1000:.0f} ms)"
        return "failed" if m in res["errors"] else "-"

    def extra(m: str) -> str:
        return "-" if mem.get(m) is None else f"{mem[m] - base_mem:.0f}"

    for q in OURS:
        if q in SKIP.get(model_name, ()):
            continue
        lines.append(f"| {q} | {cell('ours:' + q)} | {cell('backpack:' + q)} | "
                     f"{extra('ours:' + q)} / {extra('backpack:' + q)} |")
    for m, label in [("ours:BatchGrad+reuse", "BatchGrad, reuse_buffers=True"),
                     ("ours:FirstOrder4+reuse", "FirstOrder4, reuse_buffers=True"),
                     ("opacus:BatchGrad", "Opacus per-sample grads"),
                     ("torchfunc:BatchGrad", "torch.func vmap(grad)")]:
        lines.append(f"| {label} | {cell(m)} | | {extra(m)} |")
    return "\n".join(lines)


def check_against_backpack() -> bool:
    """Compare every shared quantity with BackPACK 1.7.1 on a small conv net (float64)."""
    from backpack import backpack, extend
    from backpack import extensions as E

    torch.manual_seed(0)
    pairs = [
        ("grad_batch", E.BatchGrad, Q.BatchGrad), ("variance", E.Variance, Q.Variance),
        ("sum_grad_squared", E.SumGradSquared, Q.SumGradSquared),
        ("batch_l2", E.BatchL2Grad, Q.BatchL2Grad),
        ("diag_ggn_exact", E.DiagGGNExact, Q.DiagGGNExact),
        ("diag_ggn_exact_batch", E.BatchDiagGGNExact, Q.BatchDiagGGNExact),
        ("sqrt_ggn_exact", E.SqrtGGNExact, Q.SqrtGGNExact), ("kflr", E.KFLR, Q.KFLR),
        ("diag_h", E.DiagHessian, Q.DiagHessian),
    ]
    x = torch.randn(6, 2, 6, 6, dtype=torch.float64)
    all_ok = True
    for loss_cls, y in [(nn.CrossEntropyLoss, torch.randint(0, 3, (6,))),
                        (nn.MSELoss, torch.randn(6, 3, dtype=torch.float64))]:
        for red in ("mean", "sum"):
            ours = nn.Sequential(
                nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.ReLU(),
                nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3),
            ).double()
            theirs = extend(copy.deepcopy(ours))
            lf, lf_b = loss_cls(reduction=red), extend(loss_cls(reduction=red))
            for field, ext, qty in pairs:
                theirs.zero_grad()
                with backpack(ext()):
                    lf_b(theirs(x), y).backward()
                ours.zero_grad()
                with Q.record(ours, qty(), loss_fn=lf):
                    lf(ours(x), y).backward()
                ok = True
                for p1, p2 in zip(ours.parameters(), theirs.parameters()):
                    a, b = getattr(p1, field), getattr(p2, field)
                    a, b = (a, b) if isinstance(a, list) else ([a], [b])
                    ok &= len(a) == len(b) and all(
                        u.shape == v.shape and torch.allclose(u, v) for u, v in zip(a, b)
                    )
                all_ok &= ok
                print(f"{loss_cls.__name__:>16} {red:>4} {field:<22} {'OK' if ok else 'MISMATCH'}")
    return all_ok


def main() -> None:
    def add(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--models", default="c3d,allcnnc")
        ap.add_argument("--reps", type=int, default=5)
        ap.add_argument("--no-memory", action="store_true")
        ap.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"))
        ap.add_argument("--check-backpack", action="store_true",
                        help="only compare the values with BackPACK 1.7.1")

    a = arguments(__doc__, add=add)
    if a.check_backpack:
        sys.exit(0 if check_against_backpack() else 1)
    if a.child:
        child(*a.child)
        return
    for name in a.models.split(","):
        reps = a.reps if name == "c3d" else max(2, a.reps // 2)
        memory = {} if a.no_memory else memory_model(name)  # before timing: small parent
        res = time_model(name, reps)
        res["memory"] = memory
        res["note"] = "shared machine (other jobs running): timings are noisy"
        res["markdown"] = table(name, res)
        write_json(a.out / f"quantities_{name}{a.suffix}.json", **res)
        print(res["markdown"], flush=True)
        if res["errors"]:
            print("errors:", json.dumps(res["errors"], indent=2))


if __name__ == "__main__":
    main()
