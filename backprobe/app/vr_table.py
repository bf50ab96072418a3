"""``backprobe memory --vr``: SAGA's gradient-table memory next to El Hanchi's table.

El Hanchi ("Time and Memory Efficient Variance Reduced Optimization and Sampling for Deep
Learning") lists GB (``1e9`` bytes, float32, ``N = 1e6`` examples) for LeNet-5, VGG-16 and
ResNet-34 under five storages. :func:`vr_memory_table` computes ours with
:func:`backprobe.optim.vr_memory.storage_bytes`; :func:`format_vr_table` prints both. Which of
the paper's figures reproduce, and what the others imply, is worked out in
``benchmarks/bench_vr_memory.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from backprobe.app import models
from backprobe.app.report import table
from backprobe.optim._base import check
from backprobe.optim.vr_memory import storage_bytes

__all__ = ["COLUMNS", "GB", "PAPER_TABLE", "PaperRow", "format_vr_table", "paper_model",
           "vr_memory_table"]

GB = 1e9
"""Bytes per GB in the tables (decimal, as the paper)."""

COLUMNS: tuple[tuple[str, str], ...] = (
    ("Naive", "naive"), ("Normal", "normal"), ("rank-1", "rank1"),
    ("Partition-128", "partition128"), ("rank-1 + Partition-128", "rank1+partition128"),
)
"""The paper's five columns: (heading, storage string)."""


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's table.

    Attributes:
        title: model name as in the paper.
        gb: the paper's figures in GB, keyed by the storage strings of :data:`COLUMNS`.
        build: builds the model (called under ``torch.device("meta")``).
        num_examples: training-set size the figures assume.
        dtype: element type the figures assume.
    """

    title: str
    gb: dict[str, float]
    build: Callable[[], nn.Module]
    num_examples: int = 10**6
    dtype: torch.dtype = torch.float32


PAPER_TABLE: dict[str, PaperRow] = {
    "lenet5": PaperRow("LeNet-5", {"naive": 246, "normal": 13.5, "rank1": 4.15,
                                   "partition128": 1.92, "rank1+partition128": 0.03},
                       lambda: models.lenet5(1, 10, 28)),
    "vgg16": PaperRow("VGG16", {"naive": 5.53e5, "normal": 5.90e4, "rank1": 337,
                                "partition128": 630, "rank1+partition128": 2.63},
                      lambda: models.vgg16(3, 1000, 224)),
    "resnet34": PaperRow("ResNet34", {"naive": 18.7e5, "normal": 8.45e4, "rank1": 421,
                                      "partition128": 764, "rank1+partition128": 3.29},
                         lambda: models.resnet34(3, 1000, 224)),
}
"""The paper's table (GB, float32, ``N = 1e6``) and how to build each model."""


def _paper_key(name: str) -> str | None:
    key = name.strip().lower().replace("-", "").replace("_", "")
    return {"lenet": "lenet5"}.get(key, key if key in PAPER_TABLE else None)


def paper_model(name: str) -> nn.Module:
    """Build one of the paper's models on the meta device (no parameter memory).

    Args:
        name: ``"lenet5"``, ``"vgg16"`` or ``"resnet34"`` (case and dashes ignored).

    Returns:
        The model, its parameters on ``torch.device("meta")``.

    Raises:
        ValueError: unknown name.
    """
    key = _paper_key(name)
    if key is None:
        raise ValueError(f"unknown paper model {name!r}; valid names: {', '.join(PAPER_TABLE)}")
    with torch.device("meta"):
        return PAPER_TABLE[key].build()


def vr_memory_table(model: str | nn.Module, num_examples: int | None = None, *,
                    dtype: torch.dtype = torch.float32, rank: int = 1,
                    partition: int = 128) -> dict[str, float]:
    """The paper's five columns for one model, in GB (``1e9`` bytes).

    Args:
        model: a paper model name (``"lenet5"``, ``"vgg16"``, ``"resnet34"``) or a module.
        num_examples: training-set size; default the paper's (``1e6``) for a paper model.
        dtype: element type of the stored numbers.
        rank: rank of the low-rank columns.
        partition: group size of the partition columns.

    Returns:
        ``{storage string: GB}`` for ``naive``, ``normal``, ``rankR``, ``partitionM``,
        ``rankR+partitionM``.

    Raises:
        ValueError: unknown model name, or ``num_examples`` missing for a module.
        TypeError: bad argument types.

    Example:
        >>> round(vr_memory_table("lenet5")["naive"], 1)
        246.8
    """
    check("rank", rank, "count")
    check("partition", partition, "count")
    if isinstance(model, str):
        module = paper_model(model)
        key = _paper_key(model)
        if num_examples is None and key is not None:
            num_examples = PAPER_TABLE[key].num_examples
    elif isinstance(model, nn.Module):
        module = model
    else:
        raise TypeError(f"model must be a name or an nn.Module, got {type(model).__name__}")
    if num_examples is None:
        raise ValueError("num_examples is required for a model outside PAPER_TABLE")
    specs = ("naive", "normal", f"rank{rank}", f"partition{partition}",
             f"rank{rank}+partition{partition}")
    return {s: storage_bytes(module, num_examples, s, dtype) / GB for s in specs}


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-2:
        return f"{x:.3g}"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def format_vr_table(names: Iterable[str | nn.Module] | str | nn.Module = tuple(PAPER_TABLE),
                    num_examples: int | None = None, *,
                    dtype: torch.dtype = torch.float32) -> str:
    """A markdown table of our figures next to the paper's.

    Paper figures are shown only when the assumptions match the paper's (``N`` and dtype);
    otherwise that column reads ``-``.

    Args:
        names: paper model names or modules (a single one is accepted).
        num_examples: training-set size; default the paper's for each paper model.
        dtype: element type of the stored numbers.

    Returns:
        The table as text, ending with a footnote on the assumptions.

    Raises:
        ValueError: unknown model name, or ``num_examples`` missing for a module.
    """
    items = [names] if isinstance(names, str | nn.Module) else list(names)
    heads = {spec: head for head, spec in COLUMNS}
    rows = [["model", "storage", "ours (GB)", "paper (GB)", "ours/paper"]]
    ns: list[str] = []
    hidden = False
    for item in items:
        key = _paper_key(item) if isinstance(item, str) else None
        row = PAPER_TABLE[key] if key is not None else None
        title = row.title if row else (item if isinstance(item, str) else type(item).__name__)
        n = num_examples if num_examples is not None else (row.num_examples if row else None)
        ours = vr_memory_table(item, n, dtype=dtype)
        comparable = row is not None and n == row.num_examples and dtype == row.dtype
        hidden = hidden or (row is not None and not comparable)
        ns.append(f"{title}: N={n:,}")
        for spec, gb in ours.items():
            paper = row.gb[spec] if (row and comparable) else None
            rows.append([title, heads[spec], _fmt(gb), "-" if paper is None else _fmt(paper),
                         f"{gb / paper:#.3g}" if paper else "-"])
    foot = (f"GB = 1e9 bytes, {str(dtype).replace('torch.', '')}; {'; '.join(ns)}; "
            "Partition-128 = ceil(N/128) group gradients. Ours: a Linear layer costs D_in + "
            "D_out per example (exact factors, bias included); inside a partition it is a "
            "matrix like any other (dense, or rank-1 plus its bias); conv weights rank-1 as "
            "[O, I*kh*kw]; batch-norm affine parameters dense. Where ours and the paper's "
            "differ: benchmarks/bench_vr_memory.py.")
    if hidden:
        foot += "\nPaper figures are shown only for the paper's assumptions (N = 1,000,000, " \
                "float32)."
    return table(rows, [False, False, True, True, True], markdown=True) + "\n\n" + foot
