"""The one argument checker: every public function checks its arguments here, in one style.

Messages read ``"<owner>: <name> must be <rule>, got <value>"``; a wrong type raises
``TypeError``, a wrong value ``ValueError``. A bool is never accepted as a number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["check_choice", "check_int", "check_real"]


def _prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def check_int(name: str, value: Any, *, owner: str | None = None, minimum: int = 1,
              maximum: int | None = None) -> int:
    """Check that ``value`` is an int in ``[minimum, maximum]`` and return it.

    Args:
        name: the argument's name, for the message.
        value: the value given.
        owner: the class or function, for the message.
        minimum: the smallest allowed value (default 1: a count).
        maximum: the largest allowed value, or ``None`` for no bound.

    Returns:
        ``value`` as an ``int``.

    Raises:
        TypeError: ``value`` is not an int (a bool is not one).
        ValueError: ``value`` is out of range.

    Example:
        >>> check_int("num_probes", 16, owner="Probe")
        16
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_prefix(owner)}{name} must be an int, got "
                        f"{type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        rule = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{_prefix(owner)}{name} must be an int {rule}, got {value!r}")
    return int(value)


_REAL_RULES = {
    "any": ("", lambda v: True),
    "positive": ("> 0", lambda v: v > 0),
    "nonnegative": (">= 0", lambda v: v >= 0),
    "fraction": ("in [0, 1)", lambda v: 0 <= v < 1),
    "unit": ("in (0, 1]", lambda v: 0 < v <= 1),
}


def check_real(name: str, value: Any, rule: str = "any", *, owner: str | None = None) -> float:
    """Check that ``value`` is a finite real number obeying ``rule`` and return it as a float.

    Args:
        name: the argument's name, for the message.
        value: the value given.
        rule: ``"any"``, ``"positive"`` (> 0), ``"nonnegative"`` (>= 0), ``"fraction"``
            (in [0, 1)) or ``"unit"`` (in (0, 1]).
        owner: the class or function, for the message.

    Returns:
        ``value`` as a ``float``.

    Raises:
        TypeError: ``value`` is not a real number (a bool is not one).
        ValueError: ``value`` is not finite or breaks the rule.

    Example:
        >>> check_real("lr", 0.1, "positive", owner="SAGA")
        0.1
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{_prefix(owner)}{name} must be a real number, got "
                        f"{type(value).__name__} {value!r}")
    what, ok = _REAL_RULES[rule]
    if not (math.isfinite(value) and ok(value)):
        rule_text = f" {what}" if what else ""
        raise ValueError(f"{_prefix(owner)}{name} must be a finite number{rule_text}, got "
                         f"{value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[Any], *,
                 owner: str | None = None) -> Any:
    """Check that ``value`` is one of ``choices`` and return it.

    Raises:
        ValueError: ``value`` is not among ``choices`` (the message lists them).

    Example:
        >>> check_choice("distribution", "gaussian", ("rademacher", "gaussian"), owner="Probe")
        'gaussian'
    """
    options = tuple(choices)
    if value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise ValueError(f"{_prefix(owner)}{name} must be one of {listed}, got {value!r}")
    return value
