"""Estimator spec strings: ``"exact"``, ``"probe:16"``, ``"probe:16:dct:deflate4"``, ...

One function, :func:`parse_estimator`, turns a spec into an estimator; the grammar lives in a
small table (:data:`SPECS`), one row per estimator family, so adding a family (for example
``aop:K[:policy][:nomemory]``) is one call to :func:`register`.

Grammar (``:``-separated, case-insensitive)::

    exact
    probe:R[:OPTION...]   R >= 1 probes; options in any order, each at most once:
                          a distribution  rademacher | gaussian | uniform (probe.DISTRIBUTIONS)
                          a mode          channel | joint | ... (probe.MODES)
                          shared          one probe set per batch (per_sample=False)
                          orthogonal      orthonormalised probe blocks
                          dct | plain     spectrally shaped probes (shaping="dct") or
                                          plain ones (shaping=None)
                          deflateK        with dct: keep the K highest-energy DCT coefficients
                                          exactly, 0 <= K < R (deflate=K)

Example:
    >>> parse_estimator("probe:16:joint:uniform")
    Probe(16, distribution='uniform', mode='joint', per_sample=True, orthogonal=False)
    >>> parse_estimator("probe:16:dct:deflate4")
    Probe(16, distribution='rademacher', mode='channel', per_sample=True, orthogonal=False, \
shaping='dct', deflate=4, momentum=0.1)
    >>> parse_estimator("exact")
    Exact()
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from backprobe.app._checks import positive_int
from backprobe.estimators import Estimator, Exact, Probe
from backprobe.estimators.probe import DISTRIBUTIONS, MODES, SHAPINGS

__all__ = [
    "SPECS", "SpecFamily", "grammar", "is_exact", "parse_estimator", "parse_list", "register",
]


@dataclass(frozen=True)
class SpecFamily:
    """One row of the spec table.

    Attributes:
        name: the first token (``"probe"``).
        usage: the grammar line shown in error messages (``"probe:R[:OPTION...]"``).
        build: ``build(args) -> Estimator`` from the tokens after the name (lower-cased);
            raises ``ValueError`` with a short reason on bad arguments.
        help: one line on the options.
    """

    name: str
    usage: str
    build: Callable[[list[str]], Estimator]
    help: str = ""


def _build_exact(args: list[str]) -> Estimator:
    if args:
        raise ValueError(f"exact takes no options, got {':'.join(args)!r}")
    return Exact()


# Option token -> (keyword, value); each keyword may be set once.
_PROBE_OPTIONS: dict[str, tuple[str, Any]] = {
    **{d: ("distribution", d) for d in DISTRIBUTIONS},
    **{m: ("mode", m) for m in MODES},
    "shared": ("per_sample", False),
    "orthogonal": ("orthogonal", True),
    **{s or "plain": ("shaping", s) for s in SHAPINGS},  # plain: shaping=None
}
_DEFLATE = "deflate"  # deflateK: an option with its count glued on


def _probe_option(token: str, r: int) -> tuple[str, Any]:
    """The ``(keyword, value)`` a probe option token sets; ``r`` bounds ``deflateK``."""
    if token in _PROBE_OPTIONS:
        return _PROBE_OPTIONS[token]
    if token.startswith(_DEFLATE):
        count = token[len(_DEFLATE):]
        if not count.isdigit():
            raise ValueError(
                f"probe option {token!r}: write deflateK with an integer K >= 0, e.g. deflate4"
            )
        k = int(count)
        if k >= r:
            raise ValueError(
                f"probe option {token!r}: deflate K={k} must be below the number of probes R={r}"
            )
        return "deflate", k
    raise ValueError(f"unknown probe option {token!r}")


def _build_probe(args: list[str]) -> Estimator:
    if not args:
        raise ValueError("probe needs a number of probes, e.g. probe:16")
    r = positive_int("the number of probes R", args[0])
    kwargs: dict[str, Any] = {}
    for token in args[1:]:
        key, value = _probe_option(token, r)
        if key in kwargs:
            raise ValueError(f"probe option {key!r} given twice")
        kwargs[key] = value
    return Probe(r, **kwargs)  # Probe rejects deflateK without shaping


#: Estimator families by first token; :func:`register` adds one.
SPECS: dict[str, SpecFamily] = {}


def register(family: SpecFamily) -> None:
    """Add (or replace) an estimator family in :data:`SPECS`.

    Example:
        >>> register(SpecFamily("aop", "aop:K[:policy][:nomemory]", build_aop))  # doctest: +SKIP
    """
    SPECS[family.name] = family


register(SpecFamily("exact", "exact", _build_exact, "plain autograd (keeps every input)"))
register(SpecFamily(
    "probe", "probe:R[:OPTION...]", _build_probe,
    "R >= 1 probes; OPTIONs in any order, each at most once: a distribution "
    f"({' | '.join(DISTRIBUTIONS)}), a mode ({' | '.join(MODES)}), "
    "shared (one probe set per batch), orthogonal, a shaping (dct: spectrally shaped "
    "probes | plain), "
    "deflateK (with dct: keep the K < R highest-energy DCT coefficients exactly)",
))


def grammar() -> str:
    """The accepted spec forms, one per line (used in error and help messages)."""
    lines = []
    for f in SPECS.values():
        text = textwrap.wrap(f.help, 70) or [""]
        lines.append(f"  {f.usage:<22} {text[0]}".rstrip())
        lines += [" " * 25 + t for t in text[1:]]
    return "\n".join(lines)


def parse_estimator(spec: str) -> Estimator:
    """Build the estimator a spec string names.

    Args:
        spec: e.g. ``"exact"``, ``"probe:16"``, ``"probe:8:gaussian:joint:shared:orthogonal"``,
            ``"probe:16:dct:deflate4"``.

    Returns:
        A fresh estimator (a ``Probe`` seeds its private generator from the global RNG, so
        call ``torch.manual_seed`` first for a reproducible run).

    Raises:
        ValueError: unknown family or bad arguments; the message lists the grammar.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty estimator spec {spec!r}; accepted forms:\n{grammar()}")
    name, *args = [t.strip().lower() for t in spec.strip().split(":")]
    family = SPECS.get(name)
    if family is None:
        raise ValueError(
            f"unknown estimator {name!r} in spec {spec!r}; accepted forms:\n{grammar()}"
        )
    try:
        return family.build(args)
    except ValueError as err:
        raise ValueError(
            f"bad estimator spec {spec!r}: {err}; accepted forms:\n{grammar()}"
        ) from None


def is_exact(spec: str) -> bool:
    """Whether ``spec`` names plain autograd (no conversion needed)."""
    return spec.strip().lower() == "exact"


def parse_list(text: str | Sequence[str]) -> list[str]:
    """Split a comma-separated list of specs and check each one parses.

    Raises:
        ValueError: on an empty list or a bad spec.
    """
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ValueError(f"empty estimator list {text!r}; accepted forms:\n{grammar()}")
    for item in items:
        parse_estimator(item)
    return items
