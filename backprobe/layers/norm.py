"""Normalisation layers' affine parameters in per-example form.

BatchNorm (eval mode), LayerNorm and GroupNorm all end in an elementwise affine map

    y[n, ...] = weight[p(...)] * xhat[n, ...] + bias[p(...)]

of a normalised input ``xhat`` that does not depend on ``weight`` or ``bias``. Each example's
parameter gradient is therefore a contraction of the output gradient with ``xhat`` (weight)
or with ones (bias) over the positions that share a parameter entry. That is all the
per-example quantities need, so these layers describe themselves by ``xhat`` and how the
output's positions map onto the parameter (:class:`NormOp`).

BatchNorm in train mode normalises with batch statistics: every output depends on every
example, per-example gradients are not the terms of the batch gradient, and ``bind_norm``
raises a ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backprobe.layers._base import LayerOp, register_op


# BatchNorm in eval mode is affine in its input; LayerNorm and GroupNorm are not.
@register_op(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
@register_op(nn.LayerNorm, nn.GroupNorm, linear_in_input=False)
@dataclass(frozen=True)
class NormOp(LayerOp):
    """``y = weight * xhat + bias`` with the parameter broadcast over some output axes.

    Attributes:
        layout: ``"channel"`` (parameter indexed by dim 1 of ``[N, C, *spatial]``: BatchNorm,
            GroupNorm) or ``"trailing"`` (parameter indexed by the trailing
            ``len(param_shape)`` dims: LayerNorm).
        param_shape: shape of ``weight`` and ``bias``.
    """

    layout: str
    param_shape: tuple[int, ...]

    kind = "norm"

    @classmethod
    def bind(cls, module: nn.Module, x: Tensor) -> tuple[Tensor, NormOp]:
        """Return ``(xhat, op)`` for a normalisation layer applied to ``x``.

        ``xhat`` is detached: it does not depend on the layer's own parameters.

        Raises:
            ValueError: BatchNorm in train mode (or without running statistics).
            TypeError: not a normalisation layer, or one without affine parameters.
        """
        if getattr(module, "weight", None) is None and getattr(module, "bias", None) is None:
            raise TypeError(f"{type(module).__name__} has no affine parameters")
        with torch.no_grad():
            xhat = _normalised_input(module, x.detach())
        if isinstance(module, nn.LayerNorm):
            return xhat, cls("trailing", tuple(module.normalized_shape))
        c: int = getattr(module, "num_features", None) or module.num_channels  # type: ignore[assignment]
        return xhat, cls("channel", (c,))

    def reduce(self, t: Tensor, lead: int) -> Tensor:
        """Sum ``t`` of shape ``[*L, *out]`` (``lead`` leading dims) onto ``[*L, *param_shape]``."""
        lead_shape = t.shape[:lead]
        if self.layout == "channel":
            c = self.param_shape[0]
            return t.reshape(*lead_shape, c, -1).sum(-1)
        return t.reshape(*lead_shape, -1, *self.param_shape).sum(lead)

    def per_example(self, xhat: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """Per-column, per-example ``(weight, bias)`` gradients.

        Args:
            xhat: normalised input ``[N, *out]``.
            g: output-gradient columns ``[M, N, *out]``.

        Returns:
            Two tensors ``[M, N, *param_shape]``.
        """
        return self.reduce(g * xhat.unsqueeze(0), 2), self.reduce(g, 2)


def _normalised_input(module: nn.Module, x: Tensor) -> Tensor:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training or module.running_mean is None or module.running_var is None:
            why = "is in train mode" if module.training else "has track_running_stats=False"
            raise ValueError(
                f"{type(module).__name__} {why}: it normalises with batch statistics, so every "
                "output depends on every example and per-example quantities are undefined. "
                "Call model.eval() for the BatchNorm layers (running statistics), or use "
                "GroupNorm/LayerNorm."
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = module.running_mean.reshape(shape)
        var = module.running_var.reshape(shape)
        return (x - mean) * torch.rsqrt(var + module.eps)
    if isinstance(module, nn.LayerNorm):
        dims = tuple(range(-len(module.normalized_shape), 0))
        var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + module.eps)
    if isinstance(module, nn.GroupNorm):
        n = x.shape[0]
        xg = x.reshape(n, module.num_groups, -1)
        var, mean = torch.var_mean(xg, dim=-1, keepdim=True, correction=0)
        return ((xg - mean) * torch.rsqrt(var + module.eps)).reshape(x.shape)
    raise TypeError(f"{type(module).__name__} is not a normalisation layer")


def bind_norm(module: nn.Module, x: Tensor) -> tuple[Tensor, NormOp]:
    """Return ``(xhat, op)`` for a normalisation layer (same as ``NormOp.bind``)."""
    return NormOp.bind(module, x)
