"""Deprecated: moved to :mod:`backprobe.app.data`."""

from backprobe.app._moved import alias

alias(__name__, "backprobe.app.data")
