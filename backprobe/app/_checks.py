"""Checks the app runs before any work starts: counts, output paths, devices, the cli extra.

Each check raises ``ValueError`` with one line naming the flag and what is wrong;
:func:`backprobe.app.cli.main` turns that into ``backprobe CMD: error: ...`` and exit status 2.
Every command (``fwi`` and ``spectrum`` included) should call these on its arguments first.

Example:
    >>> positive("--epochs", 0)
    Traceback (most recent call last):
    ValueError: --epochs must be a positive integer, got 0
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["CLI_EXTRA", "check_device", "missing_cli_extra", "output_dir", "output_file",
           "positive", "positive_int", "shape", "size_bytes"]

#: Modules of the ``cli`` extra every ``backprobe`` command may import.
CLI_EXTRA = ("tqdm", "matplotlib")


def positive(flag: str, value: int | None, *, allow_none: bool = True) -> None:
    """Check that ``value`` is an integer >= 1 (``None`` allowed when ``allow_none``).

    Raises:
        ValueError: ``value`` is below 1 (or ``None`` when not allowed).
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")


def positive_int(flag: str, text: str) -> int:
    """Parse ``text`` (e.g. a count inside a spec string) as an integer >= 1.

    Raises:
        ValueError: ``text`` is not an integer, or is below 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{flag} must be a positive integer, got {text!r}") from None
    positive(flag, value)
    return value


def shape(flag: str, dims: Iterable[int]) -> tuple[int, ...]:
    """Check that every dimension of a shape is >= 1 and return it as a tuple.

    Raises:
        ValueError: a dimension is zero or negative.
    """
    dims = tuple(int(d) for d in dims)
    bad = [d for d in dims if d < 1]
    if bad:
        raise ValueError(f"{flag} dimensions must be positive, got {','.join(map(str, dims))}")
    return dims


_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([KMGT]i?B|B)", re.IGNORECASE)
_UNITS = {"b": 1, **{f"{p}b": 1000 ** (i + 1) for i, p in enumerate("kmgt")},
          **{f"{p}ib": 1024 ** (i + 1) for i, p in enumerate("kmgt")}}


def size_bytes(flag: str, text: str) -> int:
    """Parse a memory size such as ``2GiB``, ``512MiB``, ``1.5GB`` or ``100B`` into bytes.

    A number (decimals allowed) followed by a unit: ``B``, decimal ``KB MB GB TB`` (powers of
    1000) or binary ``KiB MiB GiB TiB`` (powers of 1024), case-insensitive. A bare number
    is refused, so that a missing unit is never guessed. Fractions of a byte round down.

    Raises:
        ValueError: ``text`` is not of that form, or the size is zero.
    """
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{flag} must be a size with a unit, e.g. 2GiB, 512MiB, 1.5GB; "
                         f"got {text!r}")
    value = math.floor(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise ValueError(f"{flag} must be at least 1 byte, got {text!r}")
    return value


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def output_file(flag: str, path: str | os.PathLike[str] | None) -> None:
    """Check, before any work, that a file can be written at ``path`` (``None``: nothing).

    Raises:
        ValueError: ``path`` is a directory, lies under a file, or its folder is not writable.
    """
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a directory; give a file name")
    _check_parent(flag, path, p.parent)
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{flag} {str(path)!r} exists and is not writable")


def output_dir(flag: str, path: str | os.PathLike[str] | None) -> None:
    """Check, before any work, that files can be written in folder ``path`` (made if missing).

    Raises:
        ValueError: ``path`` is a file, lies under a file, or is not writable.
    """
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a file, not a directory")
    _check_parent(flag, path, p)


def _check_parent(flag: str, path: str | os.PathLike[str], folder: Path) -> None:
    base = _nearest_existing(folder.absolute())
    if not base.is_dir():
        raise ValueError(f"{flag} {str(path)!r} lies under {str(base)!r}, which is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(path)!r}: cannot write in {str(base)!r} (permission denied)")


def check_device(flag: str, device: str) -> None:
    """Check that ``device`` (``cpu``, ``cuda[:N]``, ``auto``, ...) exists on this machine.

    Raises:
        ValueError: an unknown device string, or CUDA asked for where there is none.
    """
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{flag}: unknown device {device!r}; use cpu, cuda, cuda:N or auto") \
            from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device}: CUDA is not available on this machine "
                             "(use --device cpu or --device auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {device}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")


def missing_cli_extra(modules: Iterable[str] = CLI_EXTRA) -> list[str]:
    """The modules of ``modules`` that cannot be imported (the ``cli`` extra not installed)."""
    missing = []
    for name in modules:
        if name in sys.modules and sys.modules[name] is not None:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or (name in sys.modules and sys.modules[name] is None):
            missing.append(name)
    return missing
