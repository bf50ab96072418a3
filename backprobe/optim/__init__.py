"""Optimizers built on backprobe's quantities.

* :mod:`backprobe.optim.preconditioned`: SGD preconditioned by the GGN diagonal (exact or
  Monte Carlo), by KFAC/KFLR Kronecker factors, or by the gradients' second moment.
"""

from backprobe.optim.preconditioned import (
    DiagonalPreconditioner,
    DiagonalState,
    KroneckerPreconditioner,
    KroneckerState,
    PreconditionedSGD,
    diag_ggn_sgd,
    kfac_sgd,
    second_moment_sgd,
)

__all__ = [
    "DiagonalPreconditioner", "DiagonalState", "KroneckerPreconditioner", "KroneckerState",
    "PreconditionedSGD", "diag_ggn_sgd", "kfac_sgd", "second_moment_sgd",
]
