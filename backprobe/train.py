"""Training, evaluation, estimator comparisons and gradient-variance studies.

These are the library functions behind the ``backprobe`` command line (``backprobe.cli`` only
parses arguments and prints what these return):

* :func:`train`: train one model with one estimator (optionally with DistributedDataParallel),
  returning a :class:`TrainResult` (per-epoch loss, test accuracy, seconds, saved bytes).
* :func:`compare`: the grid estimators x batch sizes x seeds, with the paper's table
  (:meth:`CompareResult.table`) and a figure (:meth:`CompareResult.plot`).
* :func:`memory_report`: per-layer saved activation bytes, exact vs an estimator.
* :func:`variance_study`: the XConv validation figures (histograms of probed estimates of a
  few weights against the true gradient; standard deviation of each conv layer's gradient
  across minibatches, exact vs probed).

Loss scaling: every step minimises the mean cross-entropy over the *global* batch. Each
process computes ``sum of its examples' losses * world_size / global_batch``; DDP averages the
gradients over processes, so the result is the global-batch mean gradient whatever the shard
sizes (and with one process it is the plain mean).

Reproducibility: ``torch.manual_seed(seed)`` is called before the model and the estimator are
built; the data order comes from a private ``torch.Generator`` seeded with ``seed``.

Example:
    >>> from backprobe.train import TrainConfig, train
    >>> result = train(TrainConfig(estimator="probe:16", epochs=1))
    >>> result.test_accuracy, result.saved_activation_bytes
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backprobe import data as data_mod
from backprobe import models
from backprobe.convert import convert, report
from backprobe.estimators import Estimator
from backprobe.layers import bind
from backprobe.memory import saved_activation_bytes
from backprobe.app.spec import is_exact, parse_estimator

__all__ = [
    "DEFAULT_LR", "CompareResult", "MemoryReport", "TrainConfig", "TrainResult", "VarianceResult",
    "build_model", "compare", "default_image_size", "echo", "epoch_line", "evaluate",
    "format_bytes", "load_data", "memory_report", "prepare_model", "run_line", "save_model",
    "shard", "step_saved_bytes", "train", "variance_study", "write_json",
]

#: Default learning rates, checked on mnist_cnn / digits (28x28), 10 epochs, batch 32 and 128.
#: Adam (the default optimizer) is robust to the heavy-tailed noise of few probes: 2e-3 beat
#: 1e-3 for exact and probed runs alike (3 seeds). SGD with momentum 0.9 at 0.01-0.02 matches
#: Adam with exact gradients at batch 32 but diverged with probe:4 (and probe:16 at 0.02).
DEFAULT_LR: dict[str, float] = {"sgd": 0.01, "adam": 2e-3}
OPTIMIZERS = ("sgd", "adam")
_EVAL_BATCH = 1000


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _table(rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """Plain-text table; ``right[i]`` right-aligns column ``i``."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = right or [False] * len(widths)
    lines = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _progress(iterable: Any, enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kwargs)


def default_image_size(data: str) -> int | None:
    """Image size used when none is given: 28 for ``digits`` (MNIST-sized), native otherwise."""
    return 28 if data == "digits" else None


def load_data(data: str, *, data_dir: str | None = None, image_size: int | None = None,
              download: bool = False) -> data_mod.DataSplit:
    """Load a data set with :func:`backprobe.data.load` and the default image size."""
    size = image_size if image_size is not None else default_image_size(data)
    return data_mod.load(data, data_dir=data_dir, size=size, download=download)


def build_model(name: str, split: data_mod.DataSplit) -> nn.Module:
    """Build :mod:`backprobe.models` ``name`` for the images and classes of ``split``."""
    return models.build(name, split.in_channels, split.num_classes, split.image_size)


def prepare_model(
    model: nn.Module, spec: str, example_input: Tensor, *, skip_first: bool = False
) -> tuple[nn.Module, Estimator | None]:
    """Convert ``model`` in place for ``spec`` (``exact``: left as plain autograd).

    Non-exact specs are converted with compact activations (1-bit ReLU masks, int8 max-pool
    offsets) and ``example_input`` decides per layer whether the estimator pays off;
    ``skip_first`` keeps the first layer exact (see :func:`backprobe.convert`).

    Returns:
        ``(model, estimator)``; ``estimator`` is ``None`` for ``exact``.
    """
    if is_exact(spec):
        return model, None
    est = parse_estimator(spec)
    convert(model, est, example_input=example_input, compact_activations=True,
            skip_first=skip_first)
    return model, est


def _make_optimizer(name: str, params: Any, lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def step_saved_bytes(
    model: nn.Module, exact_model: nn.Module, x: Tensor, y: Tensor
) -> tuple[int, int]:
    """Saved activation bytes of one training step: ``(exact_model, model)`` on ``(x, y)``."""
    loss = nn.CrossEntropyLoss()
    exact = saved_activation_bytes(exact_model, x, y, loss)
    est = saved_activation_bytes(model, x, y, loss)
    assert isinstance(exact, int) and isinstance(est, int)
    return exact, est


# ---------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world > 1 or torch.distributed.is_initialized()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        if self.active:
            torch.distributed.all_reduce(t)
        return t.tolist()


def _resolve_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def _init_distributed(device: str) -> _Dist:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ...).

    Backend: nccl on CUDA, gloo on CPU. Reuses an existing process group.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = _resolve_device(device, local_rank)
    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise RuntimeError(
                "--ddp needs a process group: launch with `torchrun --nproc_per_node N -m "
                "backprobe train ... --ddp` (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT unset)"
            )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group(backend=backend)
    return _Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), dev)


def _global_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Index sets of the global mini-batches of one epoch (same on every process)."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def shard(indices: Tensor, rank: int, world: int) -> Tensor:
    """This process's contiguous share of a global batch (sizes differ by at most one)."""
    return torch.tensor_split(indices, world)[rank]


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines one training run.

    Attributes:
        model: a :data:`backprobe.models.MODELS` name.
        data: a :data:`backprobe.data.DATASETS` name.
        estimator: spec string (see :mod:`backprobe.spec`).
        batch_size: global batch size (split over processes with DDP).
        epochs: passes over the training set.
        lr: learning rate (default :data:`DEFAULT_LR` of the optimizer).
        optimizer: ``"adam"`` (default) or ``"sgd"`` (momentum ``momentum``).
        momentum: SGD momentum.
        seed: seeds the model, the estimator and the data order.
        data_dir: directory of the data files (not needed for ``digits``).
        image_size: resize images (default :func:`default_image_size`).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        max_steps: stop after this many optimizer steps (for tests and smoke runs).
        skip_first: keep the first layer's weight gradient exact (its input, the images, is
            small; with one input channel it is also the noisiest layer to probe).
    """

    model: str = "mnist_cnn"
    data: str = "digits"
    estimator: str = "exact"
    batch_size: int = 32
    epochs: int = 10
    lr: float | None = None
    optimizer: str = "adam"
    momentum: float = 0.9
    seed: int = 0
    data_dir: str | None = None
    image_size: int | None = None
    device: str = "cpu"
    max_steps: int | None = None
    skip_first: bool = False

    @property
    def learning_rate(self) -> float:
        """``lr`` or the optimizer's default."""
        if self.optimizer not in DEFAULT_LR:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr


@dataclass
class TrainResult:
    """What :func:`train` measured. ``to_json()`` gives the ``--json`` document."""

    model: str
    data: str
    estimator: str
    seed: int
    batch_size: int
    skip_first: bool
    epochs: int
    lr: float
    optimizer: str
    world_size: int
    test_accuracy: float
    train_loss: list[float] = field(default_factory=list)
    test_accuracy_per_epoch: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    saved_activation_bytes: int = 0
    exact_saved_activation_bytes: int = 0
    memory_ratio: float = 1.0
    steps: int = 0
    conversion: str = ""
    model_obj: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (without the model)."""
        d = asdict(replace(self, model_obj=None))
        d.pop("model_obj")
        return d

    def summary(self) -> str:
        """The end-of-run lines: accuracy and saved bytes, exact vs this estimator."""
        return (
            f"test accuracy {100 * self.test_accuracy:.2f}%  |  saved activations per step "
            f"(batch {self.batch_size}): exact {format_bytes(self.exact_saved_activation_bytes)}, "
            f"{self.estimator} {format_bytes(self.saved_activation_bytes)} "
            f"({self.memory_ratio:.1f}x less)"
        )


def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = _EVAL_BATCH,
             dist: _Dist | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` (sharded under DDP).

    Returns:
        ``(loss, accuracy)`` over all of ``x``.
    """
    dist = dist or _Dist()
    idx = shard(torch.arange(len(x)), dist.rank, dist.world)
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0.0
    with torch.no_grad():
        for part in idx.split(batch_size):
            xb, yb = x[part].to(dist.device), y[part].to(dist.device)
            out = model(xb)
            loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += float((out.argmax(1) == yb).sum())
    model.train(was_training)
    loss_sum, correct = dist.all_sum([loss_sum, correct])
    return loss_sum / max(len(x), 1), correct / max(len(x), 1)


def train(
    config: TrainConfig, *, split: data_mod.DataSplit | None = None, ddp: bool = False,
    progress: bool = False, on_epoch: Callable[[int, TrainResult], None] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.data`` with ``config.estimator``.

    Per epoch it records the mean training loss, the test accuracy and the training seconds
    (evaluation excluded). At the end it measures the saved activation bytes of one training
    step on ``batch_size`` training examples, for a plain (exact) copy and for this model.

    Args:
        config: the run (see :class:`TrainConfig`).
        split: preloaded data (default: :func:`load_data`).
        ddp: wrap the model in ``DistributedDataParallel`` (launch with ``torchrun``); each
            process takes a contiguous shard of every global batch.
        progress: show tqdm progress bars (rank 0 only).
        on_epoch: called as ``on_epoch(epoch, result_so_far)`` after each epoch (rank 0 only).

    Returns:
        The :class:`TrainResult`; its ``model_obj`` is the trained (unwrapped) model.

    Raises:
        ValueError: bad estimator spec, model, data set or optimizer.
    """
    dist = _init_distributed(config.device) if ddp else _Dist(device=_resolve_device(config.device))
    lr = config.learning_rate
    if split is None:
        split = load_data(config.data, data_dir=config.data_dir, image_size=config.image_size)
    x_train, y_train = split.x_train.to(dist.device), split.y_train.to(dist.device)

    torch.manual_seed(config.seed)
    model = build_model(config.model, split).to(dist.device)
    if dist.rank > 0:  # independent probes per process; rank 0 matches single-process runs
        torch.manual_seed(config.seed + 7919 * dist.rank)
    example = x_train[: max(1, math.ceil(config.batch_size / dist.world))].clone()
    model, _ = prepare_model(model, config.estimator, example, skip_first=config.skip_first)
    conversion = "" if is_exact(config.estimator) else str(report(model))

    net: nn.Module = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        ids = [dist.device] if dist.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    opt = _make_optimizer(config.optimizer, net.parameters(), lr, config.momentum)
    order_gen = torch.Generator().manual_seed(config.seed)

    result = TrainResult(
        config.model, split.name, config.estimator, config.seed, config.batch_size,
        config.skip_first,
        config.epochs, lr, config.optimizer, dist.world, float("nan"), conversion=conversion,
    )
    show = progress and dist.rank == 0
    net.train()
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        loss_sum, seen = 0.0, 0
        steps = list(_global_batches(len(x_train), config.batch_size, order_gen))
        bar = _progress(steps, show, desc=f"{config.estimator} B={config.batch_size} "
                        f"epoch {epoch}/{config.epochs}", leave=False, unit="step")
        for idx in bar:
            if config.max_steps is not None and result.steps >= config.max_steps:
                break
            part = shard(idx, dist.rank, dist.world).to(dist.device)
            out = net(x_train[part])
            loss = F.cross_entropy(out, y_train[part], reduction="sum") * (dist.world / len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps += 1
            loss_sum += float(loss.detach()) * len(idx) / dist.world
            seen += len(idx)
        if dist.device.type == "cuda":
            torch.cuda.synchronize(dist.device)
        result.epoch_seconds.append(time.perf_counter() - start)
        (loss_sum,) = dist.all_sum([loss_sum])
        result.train_loss.append(loss_sum / max(seen, 1))
        _, acc = evaluate(model, split.x_test, split.y_test, dist=dist)
        result.test_accuracy_per_epoch.append(acc)
        result.test_accuracy = acc
        if on_epoch is not None and dist.rank == 0:
            on_epoch(epoch, result)
        if config.max_steps is not None and result.steps >= config.max_steps:
            break

    # copies, not views: a view would count the whole training set's storage as saved
    xb, yb = x_train[: config.batch_size].clone(), y_train[: config.batch_size].clone()
    exact_model = build_model(config.model, split).to(dist.device)
    result.exact_saved_activation_bytes, result.saved_activation_bytes = step_saved_bytes(
        model, exact_model, xb, yb)
    result.memory_ratio = (result.exact_saved_activation_bytes
                           / max(result.saved_activation_bytes, 1))
    result.model_obj = model
    return result


def epoch_line(epoch: int, result: TrainResult) -> str:
    """One progress line: ``epoch 3/10  train loss 0.1234  test acc 97.50%  2.1 s``."""
    return (
        f"epoch {epoch}/{result.epochs}  train loss {result.train_loss[-1]:.4f}  "
        f"test acc {100 * result.test_accuracy_per_epoch[-1]:.2f}%  "
        f"{result.epoch_seconds[-1]:.1f} s"
    )


def save_model(result: TrainResult, path: str | os.PathLike[str]) -> Path:
    """Save the trained model's ``state_dict`` (torch's keys; load into a plain model)."""
    if result.model_obj is None:
        raise ValueError("save_model: this result holds no model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.model_obj.state_dict(), path)
    return path


def echo(line: str) -> None:
    """Print a line without breaking an active tqdm progress bar."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the cli extra
        print(line, flush=True)
        return
    tqdm.write(line)
    sys.stdout.flush()


def run_line(result: TrainResult) -> str:
    """One line per finished run: spec, batch, seed, accuracy, seconds per epoch, memory."""
    secs = statistics.median(result.epoch_seconds) if result.epoch_seconds else float("nan")
    return (
        f"{result.estimator:<12} B={result.batch_size:<4} seed {result.seed}  test acc "
        f"{100 * result.test_accuracy:6.2f}%  {secs:5.2f} s/epoch  saved "
        f"{format_bytes(result.saved_activation_bytes)} "
        f"({result.memory_ratio:.1f}x less than exact)"
    )


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON, creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Compare
# ---------------------------------------------------------------------------------------------


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
                elif len(s["accuracies"]) == 1:
                    row.append(f"{s['accuracy_mean']:.2f}")
                else:
                    row.append(f"{s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f}")
            s = rows_by.get((spec, big))
            row += ["-", "-"] if s is None else [
                format_bytes(s["saved_activation_bytes"]), f"{s['memory_ratio']:.1f}x less"
                if s["memory_ratio"] > 1.0001 else "1.0x"]
            for b in self.batch_sizes:
                s = rows_by.get((spec, b))
                row.append("-" if s is None else f"{s['epoch_seconds']:.2f}")
            rows.append(row)
        seeds = ",".join(map(str, self.seeds))
        what = "mean ± std over seeds" if len(self.seeds) > 1 else "one seed"
        title = (f"{self.model} on {self.data}, {self.epochs} epochs, {self.optimizer} "
                 f"lr={self.lr:g}, seeds {seeds} (test accuracy %, {what})")
        if any(r.skip_first for r in self.runs):
            title += "; first layer kept exact (skip_first)"
        return title + "\n" + _table(rows, [False] + [True] * (len(head) - 1))

    @classmethod
    def from_json(cls, docs: Sequence[dict[str, Any]]) -> CompareResult:
        """Merge the ``to_json()`` documents of grids run separately (e.g. one per seed).

        Estimators and batch sizes keep their first-seen order; runs are concatenated.

        Raises:
            ValueError: if the documents differ in model, data, epochs, optimizer or lr.
        """
        if not docs:
            raise ValueError("CompareResult.from_json: nothing to merge")
        keys = ("model", "data", "epochs", "optimizer", "lr")
        for d in docs[1:]:
            diff = [k for k in keys if d[k] != docs[0][k]]
            if diff:
                raise ValueError(f"cannot merge compare results that differ in {diff}")
        fields = set(TrainResult.__dataclass_fields__)
        runs = [TrainResult(**{"skip_first": False, **{k: v for k, v in r.items() if k in fields}})
                for d in docs for r in d["runs"]]

        def union(key: str) -> list[Any]:
            return list(dict.fromkeys(v for d in docs for v in d[key]))

        first = docs[0]
        return cls(first["model"], first["data"], union("estimators"), union("batch_sizes"),
                   union("seeds"), first["epochs"], first["optimizer"], first["lr"], runs)

    def to_json(self) -> dict[str, Any]:
        """Grid settings, the summary rows and every run."""
        return {
            "model": self.model, "data": self.data, "estimators": self.estimators,
            "batch_sizes": self.batch_sizes, "seeds": self.seeds, "epochs": self.epochs,
            "optimizer": self.optimizer, "lr": self.lr, "summary": self.summary(),
            "runs": [r.to_json() for r in self.runs],
        }

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write a PNG: accuracy, saved bytes and time per estimator.

        Panels: test accuracy (mean ± std over seeds) per estimator and batch size; saved
        activation bytes per step at the largest batch (ratio vs exact on the bars); median
        seconds per epoch.
        """
        plt = _pyplot()
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
        return _save(fig, path)


def compare(
    model: str, data: str, estimators: Sequence[str], batch_sizes: Sequence[int],
    seeds: Sequence[int] = (0,), *, epochs: int = 10, optimizer: str = "adam",
    lr: float | None = None, data_dir: str | None = None, image_size: int | None = None,
    device: str = "cpu", skip_first: bool = False, progress: bool = False,
    on_run: Callable[[TrainResult], None] | None = None,
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

    Returns:
        A :class:`CompareResult`.
    """
    estimators, batch_sizes, seeds = list(estimators), list(batch_sizes), list(seeds)
    for spec in estimators:
        parse_estimator(spec)  # fail before the first run
    split = load_data(data, data_dir=data_dir, image_size=image_size)
    grid = [(s, b, e) for s in seeds for b in batch_sizes for e in estimators]
    runs = []
    bar = _progress(grid, progress, desc="compare", unit="run")
    base = TrainConfig(model=model, data=data, epochs=epochs, optimizer=optimizer, lr=lr,
                       data_dir=data_dir, image_size=image_size, device=device,
                       skip_first=skip_first)
    for seed, b, spec in bar:
        if progress:
            bar.set_postfix_str(f"{spec} B={b} seed {seed}")
        r = train(replace(base, estimator=spec, batch_size=b, seed=seed), split=split,
                  progress=progress)
        r.model_obj = None
        runs.append(r)
        if on_run is not None:
            on_run(r)
    return CompareResult(model, split.name, estimators, batch_sizes, seeds, epochs, optimizer,
                         base.learning_rate, runs)


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


@dataclass
class MemoryReport:
    """Per-layer saved activation bytes of one training step, exact vs an estimator."""

    model: str
    input_shape: tuple[int, ...]
    estimator: str
    rows: list[tuple[str, str, int, int]]  # (layer, type, exact bytes, estimator bytes)

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
            return "-" if a == 0 and b == 0 else ("inf" if b == 0 else f"{a / b:.1f}x")

        rows = [["layer", "type", "exact", self.estimator, "ratio"]]
        rows += [[n or "(loss, functional)", t, format_bytes(a), format_bytes(b), ratio(a, b)]
                 for n, t, a, b in self.rows]
        rows.append(["total", "", format_bytes(self.exact_total),
                     format_bytes(self.estimator_total),
                     ratio(self.exact_total, self.estimator_total)])
        title = (f"saved activations of one training step: {self.model}, input "
                 f"{'x'.join(map(str, self.input_shape))}, exact vs {self.estimator}")
        return title + "\n" + _table(rows, [False, False, True, True, True])

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model": self.model, "input_shape": list(self.input_shape), "estimator": self.estimator,
            "layers": [{"layer": n, "type": t, "exact_bytes": a, "estimator_bytes": b}
                       for n, t, a, b in self.rows],
            "exact_total": self.exact_total, "estimator_total": self.estimator_total,
            "ratio": self.ratio,
        }


def memory_report(model: str, input_shape: Sequence[int], num_classes: int, estimator: str,
                  *, seed: int = 0) -> MemoryReport:
    """Measure saved activation bytes per leaf module for a random batch of ``input_shape``.

    Args:
        model: a :data:`backprobe.models.MODELS` name.
        input_shape: ``(N, C, H, W)``.
        num_classes: logits of the model.
        estimator: spec string.
        seed: seeds the model, input and labels.

    Returns:
        A :class:`MemoryReport` (``print`` it for the table).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 3:
        raise ValueError(f"input shape must be (N, C, *spatial), got {shape}")
    torch.manual_seed(seed)
    x = torch.randn(shape)
    y = torch.randint(0, num_classes, (shape[0],))
    size = shape[2:] if len(shape) > 3 else shape[2]
    plain = models.build(model, shape[1], num_classes, size)  # type: ignore[arg-type]
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
    return MemoryReport(model, shape, estimator, rows)


# ---------------------------------------------------------------------------------------------
# Variance study (XConv validation figures)
# ---------------------------------------------------------------------------------------------


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
    worthwhile = getattr(est, "worthwhile", None)
    if worthwhile is not None and not worthwhile(op, xc):
        return op.weight_grad(xc, g)  # the converted layer falls back to exact here
    saved, meta = est.pack(op, xc)
    return est.weight_grad(op, saved, meta, g)


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
            + _table(rows) + "\n\n"
            + f"std of each conv layer's weight gradient across {self.minibatches} minibatches "
            "(mean over weights)\n" + _table(std_rows, [False] + [True] * len(keys))
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _plot_histograms(
    entries: list[dict[str, Any]], probes: list[int], title: str, path: Path
) -> Path:
    plt = _pyplot()
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
    return _save(fig, path)


def _plot_std(std: dict[str, dict[str, float]], keys: list[str], labels: dict[str, str],
              title: str, path: Path) -> Path:
    plt = _pyplot()
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
    return _save(fig, path)


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
    template = "probe:{r}" + (f":{probe_options.strip(':')}" if probe_options.strip(":") else "")
    for r in probes:
        parse_estimator(template.format(r=r))
    split = load_data(data, data_dir=data_dir, image_size=image_size)
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
    bar = _progress(range(total), progress, desc="variance: histograms", unit="draw")
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
    for chunk in _progress(chunks, progress, desc="variance: minibatches", unit="batch"):
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
