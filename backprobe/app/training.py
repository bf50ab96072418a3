"""``backprobe train``: train one model with one estimator, optionally under DDP.

:func:`train` records per epoch the mean training loss, the test accuracy and the seconds,
and at the end the saved activation bytes of one step, exact vs the estimator.

Loss scaling: every step minimises the mean cross-entropy over the *global* batch. Each
process computes ``sum of its examples' losses * world_size / global_batch``; DDP averages the
gradients over processes, so the result is the global-batch mean gradient whatever the shard
sizes (and with one process it is the plain mean).

Reproducibility: ``torch.manual_seed(seed)`` is called before the model and the estimator are
built; the data order comes from a private ``torch.Generator`` seeded with ``seed``.

Example:
    >>> from backprobe.app.training import TrainConfig, train
    >>> result = train(TrainConfig(estimator="probe:16", epochs=1))
    >>> result.test_accuracy, result.saved_activation_bytes
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backprobe.app import data as data_mod
from backprobe.app import models
from backprobe.app._args import add_common, add_training, estimator_spec, spec_epilog
from backprobe.app._checks import check_device, output_file, positive
from backprobe.app.distributed import Dist, global_batches, init_distributed, resolve_device, shard
from backprobe.app.report import (
    echo,
    format_bytes,
    progress_bar,
    ratio_words,
    save_checkpoint,
    write_json,
)
from backprobe.app.spec import is_exact, parse_estimator
from backprobe.convert import convert, report
from backprobe.estimators import Estimator
from backprobe.memory import saved_activation_bytes

__all__ = [
    "CHECKPOINT_FORMAT", "DEFAULT_LR", "TrainConfig", "TrainResult", "add_parser", "build_model",
    "default_image_size", "epoch_line", "evaluate", "load_data", "prepare_model", "run",
    "run_line", "save_model", "step_saved_bytes", "train",
]

#: Default learning rates, checked on mnist_cnn / digits (28x28), 10 epochs, batch 32 and 128.
#: Adam (the default optimizer) is robust to the heavy-tailed noise of few probes: 2e-3 beat
#: 1e-3 for exact and probed runs alike (3 seeds). SGD with momentum 0.9 at 0.01-0.02 matches
#: Adam with exact gradients at batch 32 but diverged with probe:4 (and probe:16 at 0.02).
DEFAULT_LR: dict[str, float] = {"sgd": 0.01, "adam": 2e-3}
OPTIMIZERS = ("sgd", "adam")
_EVAL_BATCH = 1000


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

    def validate(self) -> None:
        """Check the values that need no data: counts, optimizer, learning rate, device.

        Raises:
            ValueError: naming the flag and the bad value.
        """
        positive("--epochs", self.epochs, allow_none=False)
        positive("--batch-size", self.batch_size, allow_none=False)
        positive("--max-steps", self.max_steps)
        if self.image_size is not None:
            positive("--image-size", self.image_size)
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ValueError(f"--lr must be a positive number, got {self.lr!r}")
        check_device("--device", self.device)

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
    interrupted: bool = False
    model_obj: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (without the model)."""
        d = asdict(replace(self, model_obj=None))
        d.pop("model_obj")
        return d

    def summary(self) -> str:
        """The end-of-run lines: accuracy and saved bytes, exact vs this estimator."""
        if self.interrupted:
            acc = ("no epoch finished" if not self.test_accuracy_per_epoch else
                   f"test accuracy {100 * self.test_accuracy:.2f}% after epoch "
                   f"{len(self.test_accuracy_per_epoch)}")
            return f"interrupted after {self.steps} steps ({acc})"
        return (
            f"test accuracy {100 * self.test_accuracy:.2f}%  |  saved activations per step "
            f"(batch {self.batch_size}): exact {format_bytes(self.exact_saved_activation_bytes)}, "
            f"{self.estimator} {format_bytes(self.saved_activation_bytes)} ("
            f"{ratio_words(self.exact_saved_activation_bytes, self.saved_activation_bytes)})"
        )


def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = _EVAL_BATCH,
             dist: Dist | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` (sharded under DDP).

    Returns:
        ``(loss, accuracy)`` over all of ``x``.
    """
    dist = dist or Dist()
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


#: What a training checkpoint holds (``--checkpoint``/``--resume``); bump on layout changes.
CHECKPOINT_FORMAT = "backprobe-train-checkpoint-1"
#: Config fields a resumed run must share with its checkpoint (epochs, max_steps and device
#: may change: a run can be extended or moved).
_RESUME_KEYS = ("model", "data", "estimator", "batch_size", "lr", "optimizer", "momentum",
                "seed", "image_size", "skip_first")


class _StopRequest:
    """Ctrl-C (SIGINT) as a request to stop after the current step; a second one aborts.

    Installed only in the main thread (signals cannot be caught elsewhere); restores the
    previous handler on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(
    config: TrainConfig, *, split: data_mod.DataSplit | None = None, ddp: bool = False,
    progress: bool = False, on_epoch: Callable[[int, TrainResult], None] | None = None,
    on_step: Callable[[TrainResult], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.data`` with ``config.estimator``.

    Per epoch it records the mean training loss, the test accuracy and the training seconds
    (evaluation excluded). At the end it measures the saved activation bytes of one training
    step on ``batch_size`` training examples, for a plain (exact) copy and for this model.

    Ctrl-C (SIGINT, in the main thread) stops after the current step: the result comes back
    with ``interrupted=True`` (memory not measured) and, with ``checkpoint``, the checkpoint
    holds everything needed to continue. A second Ctrl-C aborts at once.

    Args:
        config: the run (see :class:`TrainConfig`).
        split: preloaded data (default: :func:`load_data`).
        ddp: wrap the model in ``DistributedDataParallel`` (launch with ``torchrun``); each
            process takes a contiguous shard of every global batch.
        progress: show tqdm progress bars (rank 0 only).
        on_epoch: called as ``on_epoch(epoch, result_so_far)`` after each epoch (rank 0 only).
        on_step: called as ``on_step(result_so_far)`` after each optimizer step (rank 0 only).
        checkpoint: write a resumable checkpoint here (atomically) after every epoch, at the
            end and on Ctrl-C (rank 0 only). It holds the model's ``state_dict`` (which
            carries every estimator's generator and buffers, ``<layer>.estimator.*``), the
            optimizer's state, the position (epoch, step), the data-order generator's state
            at the epoch's start, the global RNG state and the result so far.
        resume: continue from such a checkpoint: the run ends bit for bit as if it had not
            stopped. ``config`` must match the checkpoint's except ``epochs``, ``max_steps``
            and ``device``.

    Returns:
        The :class:`TrainResult`; its ``model_obj`` is the trained (unwrapped) model.

    Raises:
        ValueError: bad estimator spec, model, data set, optimizer, count, device, a batch
            larger than the training set, or a checkpoint that does not fit ``config``.
    """
    config.validate()
    state = _read_checkpoint(resume, config) if resume is not None else None
    if ddp and (resume is not None):
        raise ValueError("--resume is not supported with --ddp")
    dist = init_distributed(config.device) if ddp else Dist(device=resolve_device(config.device))
    lr = config.learning_rate
    if split is None:
        split = load_data(config.data, data_dir=config.data_dir, image_size=config.image_size)
    if config.batch_size > len(split.x_train):
        raise ValueError(f"--batch-size {config.batch_size} is larger than the training set "
                         f"({len(split.x_train)} examples of {split.name})")
    if config.batch_size < dist.world:
        raise ValueError(f"--batch-size {config.batch_size} is smaller than the number of "
                         f"processes ({dist.world})")
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
    first_epoch, skip, loss_sum, seen, elapsed = 1, 0, 0.0, 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        order_gen.set_state(state["order_generator"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and dist.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], dist.device)
        for key in ("train_loss", "test_accuracy_per_epoch", "epoch_seconds", "steps",
                    "test_accuracy"):
            setattr(result, key, state["result"][key])
        first_epoch, skip = state["epoch"], state["step_in_epoch"]
        loss_sum, seen, elapsed = state["loss_sum"], state["seen"], state["elapsed"]
    lead = dist.rank == 0
    show = progress and lead

    def save(epoch: int, step_in_epoch: int, epoch_start_state: Tensor) -> None:
        if checkpoint is None or not lead:
            return
        save_checkpoint(checkpoint, {
            "format": CHECKPOINT_FORMAT, "config": asdict(config), "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "order_generator": epoch_start_state, "rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state(dist.device) if dist.device.type == "cuda"
                         else None),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "loss_sum": loss_sum, "seen": seen,
            "elapsed": elapsed, "result": result.to_json(),
        })

    def done() -> bool:
        return config.max_steps is not None and result.steps >= config.max_steps

    net.train()
    with _StopRequest() as stop:
        for epoch in range(first_epoch, config.epochs + 1):
            if done():
                break
            start = time.perf_counter()
            epoch_state = order_gen.get_state()
            steps = list(global_batches(len(x_train), config.batch_size, order_gen))
            bar = progress_bar(steps[skip:], show, desc=f"{config.estimator} "
                               f"B={config.batch_size} epoch {epoch}/{config.epochs}",
                               leave=False, unit="step")
            for i, idx in enumerate(bar, start=skip):
                if done():
                    break
                part = shard(idx, dist.rank, dist.world).to(dist.device)
                out = net(x_train[part])
                loss = (F.cross_entropy(out, y_train[part], reduction="sum")
                        * (dist.world / len(idx)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                result.steps += 1
                loss_sum += float(loss.detach()) * len(idx) / dist.world
                seen += len(idx)
                if on_step is not None and lead:
                    on_step(result)
                if _agree(stop.requested, dist) and i + 1 < len(steps) and not done():
                    elapsed += time.perf_counter() - start
                    result.interrupted = True
                    save(epoch, i + 1, epoch_state)
                    break
            if result.interrupted:
                break
            skip = 0
            if dist.device.type == "cuda":
                torch.cuda.synchronize(dist.device)
            result.epoch_seconds.append(elapsed + time.perf_counter() - start)
            (total,) = dist.all_sum([loss_sum])
            result.train_loss.append(total / max(seen, 1))
            loss_sum, seen, elapsed = 0.0, 0, 0.0
            _, acc = evaluate(model, split.x_test, split.y_test, dist=dist)
            result.test_accuracy_per_epoch.append(acc)
            result.test_accuracy = acc
            if on_epoch is not None and lead:
                on_epoch(epoch, result)
            save(epoch + 1, 0, order_gen.get_state())
            if _agree(stop.requested, dist) and epoch < config.epochs and not done():
                result.interrupted = True
                break

    result.model_obj = model
    if result.interrupted:
        return result
    # copies, not views: a view would count the whole training set's storage as saved
    xb, yb = x_train[: config.batch_size].clone(), y_train[: config.batch_size].clone()
    exact_model = build_model(config.model, split).to(dist.device)
    result.exact_saved_activation_bytes, result.saved_activation_bytes = step_saved_bytes(
        model, exact_model, xb, yb)
    result.memory_ratio = (result.exact_saved_activation_bytes
                           / max(result.saved_activation_bytes, 1))
    return result


def _agree(flag: bool, dist: Dist) -> bool:
    """``flag`` on any process (every process stops at the same step under DDP)."""
    if not dist.active:
        return flag
    return bool(dist.all_sum([float(flag)])[0] > 0)


def _read_checkpoint(path: str | os.PathLike[str], config: TrainConfig) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ValueError(f"--resume {str(path)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a usage error here
        raise ValueError(f"--resume {str(path)!r} is not a readable checkpoint: {err}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"--resume {str(path)!r} is not a training checkpoint written by "
                         "--checkpoint (a --save file holds only the weights)")
    mine = asdict(config)
    diff = [f"--{k.replace('_', '-')} {state['config'][k]!r} there, {mine[k]!r} here"
            for k in _RESUME_KEYS if state["config"].get(k) != mine[k]]
    if diff:
        raise ValueError(f"--resume {str(path)!r} was made by another run: {'; '.join(diff)}")
    return state


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
    return save_checkpoint(path, result.model_obj.state_dict())


def _vs_exact(result: TrainResult) -> str:
    words = ratio_words(result.exact_saved_activation_bytes, result.saved_activation_bytes)
    return words if "exact" in words else f"{words} than exact"


def run_line(result: TrainResult) -> str:
    """One line per finished run: spec, batch, seed, accuracy, seconds per epoch, memory."""
    secs = statistics.median(result.epoch_seconds) if result.epoch_seconds else float("nan")
    return (
        f"{result.estimator:<12} B={result.batch_size:<4} seed {result.seed}  test acc "
        f"{100 * result.test_accuracy:6.2f}%  {secs:5.2f} s/epoch  saved "
        f"{format_bytes(result.saved_activation_bytes)} "
        f"({_vs_exact(result)})"
    )



def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("train", help="train one model with one estimator",
                              **spec_epilog())
    add_common(p)
    add_training(p)
    p.add_argument("--estimator", type=estimator_spec, default="exact",
                   help="estimator spec (see below)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--save", default=None, help="save the trained model's state_dict here")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="write a resumable checkpoint here after every epoch and on Ctrl-C")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a --checkpoint file (same flags; --epochs and "
                   "--max-steps may grow)")
    p.add_argument("--ddp", action="store_true",
                   help="DistributedDataParallel (launch with torchrun; gloo on CPU, nccl on GPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train as ``args`` say, print the summary, write the JSON and weights asked for."""
    import torch.distributed as dist

    config = TrainConfig(
        model=args.model, data=args.data, estimator=args.estimator, batch_size=args.batch_size,
        epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, seed=args.seed,
        data_dir=args.data_dir, image_size=args.image_size, device=args.device,
        max_steps=args.max_steps, skip_first=args.skip_first,
    )
    config.validate()
    for flag in ("json", "save", "checkpoint"):
        output_file(f"--{flag}", getattr(args, flag))
    result = train(config, ddp=args.ddp, progress=not args.no_progress,
                   on_epoch=lambda e, r: echo(epoch_line(e, r)), checkpoint=args.checkpoint,
                   resume=args.resume)
    if dist.is_initialized() and dist.get_rank() != 0:
        return 130 if result.interrupted else 0
    print(result.summary())
    if args.json:
        print(f"wrote {write_json(args.json, result.to_json())}")
    if args.save:
        print(f"wrote {save_model(result, args.save)}")
    if result.interrupted:
        if args.checkpoint:
            print(f"wrote {args.checkpoint}; continue with the same command plus "
                  f"--resume {args.checkpoint}")
        else:
            print("progress not kept for resuming: pass --checkpoint PATH to make runs resumable")
        return 130
    return 0
