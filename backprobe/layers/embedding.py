"""``nn.Embedding`` in per-example form.

An embedding is a linear layer applied to one-hot inputs: ``y[n, s] = W^T onehot(i[n, s])``,
so example ``n``'s weight gradient is ``sum_s onehot(i[n, s]) (outer) g[n, s]`` (rows of
``W`` not looked up get zero), and its squared norm has the Gram form

    ||G_n||^2 = sum_{s,t} [i[n, s] == i[n, t]] <g[n, s], g[n, t]>

which never materialises the ``[V, D]`` per-example matrix. Rows at ``padding_idx`` get no
gradient, as in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backprobe.layers._base import LayerOp, register_op


@register_op(nn.Embedding)
@dataclass(frozen=True)
class EmbeddingOp(LayerOp):
    """Lookup of ``num_embeddings`` rows of width ``embedding_dim``."""

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None

    kind = "embedding"

    @classmethod
    def bind(cls, module: nn.Module, x: Tensor) -> tuple[Tensor, EmbeddingOp]:
        """Return ``(indices, op)`` for an ``nn.Embedding`` applied to indices ``x``.

        Raises:
            ValueError: for ``scale_grad_by_freq=True`` (the gradient then depends on the
                whole batch's index counts, so per-example terms are not defined) or
                ``sparse=True``.
        """
        assert isinstance(module, nn.Embedding)
        if module.scale_grad_by_freq:
            raise ValueError(
                "Embedding(scale_grad_by_freq=True) scales gradients by the batch's index "
                "counts: per-example gradients are not defined. Use scale_grad_by_freq=False."
            )
        if module.sparse:
            raise ValueError("Embedding(sparse=True) is not supported; use sparse=False.")
        return x.detach(), cls(module.num_embeddings, module.embedding_dim, module.padding_idx)

    def _flat(self, idx: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        n = idx.shape[0]
        idx = idx.reshape(n, -1)
        g = g.reshape(g.shape[0], n, -1, self.embedding_dim)
        if self.padding_idx is not None:
            g = g * (idx != self.padding_idx).unsqueeze(-1).to(g.dtype)
        return idx, g

    def per_example(self, idx: Tensor, g: Tensor) -> Tensor:
        """Per-column, per-example weight gradients ``[M, N, V, D]``.

        Args:
            idx: indices ``[N, *S]``.
            g: output-gradient columns ``[M, N, *S, D]``.
        """
        idx, g = self._flat(idx, g)
        m, n, _, d = g.shape
        out = g.new_zeros(m, n, self.num_embeddings, d)
        index = idx.unsqueeze(0).unsqueeze(-1).expand(m, -1, -1, d)
        return out.scatter_add_(2, index, g)

    def sq_norms(self, idx: Tensor, g: Tensor) -> Tensor:
        """``||G_{m,n}||^2`` for every column and example, ``[M, N]`` (chooses the cheaper form)."""
        idx, g = self._flat(idx, g)
        s = idx.shape[1]
        if s * s > self.num_embeddings:
            return self.per_example(idx, g).square().sum((-2, -1))
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype)
        return torch.einsum("mnsd,mntd,nst->mn", g, g, same)


def bind_embedding(module: nn.Module, idx: Tensor) -> tuple[Tensor, EmbeddingOp]:
    """Return ``(indices, op)`` for an ``nn.Embedding`` (same as ``EmbeddingOp.bind``)."""
    return EmbeddingOp.bind(module, idx)
