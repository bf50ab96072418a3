"""Randomized low-rank factorizations: randomized SVD and Nystrom."""

from backprobe.linalg.factorizations.nystrom import nystrom
from backprobe.linalg.factorizations.randomized_svd import LowRank, low_rank

__all__ = ["LowRank", "low_rank", "nystrom"]
