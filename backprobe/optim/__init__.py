"""Optimizers built on backprobe's quantities.

* :mod:`backprobe.optim.preconditioned`: SGD preconditioned by the GGN diagonal (exact or
  Monte Carlo), by KFAC/KFLR Kronecker factors, or by the gradients' second moment.
* :mod:`backprobe.optim.variance_reduced`: SAG, SAGA, SVRG (with Nesterov momentum) and the
  variance-reduced Langevin samplers SAGA-LD, SVRG-LD.
* :mod:`backprobe.optim.langevin`: Langevin samplers SGLD, MALA and underdamped Langevin
  (BAOAB).
* :mod:`backprobe.optim.vr_memory`: the memory calculator for the tables.
* :mod:`backprobe.optim.storage`: compact per-example gradient tables (``Dense``,
  ``Factored``, ``LowRank``, ``Partition``).
"""

from backprobe.optim.in_backward import InBackwardOptimizer, step_in_backward
from backprobe.optim.langevin import (
    MALA,
    SGLD,
    ChainState,
    MALAState,
    UnderdampedLangevin,
    minibatch_potential,
)
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
from backprobe.optim.storage import (
    Dense,
    Factored,
    LowRank,
    Partition,
    Storage,
    partition_batches,
)
from backprobe.optim.svrg import SVRG, SVRGLD, full_gradient
from backprobe.optim.tables import low_rank
from backprobe.optim.variance_reduced import SAG, SAGA, SAGALD

__all__ = [
    "MALA", "SGLD", "ChainState", "MALAState", "UnderdampedLangevin", "minibatch_potential",
    "SAG", "SAGA", "SAGALD", "SVRG", "SVRGLD", "Dense", "Factored", "LowRank", "Partition",
    "Storage", "full_gradient", "low_rank", "partition_batches",
    "DiagonalPreconditioner", "DiagonalState", "KroneckerPreconditioner", "KroneckerState",
    "PreconditionedSGD", "diag_ggn_sgd", "kfac_sgd", "second_moment_sgd",
    "InBackwardOptimizer", "step_in_backward",
]
