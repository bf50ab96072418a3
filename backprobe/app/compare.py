"""``backprobe compare``: a grid of estimators x batch sizes x seeds, as a table and a figure.

:func:`compare` trains every cell with :func:`backprobe.app.training.train`;
:class:`CompareResult` holds the runs, prints the paper's table (test accuracy per estimator
and batch size, mean ± std over seeds, plus saved bytes and seconds per epoch), merges grids
run separately, and draws the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backprobe.app._args import add_common, add_training, estimator_specs, ints, spec_epilog
from backprobe.app._checks import output_dir, positive
from backprobe.app.data import DataSplit
from backprobe.app.report import (
    echo,
    format_bytes,
    progress_bar,
    pyplot,
    ratio_words,
    save_figure,
    table,
    write_json,
)
from backprobe.app.spec import parse_estimator
from backprobe.app.training import TrainConfig, TrainResult, load_data, run_line, train

__all__ = ["CompareResult", "add_parser", "compare", "run"]


def _results(run: TrainResult) -> tuple[Any, ...]:
    """What makes two runs of the same key the same run (timings excluded)."""
    return (run.test_accuracy, run.train_loss, run.test_accuracy_per_epoch, run.steps,
            run.saved_activation_bytes)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class CompareResult:
    """All runs of a :func:`compare` grid and their summary."""

    model: str
    data: str
    estimators: list[str]
    batch_sizes: list[int]
    seeds: list[int]
    epochs: int
    optimizer: str
    lr: float
    runs: list[TrainResult]
    #: runs dropped by :meth:`from_json` as exact duplicates
    duplicates: int = 0
    #: Ctrl-C stopped the grid; ``runs`` holds the runs that finished
    interrupted: bool = False

    def _runs(self, spec: str, batch: int) -> list[TrainResult]:
        return [r for r in self.runs if r.estimator == spec and r.batch_size == batch]

    def summary(self) -> list[dict[str, Any]]:
        """One row per (estimator, batch size): accuracy mean/std (%), bytes, ratio, s/epoch."""
        rows = []
        for spec in self.estimators:
            for b in self.batch_sizes:
                runs = self._runs(spec, b)
                if not runs:
                    continue
                mean, std = _mean_std([100 * r.test_accuracy for r in runs])
                exact_runs = [r for r in self.runs if r.batch_size == b]
                exact_bytes = exact_runs[0].exact_saved_activation_bytes
                secs = [s for r in runs for s in r.epoch_seconds]
                rows.append({
                    "estimator": spec, "batch_size": b, "accuracy_mean": mean, "accuracy_std": std,
                    "accuracies": [100 * r.test_accuracy for r in runs],
                    "saved_activation_bytes": runs[0].saved_activation_bytes,
                    "exact_saved_activation_bytes": exact_bytes,
                    "memory_ratio": exact_bytes / max(runs[0].saved_activation_bytes, 1),
                    "epoch_seconds": statistics.median(secs),
                })
        return rows

    def table(self) -> str:
        """The paper's table, plus memory and time columns.

        Test accuracy (%) per estimator x batch size, mean ± std over seeds; then the saved
        activation bytes per step (largest batch), the ratio vs exact, and the median seconds
        per epoch for each batch size.
        """
        rows_by = {(r["estimator"], r["batch_size"]): r for r in self.summary()}
        big = max(self.batch_sizes)
        head = ["estimator"] + [f"acc % B={b}" for b in self.batch_sizes]
        head += [f"saved/step B={big}", "vs exact"] + [f"s/epoch B={b}" for b in self.batch_sizes]
        rows = [head]
        for spec in self.estimators:
            row = [spec]
            for b in self.batch_sizes:
                s = rows_by.get((spec, b))
                if s is None:
                    row.append("-")
                else:
                    n = len(s["accuracies"])
                    cell = (f"{s['accuracy_mean']:.2f}" if n == 1 else
                            f"{s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f}")
                    row.append(cell if n == len(self.seeds) else f"{cell} (n={n})")
            s = rows_by.get((spec, big))
            row += ["-", "-"] if s is None else [
                format_bytes(s["saved_activation_bytes"]),
                ratio_words(s["exact_saved_activation_bytes"], s["saved_activation_bytes"])]
            for b in self.batch_sizes:
                s = rows_by.get((spec, b))
                row.append("-" if s is None else f"{s['epoch_seconds']:.2f}")
            rows.append(row)
        seeds = ",".join(map(str, self.seeds))
        what = "mean ± std over seeds" if len(self.seeds) > 1 else "one seed"
        if any(len(s["accuracies"]) != len(self.seeds) for s in rows_by.values()):
            what += "; n = seeds in a cell where fewer"
        title = (f"{self.model} on {self.data}, {self.epochs} epochs, {self.optimizer} "
                 f"lr={self.lr:g}, seeds {seeds} (test accuracy %, {what})")
        if any(r.skip_first for r in self.runs):
            title += "; first layer kept exact (skip_first)"
        return title + "\n" + table(rows, [False] + [True] * (len(head) - 1))

    @classmethod
    def from_json(cls, docs: Sequence[dict[str, Any]],
                  sources: Sequence[str] | None = None) -> CompareResult:
        """Merge the ``to_json()`` documents of grids run separately (e.g. one per seed).

        Runs are deduplicated by (model, data, estimator, batch size, seed): a run found in
        several documents with the same results (losses and accuracies; timings may differ)
        is kept once. Estimators and batch sizes keep their first-seen order; ``seeds`` lists
        the seeds the runs actually have.

        Args:
            docs: the documents.
            sources: a name per document (file names) for messages.

        Raises:
            ValueError: a document is not a compare result (no ``runs``), the documents differ
                in model, data, epochs, optimizer or lr, or two runs with the same key have
                different results (each conflict is listed).
        """
        if not docs:
            raise ValueError("CompareResult.from_json: nothing to merge")
        names = list(sources) if sources is not None else [f"document {i + 1}"
                                                           for i in range(len(docs))]
        keys = ("model", "data", "epochs", "optimizer", "lr")
        for d, name in zip(docs, names):
            if not isinstance(d, dict) or not isinstance(d.get("runs"), list) or not d["runs"]:
                raise ValueError(f"{name} holds no runs: not a compare.json written by "
                                 "backprobe compare")
            missing = [k for k in keys if k not in d]
            if missing:
                raise ValueError(f"{name} lacks {missing}: not a compare.json")
        for d, name in zip(docs[1:], names[1:]):
            diff = [k for k in keys if d[k] != docs[0][k]]
            if diff:
                raise ValueError(f"cannot merge {name} with {names[0]}: they differ in {diff}")
        fields = set(TrainResult.__dataclass_fields__)
        kept: dict[tuple[Any, ...], tuple[TrainResult, str]] = {}
        conflicts = []
        for d, name in zip(docs, names):
            for r in d["runs"]:
                run = TrainResult(**{"skip_first": False,
                                     **{k: v for k, v in r.items() if k in fields}})
                key = (run.model, run.data, run.estimator, run.batch_size, run.seed)
                if key not in kept:
                    kept[key] = (run, name)
                elif _results(kept[key][0]) != _results(run):
                    old, where = kept[key]
                    conflicts.append(
                        f"{run.estimator} B={run.batch_size} seed {run.seed}: test accuracy "
                        f"{100 * old.test_accuracy:.2f}% in {where}, "
                        f"{100 * run.test_accuracy:.2f}% in {name}")
        if conflicts:
            raise ValueError(f"{len(conflicts)} conflicting run(s), same (model, data, "
                             f"estimator, batch size, seed) but different results: "
                             + "; ".join(conflicts))
        runs = [run for run, _ in kept.values()]

        def union(key: str) -> list[Any]:
            return list(dict.fromkeys(v for d in docs for v in d.get(key, [])))

        first = docs[0]
        estimators = [e for e in union("estimators") if any(r.estimator == e for r in runs)]
        estimators += [e for e in dict.fromkeys(r.estimator for r in runs) if e not in estimators]
        batches = [b for b in union("batch_sizes") if any(r.batch_size == b for r in runs)]
        batches += [b for b in dict.fromkeys(r.batch_size for r in runs) if b not in batches]
        seeds = sorted({r.seed for r in runs})
        merged = cls(first["model"], first["data"], estimators, batches, seeds,
                     first["epochs"], first["optimizer"], first["lr"], runs)
        merged.duplicates = sum(len(d["runs"]) for d in docs) - len(runs)
        return merged

    def to_json(self) -> dict[str, Any]:
        """Grid settings, the summary rows and every run."""
        return {
            "model": self.model, "data": self.data, "estimators": self.estimators,
            "batch_sizes": self.batch_sizes, "seeds": self.seeds, "epochs": self.epochs,
            "optimizer": self.optimizer, "lr": self.lr, "summary": self.summary(),
            "runs": [r.to_json() for r in self.runs],
            **({"interrupted": True} if self.interrupted else {}),
        }

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write a PNG: accuracy, saved bytes and time per estimator.

        Panels: test accuracy (mean ± std over seeds) per estimator and batch size; saved
        activation bytes per step at the largest batch (ratio vs exact on the bars); median
        seconds per epoch.
        """
        plt = pyplot()
        summ = self.summary()
        xs = list(range(len(self.estimators)))
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for b in self.batch_sizes:
            pts = [(i, s) for i, spec in enumerate(self.estimators) for s in summ
                   if s["estimator"] == spec and s["batch_size"] == b]
            axes[0].errorbar([i for i, _ in pts], [s["accuracy_mean"] for _, s in pts],
                             yerr=[s["accuracy_std"] for _, s in pts], marker="o", capsize=3,
                             label=f"batch {b}")
            axes[2].plot([i for i, _ in pts], [s["epoch_seconds"] for _, s in pts], marker="o",
                         label=f"batch {b}")
        axes[0].set_ylabel("test accuracy (%)")
        n = len(self.seeds)
        axes[0].set_title(f"test accuracy after {self.epochs} epochs "
                          f"({n} seed{'s' if n > 1 else ''})")
        big = max(self.batch_sizes)
        mem = [next((s for s in summ if s["estimator"] == e and s["batch_size"] == big), None)
               for e in self.estimators]
        heights = [0 if s is None else s["saved_activation_bytes"] / 2**20 for s in mem]
        bars = axes[1].bar(xs, heights, color="tab:green")
        for bar, s in zip(bars, mem):
            if s is not None:
                axes[1].annotate(f"{s['memory_ratio']:.1f}x", (bar.get_x() + bar.get_width() / 2,
                                 bar.get_height()), ha="center", va="bottom")
        axes[1].set_ylabel("MiB")
        axes[1].set_title(f"saved activations per step (batch {big})")
        axes[2].set_ylabel("seconds")
        axes[2].set_title("training time per epoch (median)")
        for ax in axes:
            ax.set_xticks(xs, self.estimators, rotation=20)
            ax.grid(alpha=0.3)
        axes[0].legend()
        axes[2].legend()
        fig.suptitle(f"{self.model} on {self.data}: exact vs probed weight gradients")
        fig.tight_layout()
        return save_figure(fig, path)


def compare(
    model: str, data: str, estimators: Sequence[str], batch_sizes: Sequence[int],
    seeds: Sequence[int] = (0,), *, epochs: int = 10, optimizer: str = "adam",
    lr: float | None = None, data_dir: str | None = None, image_size: int | None = None,
    device: str = "cpu", skip_first: bool = False, progress: bool = False,
    on_run: Callable[[TrainResult], None] | None = None, split: DataSplit | None = None,
) -> CompareResult:
    """Train every (seed, batch size, estimator) and collect the results.

    Args:
        model: a :data:`backprobe.models.MODELS` name.
        data: a :data:`backprobe.data.DATASETS` name.
        estimators: spec strings, e.g. ``["exact", "probe:4", "probe:16", "probe:64"]``.
        batch_sizes: e.g. ``[32, 128]``.
        seeds: one run per seed; the table shows mean ± std over them.
        epochs: passes over the training set.
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: learning rate (default :data:`DEFAULT_LR`).
        data_dir: directory of the data files.
        image_size: resize images (default :func:`default_image_size`).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        skip_first: keep the first layer exact in every probed run.
        progress: tqdm bars (the grid, and each run's epochs).
        on_run: called with each finished run.
        split: preloaded data (default: :func:`load_data` of ``data``).

    Returns:
        A :class:`CompareResult`.
    """
    estimators, batch_sizes, seeds = list(estimators), list(batch_sizes), list(seeds)
    for spec in estimators:
        parse_estimator(spec)  # fail before the first run
    for b in batch_sizes:
        positive("--batch-sizes", b, allow_none=False)
    base = TrainConfig(model=model, data=data, epochs=epochs, optimizer=optimizer, lr=lr,
                       data_dir=data_dir, image_size=image_size, device=device,
                       skip_first=skip_first, batch_size=max(batch_sizes))
    base.validate()
    if split is None:
        split = load_data(data, data_dir=data_dir, image_size=image_size)
    if max(batch_sizes) > len(split.x_train):
        raise ValueError(f"--batch-sizes {max(batch_sizes)} is larger than the training set "
                         f"({len(split.x_train)} examples of {split.name})")
    grid = [(s, b, e) for s in seeds for b in batch_sizes for e in estimators]
    runs = []
    bar = progress_bar(grid, progress, desc="compare", unit="run")
    for seed, b, spec in bar:
        if progress:
            bar.set_postfix_str(f"{spec} B={b} seed {seed}")
        r = train(replace(base, estimator=spec, batch_size=b, seed=seed), split=split,
                  progress=progress)
        r.model_obj = None
        if r.interrupted:  # Ctrl-C: keep the finished runs, drop this one
            break
        runs.append(r)
        if on_run is not None:
            on_run(r)
    if progress:
        bar.close()
    return CompareResult(model, split.name, estimators, batch_sizes, seeds, epochs, optimizer,
                         base.learning_rate, runs, interrupted=len(runs) < len(grid))


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------



def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "compare", help="grid of estimators x batch sizes x seeds: table + PNG", **spec_epilog())
    add_common(p)
    add_training(p)
    p.add_argument("--estimators", type=estimator_specs,
                   default=["exact", "probe:4", "probe:16", "probe:64"],
                   help="comma-separated specs (default exact,probe:4,probe:16,probe:64)")
    p.add_argument("--batch-sizes", type=ints, default=[32, 128], help="default 32,128")
    p.add_argument("--seeds", type=ints, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--out", default="results/compare", help="directory for compare.{json,png}")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="train nothing: merge compare.json files of grids run separately "
                   "(e.g. one process per seed), print the table, write JSON and PNG")
    p.set_defaults(func=run)


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--merge {path!r}: no such file") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"--merge {path!r} is not readable JSON: {err}") from None


def run(args: argparse.Namespace) -> int:
    """Run (or merge) the grid, print its table, write ``compare.json`` and ``compare.png``."""
    out = Path(args.out)
    output_dir("--out", out)
    if args.merge:
        result = CompareResult.from_json([_read_json(f) for f in args.merge], args.merge)
        if result.duplicates:
            print(f"merge: {result.duplicates} duplicate run(s) counted once")
    else:
        result = compare(
            args.model, args.data, args.estimators, args.batch_sizes, args.seeds,
            epochs=args.epochs, optimizer=args.optimizer, lr=args.lr, data_dir=args.data_dir,
            image_size=args.image_size, device=args.device, skip_first=args.skip_first,
            progress=not args.no_progress, on_run=lambda r: echo(run_line(r)),
        )
    if not result.runs:
        print("interrupted before the first run finished: nothing written")
        return 130
    print()
    print(result.table())
    print(f"wrote {write_json(out / 'compare.json', result.to_json())}")
    print(f"wrote {result.plot(out / 'compare.png')}")
    if result.interrupted:
        print(f"interrupted: {len(result.runs)} finished run(s) written, marked interrupted")
        return 130
    return 0
