"""Deprecated: moved to :mod:`backprobe.app.spec`."""

from backprobe.app._moved import alias

alias(__name__, "backprobe.app.spec")
