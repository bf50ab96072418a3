"""Reporting for the app: byte sizes, the one table printer, the one JSON writer, figures.

matplotlib and tqdm are imported inside the functions that use them, so importing this module
costs neither.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["echo", "format_bytes", "progress_bar", "pyplot", "save_figure", "table", "write_json"]


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units; whole bytes below 1 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


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


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON at ``path``, creating parent folders.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``path`` (parent folders created) and close it.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def progress_bar(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> Any:
    """``iterable`` wrapped in a tqdm bar when ``enabled`` (``kwargs`` go to tqdm)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, dynamic_ncols=True, **kwargs)


def echo(line: str) -> None:
    """Print a line without breaking an active tqdm progress bar."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the cli extra
        print(line, flush=True)
        return
    tqdm.write(line)
    sys.stdout.flush()
