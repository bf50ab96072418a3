"""Deprecated: moved to :mod:`backprobe.app.cli`."""

from backprobe.app._moved import alias

alias(__name__, "backprobe.app.cli")
