"""KFAC as a linear operator, from the factors :func:`backprobe.record` stores, and its inverse.

Martens & Grosse (ICML 2015); Grosse & Martens (ICML 2016) for convolutions. A weight with
factors ``p.kfac = [G, A]`` (``G [D_out, D_out]``, ``A [D_in, D_in]``; BackPACK's
convention, see :mod:`backprobe.quantities.kronecker`) gets the block ``G (x) A`` in the
row-major flattening of ``W`` as ``[D_out, D_in]`` (conv weights ``[C_out, C_in k_h k_w]``):

    (G (x) A) vec(W) = vec(G W A)

a bias (or a normalisation layer's parameter) with ``[G]`` gets ``G``. The operator is the
block-diagonal matrix of these blocks over ``params``, symmetric PSD.

The damped inverse ``(G (x) A + delta I)^{-1}`` is exact through eigendecompositions
``G = U_G diag(g) U_G^T``, ``A = U_A diag(a) U_A^T``:

    (G (x) A + delta I)^{-1} vec(W) = vec(U_G [(U_G^T W U_A) / (g a^T + delta)] U_A^T)

Example:
    >>> import torch, backprobe
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> loss_fn = torch.nn.CrossEntropyLoss()
    >>> x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    >>> with backprobe.record(model, backprobe.KFLR(), loss_fn=loss_fn):
    ...     loss_fn(model(x), y).backward()
    >>> kfac = KFACOperator(list(model.parameters()), savefield="kflr")
    >>> inv = kfac.inverse(damping=1e-3)
    >>> v = torch.randn(kfac.shape[0])
    >>> bool(torch.allclose(inv @ (kfac @ v + 1e-3 * v), v, atol=1e-3))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from backprobe.linalg._operator import LinearOperator


class KFACOperator(LinearOperator):
    """Block-diagonal Kronecker-factored curvature from recorded factors.

    Args:
        params: the parameters, each carrying its factors (after ``record``).
        savefield: attribute holding them: ``"kfac"``, ``"kflr"`` or ``"kfra"``.
        factors: explicit factors per parameter instead (``[G, A]`` or ``[G]``).

    Raises:
        ValueError: a parameter without factors, or factors whose sizes do not match it.
    """

    symmetric = True
    psd = True

    def __init__(self, params: Sequence[nn.Parameter], savefield: str = "kfac",
                 factors: Sequence[Sequence[Tensor]] | None = None) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty")
        if factors is None:
            missing = [i for i, p in enumerate(self.params) if not hasattr(p, savefield)]
            if missing:
                raise ValueError(f"parameters {missing} have no '{savefield}' attribute: run a "
                                 f"backward inside backprobe.record(model, ...) first")
            factors = [getattr(p, savefield) for p in self.params]
        self.factors = [[f.detach() for f in fs] for fs in factors]
        for i, (p, fs) in enumerate(zip(self.params, self.factors)):
            size = fs[0].shape[0] * (fs[1].shape[0] if len(fs) == 2 else 1)
            if len(fs) not in (1, 2) or size != p.numel():
                raise ValueError(f"factors of parameter {i} (shape {tuple(p.shape)}) have "
                                 f"sizes {[tuple(f.shape) for f in fs]}")
        self.sizes = [p.numel() for p in self.params]
        n = sum(self.sizes)
        self.shape = (n, n)
        self.dtype, self.device = self.factors[0][0].dtype, self.factors[0][0].device

    def _apply(self, v: Tensor, fn_w: object, fn_b: object) -> Tensor:
        k = v.shape[1]
        out = []
        for chunk, fs in zip(v.split(self.sizes), self.factors):
            if len(fs) == 2:
                w = chunk.mT.reshape(k, fs[0].shape[0], fs[1].shape[0])
                out.append(fn_w(fs, w).reshape(k, -1).mT)  # type: ignore[operator]
            else:
                out.append(fn_b(fs, chunk))  # type: ignore[operator]
        return torch.cat(out, 0)

    def _matmat(self, v: Tensor) -> Tensor:
        return self._apply(v, lambda fs, w: fs[0] @ w @ fs[1], lambda fs, c: fs[0] @ c)

    def to_dense(self) -> Tensor:
        blocks = [torch.kron(fs[0], fs[1]) if len(fs) == 2 else fs[0] for fs in self.factors]
        return torch.block_diag(*blocks)

    def inverse(self, damping: float) -> KFACInverseOperator:
        """``(K + damping I)^{-1}`` blockwise, exactly (see the module docstring)."""
        return KFACInverseOperator(self, damping)


class KFACInverseOperator(LinearOperator):
    """``(G (x) A + delta I)^{-1}`` per block (see :mod:`.kfac`).

    Raises:
        ValueError: ``damping < 0``, or ``0`` with a singular block.
    """

    symmetric = True
    psd = True

    def __init__(self, kfac: KFACOperator, damping: float) -> None:
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping!r}")
        self.kfac, self.damping = kfac, float(damping)
        self.shape, self.dtype, self.device = kfac.shape, kfac.dtype, kfac.device
        self.eigs = [[torch.linalg.eigh(f) for f in fs] for fs in kfac.factors]
        for i, es in enumerate(self.eigs):
            lam = es[0].eigenvalues if len(es) == 1 else \
                es[0].eigenvalues[:, None] * es[1].eigenvalues[None, :]
            if float(lam.min()) + self.damping <= 0:
                raise ValueError(f"block {i} is singular: increase damping above "
                                 f"{-float(lam.min()):.3g}")

    def _matmat(self, v: Tensor) -> Tensor:
        k = v.shape[1]
        d = self.damping
        out = []
        for chunk, es, fs in zip(v.split(self.kfac.sizes), self.eigs, self.kfac.factors):
            if len(es) == 2:
                (g, ug), (a, ua) = es
                w = chunk.mT.reshape(k, fs[0].shape[0], fs[1].shape[0])
                w = ug.mT @ w @ ua / (g[:, None] * a[None, :] + d)
                out.append((ug @ w @ ua.mT).reshape(k, -1).mT)
            else:
                g, ug = es[0]
                out.append(ug @ ((ug.mT @ chunk) / (g[:, None] + d)))
        return torch.cat(out, 0)
