"""Curvature matrices of ``(model, loss_fn, data)`` as linear operators.

:class:`HessianOperator`, :class:`GGNOperator`, :class:`EFOperator`,
:class:`MCFisherOperator` (batched products through ``torch.func``), :class:`KFACOperator`
(from ``record``'s factors) with its damped inverse; dense ``torch.func`` references in
:mod:`.reference`.
"""

from backprobe.linalg.curvature._base import CurvatureOperator
from backprobe.linalg.curvature.fisher import EFOperator, MCFisherOperator
from backprobe.linalg.curvature.ggn import GGNOperator
from backprobe.linalg.curvature.hessian import HessianOperator
from backprobe.linalg.curvature.kfac import KFACInverseOperator, KFACOperator

__all__ = ["CurvatureOperator", "EFOperator", "GGNOperator", "HessianOperator",
           "KFACInverseOperator", "KFACOperator", "MCFisherOperator"]
