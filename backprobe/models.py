"""Deprecated: moved to :mod:`backprobe.app.models`."""

from backprobe.app._moved import alias

alias(__name__, "backprobe.app.models")
