r"""``backprobe fwi`` and ``backprobe wave-memory``: full-waveform inversion and the memory table.

::

    backprobe fwi --model layered --shape 60,120 --shots 16 --iterations 20 \\
        --imaging exact,probe:32:data --out results/fwi
    backprobe wave-memory --shape 200,200 --nt 2000 --probes 32,64 --json mem.json
    torchrun --nproc_per_node 2 -m backprobe fwi ... --ddp

``fwi`` runs one inversion per imaging strategy from the same smoothed start model and writes
``fwi.json`` (misfit and model-error curves, bytes held, gradient errors against ``Exact()``),
``models.png`` (true, start and inverted models), ``gradients.png`` (the first gradient of
every strategy side by side) and ``misfit.png``. ``wave-memory`` runs one forward per strategy
and prints the bytes each really holds next to the talk's formula.

Imaging specs (``--imaging``, comma-separated)::

    exact[:stride=K]  checkpoint:K  dft:F[:stride=K]
    probe:R[:rademacher|gaussian|orthogonal|data|hutchpp][:stride=K][:seed=S]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from backprobe.app._checks import output_dir, output_file, positive_int

__all__ = ["IMAGING_GRAMMAR", "add_parser", "parse_imaging", "run_fwi", "run_memory"]

PROBE_KINDS = ("rademacher", "gaussian", "orthogonal", "data", "hutchpp")

IMAGING_GRAMMAR = (
    "  exact[:stride=K]                 full history (every K-th step)\n"
    "  checkpoint:K                     optimal checkpointing with K snapshots (exact)\n"
    "  probe:R[:KIND][:stride=K][:seed=S]  R time probes, KIND in "
    + "|".join(PROBE_KINDS) + "\n"
    "  dft:F[:stride=K]                 on-the-fly DFT at F frequencies\n")


def parse_imaging(spec: str) -> Any:
    """An imaging strategy from its text spec (grammar in :data:`IMAGING_GRAMMAR`).

    Args:
        spec: e.g. ``"exact"``, ``"checkpoint:8"``, ``"probe:32:data:stride=4"``, ``"dft:16"``.

    Returns:
        A fresh :class:`backprobe.wave.Imaging`.

    Raises:
        ValueError: naming the part of ``spec`` that is wrong.
    """
    from backprobe.wave import DFT, Checkpoint, Exact, TimeProbe

    parts = [p.strip() for p in spec.strip().lower().split(":")]
    name, rest = parts[0], parts[1:]
    options: dict[str, int] = {}
    plain: list[str] = []
    for p in rest:
        if "=" in p:
            key, _, value = p.partition("=")
            if key not in ("stride", "seed"):
                raise ValueError(f"imaging spec {spec!r}: unknown option {key!r} "
                                 "(stride=K or seed=S)")
            if key == "stride":
                options[key] = positive_int(f"stride in {spec!r}", value)
            elif value.lstrip("-").isdigit():
                options[key] = int(value)
            else:
                raise ValueError(f"seed in {spec!r} must be an integer, got {value!r}")
        else:
            plain.append(p)
    if "seed" in options and name != "probe":
        raise ValueError(f"imaging spec {spec!r}: seed= applies to probe: only")
    if name == "exact":
        if plain:
            raise ValueError(f"imaging spec {spec!r}: exact takes only stride=K")
        return Exact(stride=options.get("stride", 1))
    if name == "checkpoint":
        if len(plain) != 1 or options:
            raise ValueError(f"imaging spec {spec!r}: expected checkpoint:K")
        return Checkpoint(positive_int(f"snapshots in {spec!r}", plain[0]))
    if name == "dft":
        if len(plain) != 1:
            raise ValueError(f"imaging spec {spec!r}: expected dft:F[:stride=K]")
        return DFT(positive_int(f"frequencies in {spec!r}", plain[0]),
                   stride=options.get("stride", 1))
    if name == "probe":
        if not 1 <= len(plain) <= 2:
            raise ValueError(f"imaging spec {spec!r}: expected probe:R[:KIND][:stride=K]")
        r = positive_int(f"r in {spec!r}", plain[0])
        kind = plain[1] if len(plain) == 2 else "rademacher"
        if kind not in PROBE_KINDS:
            raise ValueError(f"imaging spec {spec!r}: probe kind must be one of "
                             f"{'|'.join(PROBE_KINDS)}, got {kind!r}")
        return TimeProbe(r, probes=kind, stride=options.get("stride", 1),
                         seed=options.get("seed"))
    raise ValueError(f"imaging spec {spec!r}: expected exact, checkpoint, probe or dft")


def _imaging_list(text: str) -> list[str]:
    """Argparse type: comma-separated imaging specs, each checked now (before any work)."""
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise argparse.ArgumentTypeError(f"expected imaging specs, got {text!r}")
    for s in specs:
        try:
            parse_imaging(s)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return specs


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(t) for t in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 4:
        raise argparse.ArgumentTypeError(
            f"expected NZ,NX or NZ,NY,NX with every size >= 4, got {text!r}")
    return shape


def _positive(kind: type) -> Any:
    def check(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return check


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}")
    return values


def _grid_flags(p: argparse.ArgumentParser, *, shape: str, nt: int) -> None:
    p.add_argument("--shape", type=_shape, default=_shape(shape),
                   help=f"grid NZ,NX or NZ,NY,NX (default {shape})")
    p.add_argument("--dx", type=_positive(float), default=10.0, help="grid spacing (m)")
    p.add_argument("--dt", type=_positive(float), default=1e-3, help="sample interval (s)")
    p.add_argument("--nt", type=_positive(int), default=nt, help="time samples")
    p.add_argument("--freq", type=_positive(float), default=10.0, help="Ricker peak (Hz)")
    p.add_argument("--space-order", type=int, choices=(2, 4, 6, 8), default=8)
    p.add_argument("--pml-width", type=int, default=20, help="absorbing layer (cells)")
    p.add_argument("--boundary", choices=("cpml", "damping"), default="cpml",
                   help="absorbing layer kind (default cpml; damping: cheaper, reflects more)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fwi`` and ``wave-memory`` subcommands to ``subparsers``."""
    epilog: dict[str, Any] = {"epilog": "imaging specs:\n" + IMAGING_GRAMMAR,
                              "formatter_class": argparse.RawDescriptionHelpFormatter}
    p = subparsers.add_parser("fwi", help="full-waveform inversion, one run per imaging "
                              "strategy: JSON + PNGs", **epilog)
    p.add_argument("--model", default="layered",
                   help="layered | overthrust | a raw float32 velocity FILE (with --shape)")
    _grid_flags(p, shape="60,120", nt=800)
    p.add_argument("--raw-axes", default=None, help="FILE's axis order, slowest first "
                   "(zx, xz, zyx, ...; default C order)")
    p.add_argument("--raw-byteorder", choices=("little", "big", "native"), default="little")
    p.add_argument("--shots", type=_positive(int), default=8)
    p.add_argument("--imaging", type=_imaging_list, default=["exact"],
                   help="comma-separated imaging specs (one inversion each)")
    p.add_argument("--iterations", type=_positive(int), default=10)
    p.add_argument("--optimizer", choices=("spg", "lbfgsb"), default="spg")
    p.add_argument("--smooth", type=float, default=None,
                   help="start model: Gaussian smoothing sigma in cells (default NZ/8)")
    p.add_argument("--vmin", type=_positive(float), default=None,
                   help="lower velocity bound (default 0.9 x min of the true model)")
    p.add_argument("--vmax", type=_positive(float), default=None,
                   help="upper velocity bound (default 1.1 x max of the true model)")
    p.add_argument("--shots-per-batch", type=_positive(int), default=None)
    p.add_argument("--source-mute", type=float, default=0.0, help="gradient mute radius "
                   "around sources (cells)")
    p.add_argument("--depth-power", type=float, default=0.0, help="gradient depth scaling")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed (probe draws)")
    p.add_argument("--out", default="results/fwi", help="output directory")
    p.add_argument("--ddp", action="store_true", help="shard shots over torchrun processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="JSON only")
    p.set_defaults(func=run_fwi)

    m = subparsers.add_parser("wave-memory", help="the talk's memory table with measured "
                              "bytes (one forward per imaging strategy)", **epilog)
    _grid_flags(m, shape="200,200", nt=2000)
    m.add_argument("--shots", type=_positive(int), default=1)
    m.add_argument("--probes", type=_ints, default=[32, 64], help="r values")
    m.add_argument("--frequencies", type=_ints, default=[32], help="DFT frequency counts")
    m.add_argument("--snapshots", type=_ints, default=[10], help="checkpoint snapshots")
    m.add_argument("--strides", type=_ints, default=[4], help="Exact(stride=K) values")
    m.add_argument("--json", default=None, help="also write the table as JSON")
    m.set_defaults(func=run_memory)


# --------------------------------------------------------------------------------------- fwi

def _load_model(args: argparse.Namespace) -> Any:
    from backprobe.wave.io import read_raw
    from backprobe.wave.velocity_models import MODELS

    if args.model in MODELS:
        return MODELS[args.model](args.shape)
    path = Path(args.model)
    if not path.is_file():
        raise ValueError(f"--model must be one of {sorted(MODELS)} or an existing raw "
                         f"velocity file, got {args.model!r}")
    return read_raw(path, args.shape, axes=args.raw_axes, byteorder=args.raw_byteorder)


def _check_fwi_args(args: argparse.Namespace) -> None:
    if args.pml_width < 0:
        raise ValueError(f"--pml-width must be >= 0, got {args.pml_width}")
    if args.smooth is not None and args.smooth < 0:
        raise ValueError(f"--smooth must be >= 0, got {args.smooth}")
    if args.vmin is not None and args.vmax is not None and args.vmin >= args.vmax:
        raise ValueError(f"--vmin ({args.vmin}) must be below --vmax ({args.vmax})")
    if args.shots > args.shape[-1]:
        raise ValueError(f"--shots ({args.shots}) exceeds the grid's {args.shape[-1]} columns")
    if args.source_mute < 0:
        raise ValueError(f"--source-mute must be >= 0, got {args.source_mute}")
    output_dir("--out", args.out)


def _relative_error(a: Any, b: Any, rows: int) -> float:
    """``||a - b|| / ||b||`` below the top ``rows`` rows."""
    return float((a[rows:] - b[rows:]).double().norm() / b[rows:].double().norm())


def run_fwi(args: argparse.Namespace) -> int:
    """Run ``backprobe fwi``: one inversion per imaging strategy; JSON and PNGs in ``--out``."""
    _check_fwi_args(args)
    if not args.ddp:
        return _run_fwi(args)
    import torch.distributed as dist

    from backprobe.wave.distributed import init_from_env

    init_from_env("gloo")
    try:
        return _run_fwi(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_fwi(args: argparse.Namespace) -> int:
    import torch

    from backprobe.wave.distributed import rank_and_world
    from backprobe.wave.fwi import Misfit, Precondition, fwi, simulate, surface_survey
    from backprobe.wave.io import write_raw
    from backprobe.wave.velocity_models import smooth, water_rows

    rank, world = rank_and_world()
    out = Path(args.out)
    v_true = _load_model(args)
    rows = water_rows(v_true)
    sigma = args.smooth if args.smooth is not None else max(1.0, args.shape[0] / 8)
    v0 = smooth(v_true, sigma, fixed_rows=rows)
    lower = args.vmin if args.vmin is not None else 0.9 * float(v_true.min())
    upper = args.vmax if args.vmax is not None else 1.1 * float(v_true.max())
    survey = surface_survey(args.shape, dx=args.dx, dt=args.dt, nt=args.nt, freq=args.freq,
                            shots=args.shots, space_order=args.space_order,
                            pml_width=args.pml_width, boundary=args.boundary)
    torch.manual_seed(args.seed)
    observed = simulate(v_true, survey, shots_per_batch=args.shots_per_batch)
    precondition = Precondition(water_rows=rows, source_radius=args.source_mute,
                                depth_power=args.depth_power)
    show = not args.no_progress and rank == 0
    tqdm = _tqdm() if show else None

    # The first gradient of every strategy (and Exact's, the reference) at the start model.
    ref_f, ref_g = Misfit(survey, observed, shots_per_batch=args.shots_per_batch,
                          precondition=precondition)(v0)
    runs: dict[str, dict[str, Any]] = {}
    gradients: dict[str, Any] = {"exact (reference)": ref_g}
    results: dict[str, Any] = {}
    for spec in args.imaging:
        torch.manual_seed(args.seed)
        misfit = Misfit(survey, observed, imaging=parse_imaging(spec),
                        shots_per_batch=args.shots_per_batch, precondition=precondition)
        _, g = misfit(v0)
        if spec == "exact":  # the reference itself: one panel, not two
            gradients.pop("exact (reference)", None)
        gradients[spec] = g
        bar = tqdm(total=args.iterations, desc=f"fwi {spec}", unit="it") if tqdm else None

        def progress(it: int, v: Any, f: float, bar: Any = bar) -> None:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(misfit=f"{f:.3e}")

        t0 = time.perf_counter()
        res = fwi(v0, survey, observed, imaging=parse_imaging(spec), iterations=args.iterations,
                  lower=lower, upper=upper, method=args.optimizer,
                  shots_per_batch=args.shots_per_batch, precondition=precondition,
                  v_true=v_true, callback=progress)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        results[spec] = res
        runs[spec] = {
            "misfit": res.history, "model_error": res.model_errors,
            "model_error_below_water": _relative_error(res.v, v_true, rows),
            "evaluations": res.evaluations, "bytes_held_per_chunk": res.max_nbytes,
            "gradient_error_vs_exact": _relative_error(g, ref_g, rows),
            "seconds": seconds,
        }
    if rank != 0:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": args.model, "shape": list(args.shape), "dx": args.dx, "dt": args.dt,
        "nt": args.nt, "freq": args.freq, "shots": args.shots, "iterations": args.iterations,
        "optimizer": args.optimizer, "smooth_sigma": sigma, "water_rows": rows,
        "bounds": [lower, upper], "space_order": args.space_order, "pml_width": args.pml_width,
        "boundary": args.boundary,
        "world_size": world, "start_model_error": _relative_error(v0, v_true, rows),
        "start_misfit": ref_f, "runs": runs,
    }
    (out / "fwi.json").write_text(json.dumps(summary, indent=2))
    for spec, res in results.items():
        write_raw(out / f"v_{_safe(spec)}.bin", res.v)
    print(f"{'imaging':<24}{'misfit start->end':>24}{'model err':>11}{'grad err':>10}"
          f"{'MB held':>10}{'s':>8}")
    for spec, r in runs.items():
        print(f"{spec:<24}{r['misfit'][0]:>11.4e} ->{r['misfit'][-1]:>10.4e}"
              f"{r['model_error'][-1]:>11.4f}{r['gradient_error_vs_exact']:>10.4f}"
              f"{r['bytes_held_per_chunk'] / 1e6:>10.2f}{r['seconds']:>8.1f}")
    if not args.no_plots:
        _plots(out, v_true, v0, results, gradients, rows)
    print(f"wrote {out / 'fwi.json'}" + ("" if args.no_plots else " and PNGs"))
    return 0


def _safe(spec: str) -> str:
    return spec.replace(":", "_").replace("=", "")


def _tqdm() -> Any:
    from tqdm.auto import tqdm

    return tqdm


def _plots(out: Path, v_true: Any, v0: Any, results: dict[str, Any],
           gradients: dict[str, Any], rows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def section(v: Any) -> Any:
        return (v[:, v.shape[1] // 2] if v.dim() == 3 else v).detach().cpu().numpy()

    vmin, vmax = float(v_true.min()), float(v_true.max())
    panels = [("true", v_true), ("start", v0)] + [(f"inverted: {s}", r.v)
                                                  for s, r in results.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, v) in zip(axes[0], panels):
        im = ax.imshow(section(v), vmin=vmin, vmax=vmax, cmap="jet", aspect="auto")
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="m/s", shrink=0.8)
    fig.savefig(out / "models.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(gradients), figsize=(4.2 * len(gradients), 3.2),
                             squeeze=False)
    ref = next(iter(gradients.values()))
    clip = float(ref[rows:].abs().max()) or 1.0
    for ax, (title, g) in zip(axes[0], gradients.items()):
        ax.imshow(section(g), vmin=-clip, vmax=clip, cmap="seismic", aspect="auto")
        ax.set_title(f"gradient: {title}", fontsize=9)
    fig.savefig(out / "gradients.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for spec, r in results.items():
        a.semilogy(r.history, marker=".", label=spec)
        if r.model_errors:
            b.plot(r.model_errors, marker=".", label=spec)
    a.set(xlabel="iteration", ylabel="misfit (relative to data energy)")
    b.set(xlabel="iteration", ylabel="||v - v_true|| / ||v_true||")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "misfit.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ wave-memory

def memory_table(args: argparse.Namespace) -> dict[str, Any]:
    """Measured bytes of each imaging strategy after one forward, next to the formulas.

    Args:
        args: the ``wave-memory`` flags.

    Returns:
        ``{"grid": ..., "rows": [...]}``; each row has the strategy, its measured bytes,
        the talk's formula and its value for the interior grid, and the ratio.
    """
    import torch

    from backprobe.wave import DFT, Checkpoint, Exact, TimeProbe, model, ricker
    from backprobe.wave.velocity_models import layered

    shape = tuple(args.shape)
    n = math.prod(shape)
    nt, shots = args.nt, args.shots
    v = layered(shape).requires_grad_(True)
    wavelet = ricker(args.freq, nt, args.dt)
    nx = shape[-1]
    mid = [(s - 1) / 2 for s in shape[1:-1]]
    src = torch.tensor([[1.0, *mid, (nx - 1) * (i + 1) / (shots + 1)] for i in range(shots)])
    rec = torch.tensor([[1.0, *mid, float(x)] for x in range(nx)])
    observed = torch.zeros(shots, nx, nt)
    with torch.no_grad():
        observed = model(v.detach(), args.dx, args.dt, wavelet, src, rec,
                         space_order=args.space_order, pml_width=args.pml_width,
                         boundary=args.boundary)
    word = 4  # float32
    cases: list[tuple[str, Any, str, float]] = [("FWI: Exact()", Exact(), "N nt", n * nt)]
    for k in args.strides:
        cases.append((f"strided: Exact(stride={k})", Exact(stride=k), "N nt / k", n * nt / k))
    for f in args.frequencies:
        cases.append((f"DFT({f})", DFT(f), "2 r N", 2 * f * n))
    for r in args.probes:
        cases.append((f"probing: TimeProbe({r})", TimeProbe(r, seed=0), "r N", r * n))
        cases.append((f"probing: TimeProbe({r}, 'data')", TimeProbe(r, "data", seed=0),
                      "r N", r * n))
    for s in args.snapshots:
        cases.append((f"checkpointing: Checkpoint({s})", Checkpoint(s), "O(10) N -> 2 s N",
                      2 * s * n))
    rows = []
    info = None
    for name, imaging, formula, numbers in cases:
        d = model(v, args.dx, args.dt, wavelet, src, rec, imaging=imaging,
                  space_order=args.space_order, pml_width=args.pml_width, observed=observed,
                  boundary=args.boundary)
        measured = int(imaging.nbytes())
        info = imaging.last_info
        del d
        formula_bytes = numbers * word * shots
        rows.append({"strategy": name, "formula": formula,
                     "formula_bytes": int(formula_bytes), "measured_bytes": measured,
                     "measured_over_formula": measured / formula_bytes})
    exact = rows[0]["measured_bytes"]
    for r in rows:
        r["fewer_than_exact"] = exact / r["measured_bytes"] if r["measured_bytes"] else math.inf
    domain = list(info.domain_shape) if info is not None else None
    return {"shape": list(shape), "nt": nt, "shots": shots, "dx": args.dx, "dt": args.dt,
            "space_order": args.space_order, "pml_width": args.pml_width, "boundary": args.boundary,
            "interior_cells": n, "domain_shape": domain,
            "domain_cells": math.prod(domain) if domain else None,
            "substeps": info.substeps if info is not None else None,
            "bytes_per_number": word, "rows": rows,
            "boundary_reconstruction": "not implemented (formula nt N^(2/3) numbers; "
            "needs a reversible medium)"}


def _explain(table: dict[str, Any], row: dict[str, Any]) -> str:
    """Why a measured figure differs from the formula, in fields (grid-sized arrays) per shot.

    The formula counts fields of the interior grid; the strategy holds fields of the whole
    computational domain (interior plus absorbing layer), and possibly extra ones (block
    buffers, rounding of kept steps, two fields per checkpoint).
    """
    if abs(row["measured_over_formula"] - 1) < 0.005:
        return "matches"
    per_field = table["bytes_per_number"] * table["shots"]
    held = row["measured_bytes"] / (per_field * table["domain_cells"])
    counted = row["formula_bytes"] / (per_field * table["interior_cells"])
    parts = []
    if table["domain_cells"] != table["interior_cells"]:
        parts.append(f"domain fields ({table['domain_cells'] / table['interior_cells']:.3f}x "
                     "cells: absorbing layer)")
    if abs(held - counted) > 1e-6:
        parts.append(f"{held:.1f} fields held vs {counted:.1f} counted")
    return "; ".join(parts)


def run_memory(args: argparse.Namespace) -> int:
    """Run ``backprobe wave-memory``: print the measured table (and write its JSON)."""
    if args.pml_width < 0:
        raise ValueError(f"--pml-width must be >= 0, got {args.pml_width}")
    output_file("--json", args.json)
    table = memory_table(args)
    print(f"grid {table['shape']} ({table['interior_cells']} cells, domain "
          f"{table['domain_shape']} with the absorbing layer), nt={table['nt']}, "
          f"{table['shots']} shot(s), float32, substeps={table['substeps']}")
    print(f"{'strategy':<36}{'formula':>18}{'formula MB':>12}{'measured MB':>13}"
          f"{'x fewer':>9}  measured vs formula")
    for r in table["rows"]:
        r["why"] = _explain(table, r)
        print(f"{r['strategy']:<36}{r['formula']:>18}{r['formula_bytes'] / 1e6:>12.2f}"
              f"{r['measured_bytes'] / 1e6:>13.2f}{r['fewer_than_exact']:>9.1f}  {r['why']}")
    print(f"{'boundary reconstruction':<36}{'nt N^(2/3)':>18}  not implemented")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(table, indent=2))
        print(f"wrote {args.json}")
    return 0
