"""The canonical form every supported layer describes itself in.

A layer computes ``output[n, s] = W @ input[n, s] + b`` for examples ``n`` and weight-sharing
positions ``s``. An *op* is a small frozen dataclass holding a layer's geometry (stride,
padding, ...) and all of its math; estimators and quantities talk to layers only through it.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class AffineOp(Protocol):
    """What every layer description provides.

    Shapes: ``x`` is the layer input as the op sees it (already padded where the module
    asked for non-zero padding), ``g`` the gradient of the layer output.
    """

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's forward pass."""
        ...

    def backward(
        self, x: Tensor | None, g: Tensor, weight: Tensor, input_shape: tuple[int, ...],
        mask: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Exact (input, weight, bias) gradients for the entries of ``mask`` in one call.

        ``x`` may be ``None`` when the weight gradient is not requested.
        """
        ...

    def weight_grad(self, x: Tensor, g: Tensor, groups: int | None = None) -> Tensor:
        """Exact weight gradient ``sum_{n,s} g[n,s] (outer) x[n,s]`` in the weight's layout.

        ``x`` and ``g`` may have other batch sizes and channel counts than the layer's own
        (the probed paths feed probe images here); ``groups`` overrides the layer's.
        """
        ...

    def canonical_input(self, x: Tensor) -> Tensor:
        """The unfolded input ``[N, S, D_in]`` (all input channels, see ``weight_from_matrix``)."""
        ...

    def canonical_output_grad(self, g: Tensor) -> Tensor:
        """The output gradient as ``[N, S, D_out]``."""
        ...

    def weight_from_matrix(self, m: Tensor) -> Tensor:
        """Map ``[..., D_out, D_in]`` matrices back to ``[..., *weight.shape]``."""
        ...

    def probe_view(self, x: Tensor, mode: str) -> Tensor:
        """View ``x`` as ``[B, C, Q]``: ``B`` rows probed independently, ``C`` sketches each.

        ``Q`` is the probe domain (positions, or channels and positions jointly).
        """
        ...

    def rows(self, t: Tensor) -> Tensor:
        """Reshape an input or output gradient so its first dim is ``probe_view``'s ``B``."""
        ...
