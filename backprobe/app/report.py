"""Reporting for the app: byte sizes, the one table printer, the one JSON writer, figures.

matplotlib and tqdm are imported inside the functions that use them, so importing this module
costs neither.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "echo", "finite", "format_bytes", "progress_bar", "pyplot", "ratio_words",
           "save_checkpoint", "save_figure", "table", "write_json"]


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units; whole bytes below 1 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def ratio_words(exact: float, other: float) -> str:
    """How ``other`` bytes compare with ``exact`` bytes, in words.

    ``"3.2x less"``, ``"1.3x more"``, or ``"same as exact"`` when the ratio rounds to 1.0
    both ways (never "1.0x less").
    """
    if exact == other:
        return "same as exact"
    if other <= 0:
        return "none kept" if exact > 0 else "same as exact"
    r = exact / other
    if f"{r:.1f}" == "1.0" and f"{1 / r:.1f}" == "1.0":
        return "about the same as exact"
    return f"{r:.1f}x less" if r > 1 else f"{1 / r:.1f}x more"


def table(rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None, *,
          markdown: bool = False) -> str:
    """Format ``rows`` (the first one is the header) as a text or markdown table.

    Args:
        rows: cells as strings; every row has the header's length.
        right: ``right[i]`` right-aligns column ``i`` (default: all left-aligned).
        markdown: a GitHub markdown table (``| a | b |``, cells unpadded, alignment in the
            rule row) instead of aligned plain text.

    Returns:
        The table, lines joined by newlines (a rule under the header).

    Raises:
        ValueError: if ``rows`` is empty or rows differ in length.
    """
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("table: rows must be non-empty and all of the header's length")
    align = list(right) if right is not None else [False] * len(rows[0])
    if markdown:  # unpadded cells; the rule row carries the alignment
        rule = "|" + "|".join("---:" if a else "---" for a in align) + "|"
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join([lines[0], rule, *lines[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if a else c.ljust(w)
                       for c, w, a in zip(row, widths, align)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def finite(payload: Any) -> Any:
    """``payload`` with every non-finite float (NaN, inf) replaced by ``None``.

    JSON has no NaN: ``json.dumps`` would write a bare ``NaN`` that strict readers reject.
    """
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {k: finite(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [finite(v) for v in payload]
    return payload


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    Parent folders are created. A reader never sees a half-written file, and a failure (or
    Ctrl-C) inside the block leaves any previous ``path`` untouched.

    Example:
        >>> with atomic_path("results/a.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}",
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON at ``path``, atomically, creating parent folders.

    Non-finite floats are written as ``null`` (see :func:`finite`), so the file is valid JSON.

    Returns:
        The path written.
    """
    text = json.dumps(finite(payload), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_checkpoint(path: str | os.PathLike[str], payload: Any) -> Path:
    """``torch.save(payload)`` at ``path``, atomically.

    Returns:
        The path written.
    """
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``path`` atomically (parent folders created) and close it.

    Returns:
        The path written.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or None)
    finally:
        pyplot().close(fig)
    return path


def progress_bar(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> Any:
    """``iterable`` wrapped in a tqdm bar when ``enabled`` (``kwargs`` go to tqdm).

    When standard error is not a terminal (a log file, CI), there is no bar to redraw: a
    top-level loop (``leave`` not ``False``) prints one line saying what it runs, and nested
    loops print nothing.
    """
    if not enabled:
        return iterable
    if not _is_terminal(sys.stderr):
        if kwargs.get("leave", True) is not False:
            total = kwargs.get("total")
            if total is None and hasattr(iterable, "__len__"):
                total = len(iterable)  # type: ignore[arg-type]
            what = kwargs.get("desc", "running")
            unit = kwargs.get("unit", "it")
            print(f"{what}: {total} {unit}{'s' if total != 1 else ''}" if total is not None
                  else f"{what} ...", file=sys.stderr, flush=True)
        return _Quiet(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kwargs)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Quiet:
    """An iterable with tqdm's ``set_postfix_str``/``close``/``update`` as no-ops."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable)

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        """No-op."""

    def update(self, *args: Any, **kwargs: Any) -> None:
        """No-op."""

    def close(self) -> None:
        """No-op."""


def echo(line: str) -> None:
    """Print a line without breaking an active tqdm progress bar."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the cli extra
        print(line, flush=True)
        return
    tqdm.write(line)
    sys.stdout.flush()
