"""``backprobe spectrum``: PyHessian-style curvature spectrum of a model on a data set.

Over the whole training split (or its first ``--examples``): the top eigenvalues of the
Hessian (or GGN) by Lanczos, its trace (exact from backprobe's exact diagonal for
piecewise-linear networks, else with a standard error by ``method="auto"`` of
:func:`backprobe.linalg.trace`, stopped adaptively at ``--trace-rtol``), and the
eigenvalue density by stochastic Lanczos quadrature, written as JSON and a PNG.

Example::

    backprobe spectrum --model mnist_cnn --data digits --image-size 8 --out results/spectrum
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backprobe import linalg
from backprobe.app._args import add_common
from backprobe.app._checks import output_dir, positive
from backprobe.app.report import echo, pyplot, save_figure, write_json

__all__ = ["SpectrumResult", "add_parser", "run", "spectrum"]

CURVATURES = {"hessian": linalg.HessianOperator, "ggn": linalg.GGNOperator}

#: The flags that take a count >= 1, as ``(flag, default, help)``; :func:`run` checks them.
_COUNT_FLAGS: tuple[tuple[str, int | None, str], ...] = (
    ("--examples", None, "first N training examples (default: all)"),
    ("--batch-size", 512, "examples per batch of the products"),
    ("--top-k", 1, "eigenvalues to find"),
    ("--trace-matvecs", 20, "first block of the trace estimate (even)"),
    ("--max-trace-matvecs", 400, "budget of the trace estimate"),
    ("--slq-steps", 20, "Lanczos steps per density probe"),
)


@dataclass
class SpectrumResult:
    """What :func:`spectrum` measured (times in seconds)."""

    model: str
    data: str
    curvature: str
    examples: int
    params: int
    top_eigenvalues: list[float]
    eigen_residuals: list[float]
    eigen_matvecs: int
    eigen_s: float
    trace: float
    trace_std_error: float
    trace_method: str
    trace_matvecs: int
    trace_s: float
    density_grid: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)
    slq_matvecs: int = 0
    slq_s: float = 0.0
    threads: int = 1
    cpu_s: float = 0.0
    wall_s: float = 0.0
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Plain-text lines for the terminal."""
        top = ", ".join(f"{v:.5g}" for v in self.top_eigenvalues)
        rel = self.trace_std_error / abs(self.trace) if self.trace else math.nan
        return "\n".join([
            f"{self.curvature} of {self.model} on {self.data} ({self.examples} examples, "
            f"{self.params} parameters, {self.threads} threads)",
            f"top eigenvalues: {top}  ({self.eigen_matvecs} matvecs, {self.eigen_s:.1f} s)",
            f"trace: {self.trace:.5g} +- {self.trace_std_error:.2g} ({100 * rel:.1f}%, "
            f"{self.trace_method}, {self.trace_matvecs} matvecs, {self.trace_s:.1f} s)",
            f"density: {self.slq_matvecs} matvecs, {self.slq_s:.1f} s",
            f"total: {self.wall_s:.1f} s wall, {self.cpu_s:.1f} s CPU (all threads)",
        ])


def _load(model_name: str, data: str, checkpoint: str | None, data_dir: str | None,
          image_size: int | None, examples: int | None, seed: int
          ) -> tuple[nn.Module, Any, Any]:
    from backprobe.app.training import build_model, load_data

    split = load_data(data, data_dir=data_dir, image_size=image_size)
    with torch.random.fork_rng():  # the initial weights depend on seed only
        torch.manual_seed(seed)
        model = build_model(model_name, split)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    x, y = split.x_train, split.y_train
    if examples is not None:
        if examples < 1:
            raise ValueError(f"--examples must be >= 1, got {examples}")
        x, y = x[:examples], y[:examples]
    return model.eval(), x, y


def exact_trace(model: nn.Module, batches: list[Any], curvature: str) -> float | None:
    """The exact trace from backprobe's exact diagonal quantities, or ``None``.

    For a piecewise-linear network (ReLU, max pooling, affine layers) the Hessian's
    diagonal equals the GGN's, which :class:`backprobe.DiagHessian` /
    :class:`backprobe.DiagGGNExact` form exactly from backpropagated loss-Hessian columns
    (one pass with ``C`` columns per batch). ``None`` when the model is not supported
    (:class:`backprobe.DiagHessian` raises a ``ValueError``).
    """
    import backprobe

    quantity = backprobe.DiagHessian() if curvature == "hessian" else backprobe.DiagGGNExact()
    lf = nn.CrossEntropyLoss()
    total, n = 0.0, sum(len(y) for _, y in batches)
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for x, y in batches:
            with backprobe.record(model, quantity, loss_fn=lf):
                loss = lf(model(x), y)
                loss.backward()
            total += len(y) / n * sum(float(getattr(p, quantity.savefield).sum()) for p in params)
            model.zero_grad(set_to_none=True)
    except ValueError:
        return None
    return total


def spectrum(
    model_name: str = "mnist_cnn", data: str = "digits", *, checkpoint: str | None = None,
    curvature: str = "hessian", examples: int | None = None, batch_size: int = 512,
    top_k: int = 1, eig_tol: float = 1e-2, trace_method: str = "exact-or-auto",
    trace_matvecs: int = 20, trace_rtol: float = 0.025,
    max_trace_matvecs: int = 400, slq_probes: int = 2, slq_steps: int = 20, seed: int = 0,
    out: str | None = "results/spectrum", data_dir: str | None = None,
    image_size: int | None = None, progress: bool = True,
) -> SpectrumResult:
    """Top eigenvalues, trace and density of a model's curvature on a data set.

    Args:
        model_name: model (:mod:`backprobe.app.models`).
        data: data set name; the training split is used.
        checkpoint: a ``state_dict`` file (``backprobe train --save``) to load first.
        curvature: ``"hessian"`` or ``"ggn"``.
        examples: use the first ``examples`` training examples (default: all).
        batch_size: examples per batch of the products.
        top_k: eigenvalues to find (Lanczos, largest algebraic).
        eig_tol: Lanczos residual tolerance relative to the top eigenvalue.
        trace_method: ``"exact-or-auto"`` (default): the exact trace from
            :func:`exact_trace` when the network is piecewise linear, else
            ``trace(method="auto")``; or any method of :func:`backprobe.linalg.trace`
            (stochastic, with a standard error).
        trace_matvecs: first block of the trace estimate (even).
        trace_rtol: stop once the trace's standard error is this fraction of it.
        max_trace_matvecs: budget of the trace estimate.
        slq_probes: probes of the density (0: skip it).
        slq_steps: Lanczos steps per density probe.
        seed: seed of every random draw (and of the initial weights without checkpoint).
        out: folder of ``spectrum.json`` and ``density.png`` (``None``: write nothing).
        data_dir: directory of the data files.
        image_size: resize images (default: the app's, 28 for digits).
        progress: print a line as each part finishes.

    Returns:
        :class:`SpectrumResult`.

    Raises:
        ValueError: unknown curvature, bad sizes.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {list(CURVATURES)}, got {curvature!r}")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    model, x, y = _load(model_name, data, checkpoint, data_dir, image_size, examples, seed)
    batches = list(zip(x.split(batch_size), y.split(batch_size)))
    op = CURVATURES[curvature](model, nn.CrossEntropyLoss(), batches)

    t0 = time.perf_counter()
    eig = linalg.top_eigenpairs(op, top_k, tol=eig_tol, generator=seed)
    t_eig = time.perf_counter() - t0
    if progress:
        echo(f"top eigenvalues {eig.values.tolist()} ({eig.num_matvecs} matvecs, {t_eig:.1f} s)")
    t0 = time.perf_counter()
    exact = exact_trace(model, batches, curvature) if trace_method == "exact-or-auto" else None
    if exact is not None:
        name = "DiagHessian" if curvature == "hessian" else "DiagGGNExact"
        tr = linalg.Estimate(exact, 0.0, 0, f"exact (backprobe.{name})")
    else:
        method = "auto" if trace_method == "exact-or-auto" else trace_method
        tr = linalg.trace(op, trace_matvecs, method=method, generator=seed + 1, rtol=trace_rtol,
                          max_matvecs=max_trace_matvecs)
    t_tr = time.perf_counter() - t0
    if progress:
        echo(f"trace {tr.value:.5g} +- {tr.std_error:.2g} ({tr.num_matvecs} matvecs, "
             f"{t_tr:.1f} s)")
    res = SpectrumResult(
        model_name, data, curvature, len(y), op.shape[0], eig.values.tolist(),
        eig.residuals.tolist(), eig.num_matvecs, t_eig, tr.value, tr.std_error, tr.method,
        tr.num_matvecs, t_tr, threads=torch.get_num_threads())
    if slq_probes > 0:
        t0 = time.perf_counter()
        sd = linalg.spectral_density(op, slq_probes, min(slq_steps, op.shape[0]),
                                     generator=seed + 2)
        res.slq_s = time.perf_counter() - t0
        res.slq_matvecs = sd.num_matvecs
        lo, hi = float(sd.nodes.min()), float(sd.nodes.max())
        pad = 0.05 * (hi - lo) + 1e-12
        grid = torch.linspace(lo - pad, hi + pad, 1000, dtype=torch.float64)
        res.density_grid = grid.tolist()
        res.density = sd.density(grid).tolist()
        if progress:
            echo(f"density ({sd.num_matvecs} matvecs, {res.slq_s:.1f} s)")
    res.wall_s, res.cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    if out is not None:
        res.files = [str(p) for p in _write(res, Path(out))]
    return res


def _write(res: SpectrumResult, out: Path) -> list[Path]:
    files = [write_json(out / "spectrum.json", asdict(res))]
    if res.density:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        dens = torch.tensor(res.density).clamp_min(1e-12)
        ax.semilogy(res.density_grid, dens.tolist(), lw=1)
        for v in res.top_eigenvalues:
            ax.axvline(v, color="C3", lw=0.8, ls="--")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (SLQ, smoothed)")
        rel = res.trace_std_error / abs(res.trace) if res.trace else math.nan
        ax.set_title(f"{res.curvature} of {res.model} on {res.data}: trace "
                     f"{res.trace:.4g} ({100 * rel:.1f}%)", fontsize=9)
        fig.tight_layout()
        files.append(save_figure(fig, out / "density.png"))
    return files


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``spectrum`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("spectrum", help="top eigenvalues, trace and spectral density of "
                              "the Hessian/GGN (PyHessian-style)")
    add_common(p)
    p.add_argument("--checkpoint", default=None, help="state_dict file to load")
    p.add_argument("--curvature", choices=sorted(CURVATURES), default="hessian")
    for flag, default, help_text in _COUNT_FLAGS:
        p.add_argument(flag, type=int, default=default, help=help_text)
    p.add_argument("--eig-tol", type=float, default=1e-2,
                   help="Lanczos residual / eigenvalue (the eigenvalue's own error is about "
                   "its square times eigenvalue / gap)")
    p.add_argument("--trace-method", default="exact-or-auto",
                   help="exact-or-auto (exact diagonal for piecewise-linear nets) or a "
                   "backprobe.linalg.trace method: auto, hutchinson, xtrace, ...")
    p.add_argument("--trace-rtol", type=float, default=0.025,
                   help="stop at this relative standard error (0.025: +-5%% at 2 sigma)")
    p.add_argument("--slq-probes", type=int, default=2, help="0 skips the density")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/spectrum", help="folder of the JSON and PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`spectrum` from parsed flags; print the summary and the files written.

    Raises:
        ValueError: a count below 1, ``--slq-probes`` below 0, or an unwritable ``--out``
            (checked before any work).
    """
    for flag, _, _ in _COUNT_FLAGS:
        positive(flag, getattr(args, flag[2:].replace("-", "_")))
    if args.slq_probes < 0:
        raise ValueError(f"--slq-probes must be >= 0 (0 skips the density), got {args.slq_probes}")
    output_dir("--out", args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = spectrum(
        args.model, args.data, checkpoint=args.checkpoint, curvature=args.curvature,
        examples=args.examples, batch_size=args.batch_size, top_k=args.top_k,
        eig_tol=args.eig_tol, trace_method=args.trace_method,
        trace_matvecs=args.trace_matvecs, trace_rtol=args.trace_rtol,
        max_trace_matvecs=args.max_trace_matvecs, slq_probes=args.slq_probes,
        slq_steps=args.slq_steps, seed=args.seed, out=args.out, data_dir=args.data_dir,
        image_size=args.image_size, progress=not args.no_progress)
    print(res.summary())
    for f in res.files:
        print(f"wrote {f}")
    return 0
