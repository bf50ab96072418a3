"""More out of one backward pass: per-example gradients, their statistics, and curvature.

``with record(model, *quantities, loss_fn=...): loss.backward()`` stores results on the
parameters under BackPACK's attribute names. No model conversion is needed.

* first order (:mod:`.first_order`): :class:`BatchGrad`, :class:`BatchL2Grad`,
  :class:`SumGradSquared`, :class:`Variance`, :class:`BatchGradFactors`;
* GGN (:mod:`.curvature`): :class:`DiagGGNExact`, :class:`DiagGGNMC`,
  :class:`BatchDiagGGNExact`, :class:`BatchDiagGGNMC`, :class:`SqrtGGNExact`,
  :class:`SqrtGGNMC`;
* Kronecker factors (:mod:`.kronecker`): :class:`KFAC`, :class:`KFLR`, :class:`KFRA`;
* Hessian diagonal (:mod:`.hessian`): :class:`DiagHessian`, :class:`HutchinsonDiagHessian`;
* loss Hessian square roots (:mod:`.loss_hessian`) and ``torch.func`` references
  (:mod:`.reference`).
"""

from backprobe.quantities._base import CurvatureQuantity, FirstOrderQuantity, Quantity
from backprobe.quantities._record import clear, record, supported_modules
from backprobe.quantities.curvature import (
    BatchDiagGGNExact,
    BatchDiagGGNMC,
    DiagGGNExact,
    DiagGGNMC,
    SqrtGGNExact,
    SqrtGGNMC,
)
from backprobe.quantities.first_order import (
    BatchGrad,
    BatchGradFactors,
    BatchL2Grad,
    SumGradSquared,
    Variance,
)
from backprobe.quantities.hessian import DiagHessian, HutchinsonDiagHessian
from backprobe.quantities.kronecker import KFAC, KFLR, KFRA
from backprobe.quantities.loss_hessian import loss_hessian_sqrt

__all__ = [
    "KFAC", "KFLR", "KFRA", "BatchDiagGGNExact", "BatchDiagGGNMC", "BatchGrad", "BatchGradFactors",
    "BatchL2Grad", "CurvatureQuantity", "DiagGGNExact", "DiagGGNMC", "DiagHessian",
    "FirstOrderQuantity", "HutchinsonDiagHessian", "Quantity", "SqrtGGNExact", "SqrtGGNMC",
    "SumGradSquared", "Variance", "clear", "loss_hessian_sqrt", "record", "supported_modules",
]
