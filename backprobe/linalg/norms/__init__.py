"""Norm estimators."""

from backprobe.linalg.norms.frobenius import frobenius_norm_squared

__all__ = ["frobenius_norm_squared"]
