"""Matrix-free linear operators: the one input type of every estimator in ``linalg``.

An operator ``A`` of shape ``(n, m)`` is anything that multiplies a *block* of vectors:
``A @ X`` with ``X [m, k]`` gives ``[n, k]`` in one call (one "block of matvecs", which a
network's curvature operator evaluates far faster than ``k`` single products).

:func:`as_operator` accepts

* a 2-D tensor (``A.mT`` gives the adjoint);
* a :class:`LinearOperator` (this module's base class, e.g. the curvature operators of
  :mod:`backprobe.linalg.curvature` or a :class:`MatrixFree` wrapper of a function);
* a callable with a ``shape`` attribute, ``f(X [m, k]) -> [n, k]``, taken to be symmetric;
* a ``scipy.sparse.linalg.LinearOperator`` (or a scipy/numpy matrix); scipy is never
  imported unless such an object is passed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

MatmatFn = Callable[[Tensor], Tensor]


class LinearOperator:
    """A linear map ``R^m -> R^n`` known through products with blocks of vectors.

    Subclasses implement :meth:`_matmat` (``X [m, k] -> [n, k]``) and, when the operator
    is not symmetric, :meth:`_rmatmat` (``A^T X``).

    Attributes:
        shape: ``(n, m)``.
        dtype: dtype of the vectors it takes and gives.
        device: device of those vectors.
        symmetric: ``A == A^T`` (then the adjoint is the operator itself).
        psd: known to be symmetric positive semi-definite (GGN, Fisher, KFAC); estimators
            such as ``trace(method="auto")`` and :func:`~backprobe.linalg.nystrom` use it.
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    symmetric: bool = False
    psd: bool = False

    def _matmat(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _rmatmat(self, x: Tensor) -> Tensor:
        if self.symmetric:
            return self._matmat(x)
        raise TypeError(
            f"{type(self).__name__} has no adjoint (A^T @ X); the method needs one. Pass a "
            "tensor, a symmetric operator, or a MatrixFree with adjoint="
        )

    # -- products ------------------------------------------------------------------------
    def matmat(self, x: Tensor) -> Tensor:
        """``A @ X`` for ``X [m, k]``, checked: ``[n, k]``."""
        n, m = self.shape
        if x.dim() != 2 or x.shape[0] != m:
            raise ValueError(f"expected a block of vectors [{m}, k], got {tuple(x.shape)}")
        y = self._matmat(x.to(self.dtype))
        if not isinstance(y, Tensor) or tuple(y.shape) != (n, x.shape[1]):
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(
                f"operator {self!r} returned {got} for a [{m}, {x.shape[1]}] block; it must "
                f"return [{n}, {x.shape[1]}] (one column per input vector)"
            )
        return y

    def rmatmat(self, x: Tensor) -> Tensor:
        """``A^T @ X`` for ``X [n, k]``: ``[m, k]``."""
        n, m = self.shape
        if x.dim() != 2 or x.shape[0] != n:
            raise ValueError(f"expected a block of vectors [{n}, k], got {tuple(x.shape)}")
        y = self._rmatmat(x.to(self.dtype))
        if tuple(y.shape) != (m, x.shape[1]):
            raise ValueError(f"adjoint returned {tuple(y.shape)}, expected [{m}, {x.shape[1]}]")
        return y

    def __matmul__(self, x: Tensor) -> Tensor:
        """``A @ x`` for a vector ``[m]`` or a block ``[m, k]``."""
        if isinstance(x, Tensor) and x.dim() == 1:
            return self.matmat(x[:, None])[:, 0]
        return self.matmat(x)

    @property
    def T(self) -> LinearOperator:  # noqa: N802  (numpy's name)
        """The adjoint as an operator."""
        return _Adjoint(self)

    # -- conversions ---------------------------------------------------------------------
    def to_dense(self) -> Tensor:
        """The ``[n, m]`` matrix, from ``m`` products with identity columns (tests, small ``m``)."""
        return self.matmat(torch.eye(self.shape[1], dtype=self.dtype, device=self.device))

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` on numpy arrays (imports scipy).

        Products convert numpy -> torch -> numpy, so scipy's solvers (``eigsh``, ``cg``,
        ``lsmr``) run on this operator directly.
        """
        from scipy.sparse.linalg import LinearOperator as ScipyOperator

        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype

        def mm(x: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(x).reshape(self.shape[1], -1), dtype=self.dtype)
            return self.matmat(t.to(self.device)).detach().cpu().numpy()

        def rmm(x: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(x).reshape(self.shape[0], -1), dtype=self.dtype)
            return self.rmatmat(t.to(self.device)).detach().cpu().numpy()

        return ScipyOperator(
            self.shape, matvec=mm, rmatvec=rmm, matmat=mm, rmatmat=rmm, dtype=np_dtype
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class _Adjoint(LinearOperator):
    def __init__(self, op: LinearOperator) -> None:
        self.op = op
        self.shape = (op.shape[1], op.shape[0])
        self.dtype, self.device = op.dtype, op.device
        self.symmetric, self.psd = op.symmetric, op.psd

    def _matmat(self, x: Tensor) -> Tensor:
        return self.op.rmatmat(x)

    def _rmatmat(self, x: Tensor) -> Tensor:
        return self.op.matmat(x)


class TensorOperator(LinearOperator):
    """A dense ``[n, m]`` tensor as an operator (adjoint: its transpose).

    Args:
        a: the matrix.
        symmetric: declare ``a == a^T`` (default: checked with ``torch.equal``).
    """

    def __init__(self, a: Tensor, symmetric: bool | None = None) -> None:
        if a.dim() != 2:
            raise ValueError(f"a tensor operator must be 2-D, got shape {tuple(a.shape)}")
        if not a.dtype.is_floating_point:
            raise TypeError(f"a tensor operator needs a floating dtype, got {a.dtype}")
        self.a = a
        self.shape = (a.shape[0], a.shape[1])
        self.dtype, self.device = a.dtype, a.device
        self.symmetric = bool(a.shape[0] == a.shape[1] and torch.equal(a, a.mT)) \
            if symmetric is None else symmetric

    def _matmat(self, x: Tensor) -> Tensor:
        return self.a @ x

    def _rmatmat(self, x: Tensor) -> Tensor:
        return self.a.mT @ x

    def to_dense(self) -> Tensor:
        return self.a


class MatrixFree(LinearOperator):
    """A function on blocks of vectors as an operator.

    Args:
        matmat: ``f(X [m, k]) -> [n, k]``.
        shape: ``(n, m)``, or ``n`` for a square operator.
        adjoint: ``g(Y [n, k]) -> [m, k]`` computing ``A^T Y`` (``None``: the operator
            is symmetric if ``symmetric`` is true, else methods needing ``A^T`` raise).
        symmetric: ``A == A^T`` (default: true when square and no ``adjoint`` is given).
        psd: ``A`` is symmetric positive semi-definite.
        dtype: vector dtype (default: torch's default dtype).
        device: vector device (default: CPU).

    Example:
        >>> a = torch.diag(torch.arange(1.0, 5.0))
        >>> op = MatrixFree(lambda x: a @ x, 4)
        >>> (op @ torch.ones(4)).tolist()
        [1.0, 2.0, 3.0, 4.0]
    """

    def __init__(
        self, matmat: MatmatFn, shape: int | tuple[int, int], *, adjoint: MatmatFn | None = None,
        symmetric: bool | None = None, psd: bool = False, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not callable(matmat):
            raise TypeError(f"matmat must be callable, got {type(matmat).__name__}")
        shp = (shape, shape) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if len(shp) != 2 or min(shp) < 1:
            raise ValueError(f"shape must be a positive int or (n, m), got {shape!r}")
        self.fn, self.adjoint = matmat, adjoint
        self.shape = (shp[0], shp[1])
        self.dtype = dtype or torch.get_default_dtype()
        self.device = torch.device(device or "cpu")
        square = self.shape[0] == self.shape[1]
        self.symmetric = (square and adjoint is None) if symmetric is None else symmetric
        if psd and not (square and self.symmetric):
            raise ValueError("psd=True needs a square, symmetric operator")
        self.psd = psd

    def _matmat(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def _rmatmat(self, x: Tensor) -> Tensor:
        if self.adjoint is not None:
            return self.adjoint(x)
        return super()._rmatmat(x)


class _ScipyWrapper(LinearOperator):
    def __init__(self, a: Any) -> None:
        self.a = a
        self.shape = (int(a.shape[0]), int(a.shape[1]))
        self.dtype = torch.from_numpy(np.zeros(0, dtype=a.dtype)).dtype \
            if a.dtype is not None else torch.float64
        if not self.dtype.is_floating_point:
            self.dtype = torch.float64
        self.device = torch.device("cpu")
        self.symmetric = bool(getattr(a, "symmetric", False))

    def _matmat(self, x: Tensor) -> Tensor:
        y = self.a.matmat(x.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(y), dtype=self.dtype)

    def _rmatmat(self, x: Tensor) -> Tensor:
        y = self.a.rmatmat(x.detach().cpu().numpy())
        return torch.as_tensor(np.asarray(y), dtype=self.dtype)


def _is_scipy(a: Any) -> bool:
    mod = type(a).__module__ or ""
    return mod.startswith("scipy") and hasattr(a, "shape") and len(a.shape) == 2


def as_operator(a: Any) -> LinearOperator:
    """Wrap ``a`` as a :class:`LinearOperator` (see the module docstring for what is accepted).

    Args:
        a: tensor ``[n, m]``, :class:`LinearOperator`, callable with a ``shape``
            attribute, scipy ``LinearOperator``/sparse matrix, or numpy array.

    Returns:
        The operator (``a`` itself if it already is one).

    Raises:
        TypeError: ``a`` is none of these; a bare function without ``shape`` (wrap it in
            :class:`MatrixFree` to give its size).
    """
    if isinstance(a, LinearOperator):
        return a
    if isinstance(a, Tensor):
        return TensorOperator(a)
    if isinstance(a, np.ndarray):
        return TensorOperator(torch.from_numpy(a))
    if _is_scipy(a):
        if hasattr(a, "matmat"):
            return _ScipyWrapper(a)
        from scipy.sparse.linalg import aslinearoperator

        return _ScipyWrapper(aslinearoperator(a))
    if callable(a):
        shape = getattr(a, "shape", None)
        if shape is None:
            raise TypeError(
                "a bare callable does not say its size: wrap it as "
                "backprobe.linalg.MatrixFree(f, n) (f maps [n, k] -> [n, k])"
            )
        return MatrixFree(a, tuple(shape), dtype=getattr(a, "dtype", None),
                          device=getattr(a, "device", None))
    raise TypeError(
        f"expected a tensor, a backprobe.linalg.LinearOperator, a callable with a shape or a "
        f"scipy LinearOperator, got {type(a).__name__}"
    )


def square_operator(a: Any, name: str = "A") -> LinearOperator:
    """:func:`as_operator`, then check the operator is square.

    Raises:
        ValueError: the operator is not square.
    """
    op = as_operator(a)
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"{name} must be square for this estimate, got shape {op.shape}")
    return op
