"""The benchmarks' shared harness: the machine, the timing, the outputs.

Every ``benchmarks/bench_*.py`` imports this module (it sits beside them, so
``python benchmarks/bench_x.py`` finds it):

* :func:`machine_info`: what the numbers were measured on (CPU, cores, threads, versions,
  load average, date);
* :func:`time_interleaved`: candidates timed round-robin in the same run, each compared with
  the reference round by round (median of per-round ratios; absolute medians kept);
* :func:`arguments`: the flags every script shares (``--threads``, ``--clock``, ``--out``),
  which also sets torch's threads and logs the machine;
* :func:`write_json` (``{"machine": ..., **payload}``) and :func:`markdown_table`.

Outputs: casual runs write under the git-ignored ``results/`` folder (``--out``, default
``results/bench``); results meant for the README are written with
``--out benchmarks/results`` and committed.

Conventions: ``speedup > 1`` means faster than the reference; ``memory_reduction`` is
``reference bytes / candidate bytes``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from backprobe.app._checks import output_dir, positive
from backprobe.app.report import table
from backprobe.app.report import write_json as _write_json

REFERENCE = "exact"
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
DEFAULT_OUT = Path("results") / "bench"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, threads, versions, load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }



def time_interleaved(
    fns: dict[str, Callable[[], object]], *, repeats: int = 10, warmup: int = 2,
    reference: str = REFERENCE, budget_s: float | None = None, min_repeats: int = 3,
    clock: str = "wall",
) -> dict[str, dict[str, float]]:
    """Time candidates round-robin and compare each with ``reference`` round by round.

    Each round calls every candidate once, starting one further along each round (so no
    candidate always runs first). Warm-up rounds are discarded.

    Args:
        fns: name -> zero-argument callable; must contain ``reference``.
        repeats: timed rounds.
        warmup: untimed rounds first.
        reference: the key the ratios are taken against (the exact path).
        budget_s: stop after this many seconds of timed rounds (once ``min_repeats`` ran).
        min_repeats: rounds always timed, whatever the budget.
        clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``: CPU
            seconds of all this process's threads; on a machine shared with other jobs run
            it with one torch thread, where it is far steadier than wall time).

    Returns:
        ``{name: {"median_s", "speedup", "repeats"}}`` where ``speedup`` is the median over
        rounds of ``t_reference / t_name`` (1.0 for the reference itself).

    Raises:
        KeyError: if ``reference`` is not in ``fns``.
    """
    if reference not in fns:
        raise KeyError(f"time_interleaved: reference {reference!r} not among {list(fns)}")
    if clock not in CLOCKS:
        raise ValueError(f"time_interleaved: clock must be one of {list(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for i in range(warmup + repeats):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            t0 = now()
            fns[name]()
            dt = now() - t0
            if i >= warmup:
                times[name].append(dt)
        if i < warmup:
            start = time.perf_counter()
        elif budget_s is not None and i + 1 - warmup >= min_repeats:
            if time.perf_counter() - start > budget_s:
                break
    ref = times[reference]
    return {
        n: {
            "median_s": statistics.median(ts),
            "speedup": statistics.median(r / t for r, t in zip(ref, ts, strict=True)),
            "repeats": len(ts),
        }
        for n, ts in times.items()
    }



def timed(fn: Callable[[], object], clock: str = "wall") -> float:
    """Seconds one call of ``fn`` takes on ``clock`` (for timings that need an untimed setup
    between calls; otherwise use :func:`time_interleaved`)."""
    now = CLOCKS[clock]
    t0 = now()
    fn()
    return now() - t0


def arguments(doc: str | None, *, grid: bool = False,
              add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Parse a benchmark script's flags, set torch's threads, log the machine to stderr.

    Shared flags: ``--threads``, ``--clock`` (``wall`` or ``cpu``: process CPU time, steadier
    on a shared machine with one thread), ``--out`` (folder of the outputs, default
    ``results/bench``) and ``--suffix``; with ``grid``, ``--quick``/``--full`` (``args.grid``),
    ``--r``, ``--repeats``, ``--warmup`` and ``--budget``.

    Args:
        doc: the script's docstring (the help text).
        grid: add the grid flags of the layer and network benchmarks.
        add: adds the script's own flags.

    Returns:
        The parsed flags.
    """
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if grid:
        size = p.add_mutually_exclusive_group()
        size.add_argument("--quick", dest="grid", action="store_const", const="quick",
                          default="quick")
        size.add_argument("--full", dest="grid", action="store_const", const="full")
        p.add_argument("--r", default=None, help="comma-separated probe counts (default: grid's)")
        p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: grid's)")
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("--budget", type=float, default=None,
                       help="seconds per timing, then stop early")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or process CPU time (steadier when shared; use --threads 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="output folder (default results/bench, git-ignored; "
                   "benchmarks/results for the README's figures)")
    p.add_argument("--suffix", default="", help="appended to the output file names")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    if add is not None:
        add(p)
    args = p.parse_args()
    try:
        check_arguments(args)
    except ValueError as err:
        p.exit(2, f"{p.prog}: error: {err}\n")
    global _QUIET
    _QUIET = args.no_progress
    if args.threads:
        torch.set_num_threads(args.threads)
    if not _QUIET:
        print(machine_info(), file=sys.stderr)
    return args


def check_arguments(args: argparse.Namespace) -> None:
    """Check the shared flags before any work (one-line ``ValueError`` naming the flag).

    Raises:
        ValueError: ``--repeats``/``--threads``/``--r`` below 1, ``--warmup`` below 0,
            ``--budget`` not positive, or an ``--out`` that cannot be written.
    """
    for flag in ("repeats", "threads"):
        positive(f"--{flag}", getattr(args, flag, None))
    for r in ints(getattr(args, "r", None)) or []:
        positive("--r", r, allow_none=False)
    if getattr(args, "warmup", 0) < 0:
        raise ValueError(f"--warmup must be 0 or more, got {args.warmup}")
    budget = getattr(args, "budget", None)
    if budget is not None and not budget > 0:
        raise ValueError(f"--budget must be a positive number of seconds, got {budget}")
    output_dir("--out", args.out)


def ints(text: str | None) -> list[int] | None:
    """``"4,16" -> [4, 16]``; ``None`` stays ``None``.

    Raises:
        ValueError: an item is not an integer.
    """
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


_QUIET = False


def progress(msg: str) -> None:
    """A progress line on stderr (nothing under ``--no-progress``)."""
    if not _QUIET:
        print(msg, file=sys.stderr, flush=True)


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return ""
    if key.endswith("_s"):
        return f"{v * 1e3:.1f} ms"
    if key.endswith("bytes"):
        return f"{v / 2**10:.1f} KiB" if v < 2**20 else f"{v / 2**20:.1f} MiB"
    if key == "share":
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.0f}x" if v >= 100 else f"{v:.2f}x"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a markdown table: times in ms, bytes in KiB/MiB, ratios as ``1.23x``."""
    cells = [list(columns)] + [[_fmt(c, r.get(c)) for c in columns] for r in rows]
    return table(cells, markdown=True)


def write_json(path: str | Path, **payload: Any) -> Path:
    """Write ``{"machine": machine_info(), **payload}`` as indented JSON; returns the path."""
    return _write_json(path, {"machine": machine_info(), **payload})
