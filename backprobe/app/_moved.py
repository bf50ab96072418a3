"""Deprecated module aliases: an old import path that warns and yields the moved module."""

from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str) -> None:
    """Make module ``old`` an alias of module ``new``, warning the importer once.

    Called from the body of the old module: after it, ``sys.modules[old]`` is the new module,
    so ``import old``, ``from old import name`` and attribute patches all reach ``new``.

    Args:
        old: the deprecated dotted name (the caller's ``__name__``).
        new: the dotted name of the module it moved to.
    """
    warnings.warn(f"{old} moved to {new}; import it from there ({old} will be removed)",
                  DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
