"""Estimators: what forward keeps and how backward forms the weight gradient."""

from backprobe.estimators._base import (
    EstimatedAffineFn,
    Estimator,
    choose,
    estimated_affine,
    replay_source,
)
from backprobe.estimators.aop import AOP, remove_memory, reset_memory
from backprobe.estimators.exact import Exact
from backprobe.estimators.probe import Probe

__all__ = [
    "AOP", "EstimatedAffineFn", "Estimator", "Exact", "Probe", "choose", "estimated_affine",
    "remove_memory", "replay_source", "reset_memory",
]
