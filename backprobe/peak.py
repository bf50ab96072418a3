"""The peak memory of one training step, and where in the network it sits.

:func:`peak_memory` runs real training steps (zero the gradients, forward, loss, backward,
optimizer step) and reports the highest number of bytes that were allocated at once during
the last step, *above* what was allocated when that step began (weights, optimizer state,
the input batch: everything that already existed). That is the figure that decides whether
a batch fits, unlike the bytes autograd saves for backward
(:func:`backprobe.saved_activation_bytes`), which leave out every transient: output
gradients, the workspaces of convolution backward, reconstructed inputs, weight gradients.

What is counted:

* **CUDA**: ``torch.cuda.max_memory_allocated`` of the input's device (tensor bytes handed out
  by the caching allocator, rounded up to its 512-byte blocks; the cache reserved but unused
  is not counted).
* **CPU**: every allocation and free made by PyTorch's CPU allocator, in order, from
  ``torch.profiler`` with ``profile_memory=True`` (its raw memory events, one per
  allocation or free, with the size). The running sum of those events is the memory held
  by tensors; its maximum is the peak. Exact for tensor memory, independent of glibc's
  caching and of the resident set; memory that bypasses the allocator (oneDNN scratch,
  Python objects) is not counted.

Where it sits: markers are placed at the start of every leaf module's forward and at the
moment the gradient of every leaf module's output arrives in backward (a tensor hook, which
changes no memory), plus ``"loss"``, ``"backward"`` and ``"step"``. Each segment between two
markers gets its own peak, so ``result.segments`` reads as the memory profile of the step
layer by layer, and ``result.where`` names the segment holding the peak.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PeakMemory", "Segment", "largest_batch", "peak_memory"]


@dataclass
class Segment:
    """Memory between two markers of one training step (bytes above the step's start).

    Attributes:
        phase: ``"forward"``, ``"loss"``, ``"backward"`` or ``"step"``.
        module: the leaf module's qualified name (``""`` for the model-level phases). In
            backward, the segment starts when the gradient of this module's output arrives,
            so it holds this module's backward (and any functional ops before the next one).
        start: bytes held when the segment began.
        peak: the most bytes held during the segment.
    """

    phase: str
    module: str
    start: int
    peak: int


@dataclass
class PeakMemory:
    """Result of :func:`peak_memory`.

    Attributes:
        peak: the most bytes allocated at once during the step, above ``baseline``.
        baseline: bytes allocated when the measured step began (CUDA: on that device;
            CPU: not measured, ``-1``: the profiler sees only what the step does).
        end: bytes still held after the step above ``baseline`` (e.g. gradients of a step
            that starts with ``grad=None``).
        device: the device measured.
        segments: the step, segment by segment (see :class:`Segment`).
    """

    peak: int
    baseline: int
    end: int
    device: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def where(self) -> Segment | None:
        """The segment holding the peak (the first, if several reach it)."""
        return max(self.segments, key=lambda s: s.peak, default=None)

    def by_phase(self) -> dict[str, int]:
        """The peak of each phase (``forward``, ``loss``, ``backward``, ``step``)."""
        out: dict[str, int] = {}
        for s in self.segments:
            out[s.phase] = max(out.get(s.phase, 0), s.peak)
        return out

    def table(self, top: int | None = None) -> str:
        """The segments as a plain-text table (``top``: only the largest peaks, in order)."""
        segs = self.segments
        if top is not None:
            keep = set(map(id, sorted(segs, key=lambda s: -s.peak)[:top]))
            segs = [s for s in segs if id(s) in keep]
        lines = [f"peak {self.peak / 2**20:.1f} MiB above baseline ({self.device})",
                 f"{'phase':<9} {'module':<32} {'start MiB':>10} {'peak MiB':>10}"]
        for s in segs:
            lines.append(f"{s.phase:<9} {s.module:<32.32} {s.start / 2**20:>10.1f} "
                         f"{s.peak / 2**20:>10.1f}")
        return "\n".join(lines)


class _Markers:
    """Named markers placed during a step, with a backend-specific memory reading."""

    def __init__(self, mark: Callable[[str], None]) -> None:
        self.mark = mark
        self.handles: list[Any] = []

    def install(self, model: nn.Module) -> None:
        for name, m in model.named_modules():
            if next(m.children(), None) is not None:
                continue
            self.handles.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: self.mark(f"forward\t{name}")))
            self.handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: self._hook_grad(out, name)))

    def _hook_grad(self, out: Any, name: str) -> None:
        if isinstance(out, Tensor) and out.requires_grad and torch.is_grad_enabled():
            out.register_hook(lambda g, name=name: self.mark(f"backward\t{name}"))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _check(model: Any, x: Any, loss_fn: Any, optimizer: Any, warmup: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"peak_memory: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"peak_memory: x must be a Tensor, got {type(x).__name__}")
    if not callable(loss_fn):
        raise TypeError("peak_memory: loss_fn must be callable, e.g. nn.CrossEntropyLoss()")
    if optimizer is not None and not hasattr(optimizer, "step"):
        raise TypeError("peak_memory: optimizer must have a step() method (or be None)")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"peak_memory: warmup must be an integer >= 0, got {warmup!r}")


def _zero_grad(model: nn.Module, optimizer: Any) -> None:
    model.zero_grad(set_to_none=True)
    if optimizer is not None and hasattr(optimizer, "zero_grad"):
        optimizer.zero_grad(set_to_none=True)


def _step(model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[..., Tensor],
          optimizer: Any, mark: Callable[[str], None]) -> None:
    """One training step after ``zero_grad(set_to_none=True)``, marking its phases."""
    mark("forward\t")
    out = model(x)
    mark("loss\t")
    loss = loss_fn(out, y)
    del out
    mark("backward\t")
    loss.backward()
    del loss
    mark("step\t")
    if optimizer is not None:
        optimizer.step()
    mark("end\t")


def _segments(events: list[tuple[str, int, int]]) -> list[Segment]:
    """Segments from ``(label, start, peak)`` triples, dropping the final ``end`` marker."""
    segs = []
    for label, start, peak in events:
        phase, module = label.split("\t", 1)
        if phase != "end":
            segs.append(Segment(phase, module, start, peak))
    return segs


def _peak_cuda(model: nn.Module, run: Callable[[Callable[[str], None]], None],
               device: torch.device) -> PeakMemory:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    events: list[tuple[str, int, int]] = []

    def mark(label: str) -> None:
        torch.cuda.synchronize(device)
        now = torch.cuda.memory_allocated(device) - base
        if events:  # close the previous segment
            prev = events[-1]
            events[-1] = (prev[0], prev[1], torch.cuda.max_memory_allocated(device) - base)
        torch.cuda.reset_peak_memory_stats(device)
        events.append((label, now, now))

    run(mark)
    segs = _segments(events)
    end = torch.cuda.memory_allocated(device) - base
    return PeakMemory(max(s.peak for s in segs), base, end, str(device), segs)


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to the null device for the block (C++ log lines).

    Only the profiler's start and stop run inside it, never the measured step, so no
    warning of the user's code is hidden.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_cpu(model: nn.Module, run: Callable[[Callable[[str], None]], None]) -> PeakMemory:
    from torch.profiler import ProfilerActivity, profile, record_function

    def mark(label: str) -> None:
        with record_function("backprobe.peak\t" + label):
            pass

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():  # Kineto prints a "USDT ... profiler_start" line
        prof.start()
    try:
        run(mark)
    finally:
        with _quiet_native_stderr():  # ... and "profiler_stop"
            prof.stop()
    raw = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    # (time, order, kind, payload): allocations/frees and markers, in time order
    items: list[tuple[int, int, int, Any]] = []
    for i, e in enumerate(raw):
        name = e.name()
        if name == "[memory]":
            if e.device_type() == torch.autograd.DeviceType.CPU:
                items.append((e.start_ns(), i, 1, int(e.nbytes())))
        elif name.startswith("backprobe.peak\t"):
            items.append((e.start_ns(), i, 0, name.split("\t", 1)[1]))
    items.sort(key=lambda t: (t[0], t[1]))
    held, events = 0, []
    for _, _, kind, payload in items:
        if kind == 0:
            events.append((payload, held, held))
        else:
            held += payload
            if events and held > events[-1][2]:
                events[-1] = (events[-1][0], events[-1][1], held)
    segs = _segments(events)
    if not segs:
        raise RuntimeError("peak_memory: the profiler recorded no markers")
    return PeakMemory(max(s.peak for s in segs), -1, held, "cpu", segs)


def peak_memory(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], *,
    optimizer: Any = None, warmup: int = 1,
) -> PeakMemory:
    """Peak memory of one training step above what was allocated before it.

    A step is ``loss_fn(model(x), y).backward()`` and ``optimizer.step()`` (if given),
    measured from just after ``zero_grad(set_to_none=True)``: the baseline holds the weights,
    optimizer state and batch but no gradients, and the gradients count in the peak.
    ``warmup`` unmeasured steps run first, so that lazily created state (optimizer moments,
    workspaces, estimator buffers) exists before the measured step, as in steady training.
    The steps are real: the model, its estimators' generators and the optimizer advance
    ``warmup + 1`` steps (measure a copy if that matters).
    See the module docstring for what is counted on CPU and CUDA.

    Args:
        model: the network (in training mode, as it will be trained).
        x: input batch ``[N, ...]``, on the device to measure.
        y: targets for ``loss_fn``.
        loss_fn: e.g. ``nn.CrossEntropyLoss()``.
        optimizer: anything with ``step()`` and ``zero_grad()``; ``None`` measures forward
            and backward only.
        warmup: unmeasured steps before the measured one.

    Returns:
        :class:`PeakMemory` (``.peak`` in bytes; ``.segments`` layer by layer; ``.where``).

    Raises:
        TypeError: on a wrong argument type.
        ValueError: on a negative ``warmup``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.ReLU())
        >>> res = peak_memory(net, torch.randn(64, 100), torch.randn(64, 100),
        ...                   torch.nn.MSELoss())
        >>> res.peak >= 64 * 100 * 4  # at least one activation-sized tensor
        True
    """
    _check(model, x, loss_fn, optimizer, warmup)
    for _ in range(warmup):
        _zero_grad(model, optimizer)
        _step(model, x, y, loss_fn, optimizer, lambda label: None)
    _zero_grad(model, optimizer)  # the previous step's gradients are not part of this one
    markers = _Markers(lambda label: None)

    def run(mark: Callable[[str], None]) -> None:
        markers.mark = mark
        markers.install(model)
        try:
            _step(model, x, y, loss_fn, optimizer, mark)
        finally:
            markers.remove()

    if x.device.type == "cuda":
        return _peak_cuda(model, run, x.device)
    if x.device.type != "cpu":
        raise ValueError(f"peak_memory: device {x.device} is not supported (cpu or cuda)")
    return _peak_cpu(model, run)


def largest_batch(small: tuple[int, int], large: tuple[int, int], budget: int) -> int:
    """Largest batch whose total memory fits ``budget``, by a linear fit in the batch size.

    The rule used by ``backprobe memory --budget`` and ``benchmarks/bench_peak.py``: the
    total of a step (weights + optimizer state + input batch + :func:`peak_memory`'s peak)
    is measured at two batch sizes and taken as ``intercept + slope * batch``. This is an
    extrapolation: allocator rounding, workspaces and algorithm choices may not scale
    linearly far from the measured sizes.

    Args:
        small: ``(batch, total bytes)`` at the smaller batch size.
        large: ``(batch, total bytes)`` at a strictly larger batch size.
        budget: bytes available.

    Returns:
        The largest batch ``b >= 0`` with ``intercept + slope * b <= budget`` (``0`` when even
        the fixed part does not fit), or ``-1`` when the total does not grow with the batch.

    Raises:
        ValueError: the batch sizes are not ``0 < small < large``, or ``budget`` is negative.

    Example:
        >>> largest_batch((8, 1_000), (16, 1_800), 10_000)  # 200 + 100 * b
        98
    """
    (b1, t1), (b2, t2) = small, large
    if not 0 < b1 < b2:
        raise ValueError(f"largest_batch: need 0 < small batch < large batch, got {b1}, {b2}")
    if budget < 0:
        raise ValueError(f"largest_batch: budget must be >= 0 bytes, got {budget}")
    slope = (t2 - t1) / (b2 - b1)
    if slope <= 0:
        return -1
    intercept = t1 - slope * b1
    return max(0, math.floor((budget - intercept) / slope))
