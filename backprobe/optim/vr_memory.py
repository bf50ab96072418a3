"""Memory of the per-example gradient table kept by SAGA-type variance-reduced optimisers.

SAGA keeps one stored gradient per training example (or per group of examples). How many
numbers one stored gradient costs depends on the storage spec (the specs of
``backprobe.optim.storage``, or the strings below):

======================  =====================  ================================================
spec                    string                 numbers per example (or per group)
======================  =====================  ================================================
``Dense()``             ``"naive"``            every trainable parameter's ``numel``
``Factored()``          ``"normal"``           each ``nn.Linear`` (weight and bias together):
                                               ``D_in + D_out``; every other parameter: numel
``LowRank(r)``          ``"rankR"``            ``nn.Linear`` as in ``Factored``; every other
                                               parameter with ``ndim >= 2`` viewed as an
                                               ``O x I`` matrix (``O = shape[0]``,
                                               ``I = prod(shape[1:])``): ``r*(O+I)``, or
                                               ``O*I`` (dense) when ``r*(O+I) >= O*I``;
                                               1-D parameters: numel
``Partition(m, inner)`` ``"partitionM"``,      per group of ``m`` examples
                        ``"rankR+partitionM"`` (``ceil(N/m)`` groups): with ``inner=Dense()``
                                               numel of everything; with ``inner=LowRank(r)``
                                               every ``ndim >= 2`` parameter (``nn.Linear``
                                               weights included) ``min(r*(O+I), O*I)``, every
                                               1-D parameter numel
======================  =====================  ================================================

Why: a Linear layer applied to ``[N, D_in]`` inputs has the per-example weight gradient
``delta_n a_n^T`` and bias gradient ``delta_n``, so storing ``a_n`` (``D_in``) and ``delta_n``
(``D_out``) rebuilds both exactly. A group gradient is a *sum* of such outer products, which
is no longer rank one, so inside a partition Linear layers are not factored and
``Partition(m, Factored())`` is rejected. The Linear rule assumes 2-D inputs (one position per
example); a Linear layer applied to sequences ``[N, T, D]`` has a rank-``T`` gradient and the
calculator would under-count it.

Bytes are numbers times the element size of ``dtype``; the tables use ``GB = 1e9`` bytes.

Reproducing the paper (El Hanchi, "Time and Memory Efficient Variance Reduced Optimization
and Sampling for Deep Learning"), whose table lists GB for float32 under the columns Naive /
Normal / rank-1 / Partition-128 / rank-1 + Partition-128. Recovered assumptions: ``N = 1e6``
examples for every model (not the data sets' sizes), float32, ``GB = 1e9`` bytes,
``ceil(1e6 / 128) = 7813`` groups, models as built by :func:`paper_model` (LeNet-5 with 61,706
parameters; VGG-16 ImageNet, 138,357,544; ResNet-34 ImageNet, 21,797,672). Under the rules
above:

* LeNet-5: Naive, Normal, rank-1 and Partition-128 reproduce (the paper truncates or rounds to
  three figures: 246.8 -> 246, 13.56 -> 13.5, 4.148 -> 4.15, 1.928 -> 1.92). Its rank-1 +
  Partition-128 figure (0.03) is ``7813 * 1037 * 4`` bytes (0.0324 GB): ``ceil(N/128)`` times
  the rank-1 per-example count, i.e. each Linear layer costs ``D_in + D_out`` per group with
  its bias folded into the rank-1 factors. Our rule stores the bias apart (``+ D_out`` per
  Linear layer, 1251 numbers per group), giving a larger 0.0391 GB.
* VGG-16: Naive, Normal, rank-1 reproduce. The paper's Partition-128 (630) is conv layers
  partitioned (dense per group) plus Linear layers factored *per example* (629.8 GB); with
  every parameter dense per group (our rule) it is 4324 GB. Its rank-1 + Partition-128 (2.63)
  is again ``7813 *`` the rank-1 count (84,355 numbers, 2.636 GB); ours, with Linear biases
  stored apart (93,547 numbers), gives 2.924 GB.
* ResNet-34 (torchvision layout): no single assumption reproduces the row. Normal agrees to
  0.8% (85,145 vs 84,500 GB); the paper's Naive (18.7e5) is 21x the 87,191 GB that any
  21.8M-parameter network gives at ``N = 1e6`` and contradicts its own Normal column. The
  paper's rank-1 (421) and rank-1 + Partition-128 (3.29) both imply ~105,250 stored numbers
  per example, against our 91,579: a ResNet-34 with parameter-free (option A) shortcuts, conv
  biases, batch-norm affine parameters and a dense (not rank-1) 7x7 stem matches 421.0 / 3.29
  and Normal 8.45e4 (84,480 GB), but that combination was found by search, not read from the
  paper. Partition-128 (764, i.e. 24.4M numbers per group) fits none of the variants tried
  (ours: 681; option A: 676).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> storage_numbers(model, "normal")
    {'0.weight': 7, '0.bias': 0, '2.weight': 5, '2.bias': 0}
    >>> storage_bytes(model, 10, "naive")  # 23 numbers * 10 examples * 4 bytes
    920
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from backprobe import models

__all__ = [
    "COLUMNS",
    "PAPER_TABLE",
    "PaperRow",
    "StorageSpec",
    "format_vr_table",
    "paper_model",
    "parse_storage",
    "storage_bytes",
    "storage_numbers",
    "storage_units",
    "vr_memory_table",
]

GB = 1e9
"""Bytes per GB in the tables (decimal, as the paper)."""


@dataclass(frozen=True)
class StorageSpec:
    """A normalised storage spec.

    Attributes:
        kind: ``"dense"``, ``"factored"`` or ``"lowrank"`` (how one stored gradient is kept).
        rank: Rank for ``"lowrank"``, else ``None``.
        partition: Examples per group, or ``None`` for one stored gradient per example.
    """

    kind: str
    rank: int | None = None
    partition: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("dense", "factored", "lowrank"):
            raise ValueError(f"storage kind must be dense, factored or lowrank, got {self.kind!r}")
        if self.kind == "lowrank":
            _positive_int(self.rank, "LowRank rank")
        elif self.rank is not None:
            raise ValueError(f"only lowrank storage takes a rank, got {self.kind} rank {self.rank}")
        if self.partition is not None:
            _positive_int(self.partition, "Partition size")
            if self.kind == "factored":
                raise ValueError(
                    "Partition(size, Factored()) is invalid: a group gradient is a sum of "
                    "per-example outer products, not one; use Partition(size, Dense()) or "
                    "Partition(size, LowRank(r))"
                )

    def __str__(self) -> str:
        inner = {"dense": "naive", "factored": "normal"}.get(self.kind, f"rank{self.rank}")
        if self.partition is None:
            return inner
        if self.kind == "dense":
            return f"partition{self.partition}"
        return f"{inner}+partition{self.partition}"


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


_GRAMMAR = (
    "naive | dense | normal | factored | rankR | partitionM | rankR+partitionM "
    "(R, M positive integers)"
)


def _parse_string(text: str) -> StorageSpec:
    key = text.strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    kind, rank, size = "", None, None
    for part in key.split("+"):
        m_rank = re.fullmatch(r"rank(\d+)", part)
        m_size = re.fullmatch(r"partition(\d+)", part)
        if m_size and size is None:
            size = int(m_size.group(1))
        elif m_rank and not kind:
            kind, rank = "lowrank", int(m_rank.group(1))
        elif part in ("naive", "dense") and not kind:
            kind = "dense"
        elif part in ("normal", "factored") and not kind:
            kind = "factored"
        else:
            raise ValueError(f"unknown storage spec {text!r}; expected {_GRAMMAR}")
    return StorageSpec(kind or "dense", rank, size)


def parse_storage(storage: object) -> StorageSpec:
    """Normalise a storage spec.

    Accepts a :class:`StorageSpec`; a string (``"naive"``/``"dense"``, ``"normal"``/
    ``"factored"``, ``"rankR"``, ``"partitionM"``, ``"rankR+partitionM"``; case-insensitive);
    or a spec object of ``backprobe.optim.storage``, recognised by class name: ``Dense``,
    ``Factored``, ``LowRank`` (attribute ``rank``), ``Partition`` (attributes ``size`` and
    ``inner``).

    Args:
        storage: The spec.

    Returns:
        The normalised spec.

    Raises:
        ValueError: Unknown string, a non-positive rank or size, a nested partition, or
            ``Partition(size, Factored())``.
        TypeError: An object that is none of the above.

    Example:
        >>> parse_storage("rank1+partition128")
        StorageSpec(kind='lowrank', rank=1, partition=128)
    """
    if isinstance(storage, StorageSpec):
        return storage
    if isinstance(storage, str):
        return _parse_string(storage)
    name = type(storage).__name__
    if name == "Dense":
        return StorageSpec("dense")
    if name == "Factored":
        return StorageSpec("factored")
    if name == "LowRank":
        return StorageSpec("lowrank", getattr(storage, "rank", None))
    if name == "Partition":
        inner = parse_storage(getattr(storage, "inner", None))
        if inner.partition is not None:
            raise ValueError(f"Partition cannot nest another Partition, got {storage!r}")
        size = getattr(storage, "size", None)
        return StorageSpec(inner.kind, inner.rank, _positive_int(size, "Partition size"))
    raise TypeError(
        f"storage must be a string ({_GRAMMAR}), a StorageSpec or a Dense/Factored/LowRank/"
        f"Partition spec, got {name}"
    )


def _lowrank(shape: torch.Size, rank: int) -> int:
    """Numbers of a rank-``rank`` factorisation of ``shape`` viewed as ``O x prod(rest)``."""
    o = shape[0]
    i = math.prod(shape[1:])
    return min(rank * (o + i), o * i)


def storage_numbers(model: nn.Module, storage: object) -> dict[str, int]:
    """Numbers one stored gradient costs, by parameter name.

    One stored gradient is per example, or per group of examples for a partition spec (see
    :func:`storage_units`). Counting rules: see the module docstring. Only trainable
    parameters (``requires_grad``) count; parameters shared between modules count once. For a
    factored ``nn.Linear`` the whole ``D_in + D_out`` is put on the weight and its bias gets 0.

    Args:
        model: The network (may live on the meta device).
        storage: A spec accepted by :func:`parse_storage`.

    Returns:
        ``{parameter name: numbers}`` in ``model.named_parameters()`` order.

    Raises:
        ValueError: Bad spec (see :func:`parse_storage`).
        TypeError: ``model`` is not an ``nn.Module`` or the spec has an unknown type.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    spec = parse_storage(storage)
    factor_linear = spec.partition is None and spec.kind in ("factored", "lowrank")
    linear: dict[int, nn.Linear] = {}
    if factor_linear:
        for module in model.modules():
            if isinstance(module, nn.Linear):
                linear[id(module.weight)] = module
                if module.bias is not None:
                    linear[id(module.bias)] = module
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lin = linear.get(id(p))
        if lin is not None:
            out[name] = lin.in_features + lin.out_features if p is lin.weight else 0
        elif spec.kind == "lowrank" and p.ndim >= 2:
            assert spec.rank is not None
            out[name] = _lowrank(p.shape, spec.rank)
        else:
            out[name] = p.numel()
    return out


def storage_units(num_examples: int, storage: object) -> int:
    """How many gradients are stored: ``N``, or ``ceil(N / size)`` groups for a partition.

    Args:
        num_examples: Training-set size ``N >= 1``.
        storage: A spec accepted by :func:`parse_storage`.

    Returns:
        The number of stored gradients.

    Raises:
        ValueError: ``num_examples < 1`` or a bad spec.
        TypeError: ``num_examples`` is not an int.
    """
    n = _positive_int(num_examples, "num_examples")
    spec = parse_storage(storage)
    return n if spec.partition is None else math.ceil(n / spec.partition)


def storage_bytes(
    model: nn.Module, num_examples: int, storage: object, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of the whole gradient table: ``units * sum(storage_numbers) * element size``.

    Args:
        model: The network (may live on the meta device).
        num_examples: Training-set size ``N >= 1``.
        storage: A spec accepted by :func:`parse_storage`.
        dtype: Element type of the stored numbers.

    Returns:
        Bytes.

    Raises:
        ValueError: ``num_examples < 1`` or a bad spec.
        TypeError: Bad argument types.

    Example:
        >>> from torch import nn
        >>> storage_bytes(nn.Linear(100, 10), 1000, "normal")  # 110 * 1000 * 4
        440000
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    units = storage_units(num_examples, storage)
    return units * sum(storage_numbers(model, storage).values()) * dtype.itemsize


# --------------------------------------------------------------------------- the paper's table

COLUMNS: tuple[tuple[str, str], ...] = (
    ("Naive", "naive"),
    ("Normal", "normal"),
    ("rank-1", "rank1"),
    ("Partition-128", "partition128"),
    ("rank-1 + Partition-128", "rank1+partition128"),
)
"""The paper's five columns: (heading, storage string)."""


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's table and what we recovered about it.

    Attributes:
        title: Model name as in the paper.
        gb: The paper's figures in GB, keyed by the storage strings of :data:`COLUMNS`.
        num_examples: Training-set size that reproduces the figures.
        dtype: Element type assumed.
        build: Builds the model (called under ``torch.device("meta")``).
        notes: Per column (storage string): how our figure relates to the paper's.
    """

    title: str
    gb: Mapping[str, float]
    num_examples: int
    dtype: torch.dtype
    build: Callable[[], nn.Module]
    notes: Mapping[str, str] = field(default_factory=dict)


PAPER_TABLE: dict[str, PaperRow] = {
    "lenet5": PaperRow(
        title="LeNet-5",
        gb={"naive": 246, "normal": 13.5, "rank1": 4.15, "partition128": 1.92,
            "rank1+partition128": 0.03},
        num_examples=10**6,
        dtype=torch.float32,
        build=lambda: models.lenet5(1, 10, 28),
        notes={
            "naive": "reproduced (paper truncates 246.8)",
            "normal": "reproduced (paper truncates 13.56)",
            "rank1": "reproduced",
            "partition128": "reproduced (paper truncates 1.928)",
            "rank1+partition128": "paper = 7813 groups * its rank-1 count (1037) * 4 B "
                                  "= 0.0324 GB; we store Linear biases apart (+214)",
        },
    ),
    "vgg16": PaperRow(
        title="VGG16",
        gb={"naive": 5.53e5, "normal": 5.90e4, "rank1": 337, "partition128": 630,
            "rank1+partition128": 2.63},
        num_examples=10**6,
        dtype=torch.float32,
        build=lambda: models.vgg16(3, 1000, 224),
        notes={
            "naive": "reproduced",
            "normal": "reproduced",
            "rank1": "reproduced",
            "partition128": "paper = conv partitioned + Linear factored per example "
                            "(629.8 GB); ours: every parameter dense per group",
            "rank1+partition128": "paper = 7813 groups * its rank-1 count (84,355) * 4 B "
                                  "= 2.636 GB; we store Linear biases apart (+9192)",
        },
    ),
    "resnet34": PaperRow(
        title="ResNet34",
        gb={"naive": 18.7e5, "normal": 8.45e4, "rank1": 421, "partition128": 764,
            "rank1+partition128": 3.29},
        num_examples=10**6,
        dtype=torch.float32,
        build=lambda: models.resnet34(3, 1000, 224),
        notes={
            "naive": "not reproduced: 21x any 21.8M-parameter net at N=1e6; contradicts "
                     "the paper's own Normal",
            "normal": "within 0.8%; option-A shortcuts + conv biases give 8.45e4",
            "rank1": "not reproduced: paper implies ~105,250 numbers/example, ours 91,579 "
                     "(a search-found variant fits, see module docs)",
            "partition128": "not reproduced by any variant tried",
            "rank1+partition128": "consistent with the paper's rank-1 (~105,250 "
                                  "numbers/group), not with ours (+1000 Linear bias)",
        },
    ),
}
"""The paper's table (GB, float32) with the assumptions that reproduce it (``N = 1e6``).

ResNet-34's row is only partly recoverable; see the module docstring.
"""

_ALIASES = {"lenet": "lenet5", "lenet5": "lenet5", "vgg16": "vgg16", "resnet34": "resnet34"}


def _paper_key(name: str) -> str | None:
    key = name.strip().lower().replace("-", "").replace("_", "")
    return _ALIASES.get(key)


def paper_model(name: str) -> nn.Module:
    """Build one of the paper's models on the meta device (no parameter memory).

    Args:
        name: ``"lenet5"``, ``"vgg16"`` or ``"resnet34"`` (case and dashes ignored).

    Returns:
        The model, its parameters on ``torch.device("meta")``.

    Raises:
        ValueError: Unknown name.
    """
    key = _paper_key(name)
    if key is None:
        raise ValueError(f"unknown paper model {name!r}; valid names: {', '.join(PAPER_TABLE)}")
    with torch.device("meta"):
        return PAPER_TABLE[key].build()


def _columns(rank: int, partition: int) -> list[tuple[str, str]]:
    if rank == 1 and partition == 128:
        return list(COLUMNS)
    return [
        ("Naive", "naive"),
        ("Normal", "normal"),
        (f"rank-{rank}", f"rank{rank}"),
        (f"Partition-{partition}", f"partition{partition}"),
        (f"rank-{rank} + Partition-{partition}", f"rank{rank}+partition{partition}"),
    ]


def vr_memory_table(
    model: str | nn.Module,
    num_examples: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    rank: int = 1,
    partition: int = 128,
) -> dict[str, float]:
    """The paper's five columns for one model, in GB (``1e9`` bytes).

    Args:
        model: A paper model name (``"lenet5"``, ``"vgg16"``, ``"resnet34"``) or a module.
        num_examples: Training-set size; default the paper's (``1e6``) for a paper model.
        dtype: Element type of the stored numbers.
        rank: Rank of the low-rank columns.
        partition: Group size of the partition columns.

    Returns:
        ``{storage string: GB}`` for ``naive``, ``normal``, ``rankR``, ``partitionM``,
        ``rankR+partitionM``.

    Raises:
        ValueError: Unknown model name, or ``num_examples`` missing for a module.
        TypeError: Bad argument types.

    Example:
        >>> round(vr_memory_table("lenet5")["naive"], 1)
        246.8
    """
    _positive_int(rank, "rank")
    _positive_int(partition, "partition")
    if isinstance(model, str):
        key = _paper_key(model)
        module = paper_model(model)
        if num_examples is None and key is not None:
            num_examples = PAPER_TABLE[key].num_examples
    elif isinstance(model, nn.Module):
        module = model
    else:
        raise TypeError(f"model must be a name or an nn.Module, got {type(model).__name__}")
    if num_examples is None:
        raise ValueError("num_examples is required for a model outside PAPER_TABLE")
    return {
        spec: storage_bytes(module, num_examples, spec, dtype) / GB
        for _, spec in _columns(rank, partition)
    }


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-2:
        return f"{x:.3g}"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def format_vr_table(
    names: Iterable[str | nn.Module] | str | nn.Module = tuple(PAPER_TABLE),
    num_examples: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> str:
    """A markdown table of our figures next to the paper's, with notes.

    Paper figures are shown only when the assumptions match the paper's (``N`` and dtype);
    otherwise that column reads ``-``.

    Args:
        names: Paper model names or modules (a single one is accepted).
        num_examples: Training-set size; default the paper's for each paper model.
        dtype: Element type of the stored numbers.

    Returns:
        The table as text, ending with a footnote on the assumptions.

    Raises:
        ValueError: Unknown model name, or ``num_examples`` missing for a module.
    """
    items = [names] if isinstance(names, str | nn.Module) else list(names)
    lines = [
        "| model | storage | ours (GB) | paper (GB) | ours/paper | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    heads = dict((spec, head) for head, spec in COLUMNS)
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
            ratio = f"{gb / paper:#.3g}" if paper else "-"
            note = row.notes.get(spec, "") if (row and comparable) else ""
            lines.append(
                f"| {title} | {heads[spec]} | {_fmt(gb)} | "
                f"{_fmt(paper) if paper is not None else '-'} | {ratio} | {note} |"
            )
    lines.append("")
    lines.append(
        f"GB = 1e9 bytes, {str(dtype).replace('torch.', '')}; {'; '.join(ns)}; "
        "Partition-128 = ceil(N/128) group gradients. Ours: a Linear layer costs D_in + D_out "
        "per example (exact factors, bias included); inside a partition it is a matrix like "
        "any other (dense, or rank-1 plus its bias); conv weights rank-1 as [O, I*kh*kw]; "
        "batch-norm affine parameters dense."
    )
    if hidden:
        lines.append(
            "Paper figures are shown only for the paper's assumptions (N = 1,000,000, float32)."
        )
    return "\n".join(lines)
