"""Per-layer contractions behind every quantity, one class per kind of layer.

A *site* is one parametrised module under :func:`~backprobe.quantities.record`. What a
forward call of it leaves behind (its input in the form its layer op needs) is a *call*;
after backward, the calls of one site and their output-gradient *columns* ``[M, N, *out]``
(``M = 1`` for the gradient itself, ``M`` columns of the loss Hessian's square root for
curvature) feed one bound object with four contractions:

* ``per_example(gs, sl)``: ``{name: [M, n, *param.shape]}`` for the examples ``sl``;
* ``sq_norms(gs)``: ``{name: [M, N]}`` squared norms of those, without materialising them
  where the algebra allows;
* ``diag(gs, batch)``: ``sum_m per_example**2`` (``[N, *shape]``) or also summed over ``n``;
* ``kron(gs)``: Kronecker factors ``{name: [G, A] or [G]}``.

Calls of a module used several times in one forward are concatenated along the
weight-sharing axis, which sums their terms per example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from backprobe.layers import AffineOp

#: Elements of per-example tensors materialised at once when only their reductions are needed.
CHUNK_ELEMENTS = 1 << 24

ALL = slice(None)


class BoundSite:
    """The calls of one site, ready for contraction with output-gradient columns."""

    def __init__(
        self, params: dict[str, nn.Parameter], calls: Sequence[tuple[Tensor, Any]]
    ) -> None:
        self.params = params
        self.calls = list(calls)

    def per_example(
        self, gs: Sequence[Tensor], sl: slice = ALL, out: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Per-column, per-example parameter gradients ``{name: [M, n, *shape]}``.

        ``out`` optionally holds ``[n, *shape]`` buffers a site may write into (``M = 1``).
        """
        raise NotImplementedError

    def factors(self, gs: Sequence[Tensor]) -> dict[str, tuple[Tensor, ...]] | None:
        """Exact factors of the per-example terms (``BatchGradFactors``), or ``None``."""
        return None

    def moments(self, gs: Sequence[Tensor]) -> dict[str, tuple[Tensor, Tensor, Tensor]] | None:
        """Sum, elementwise second moment and squared norms without per-example tensors.

        ``None`` where that needs them (the caller then forms them).
        """
        return None

    def sq_norms(self, gs: Sequence[Tensor]) -> dict[str, Tensor]:
        """Squared norms ``{name: [M, N]}`` of the per-example gradients."""
        return {k: v.flatten(2).square().sum(-1) for k, v in self.per_example(gs).items()}

    def chunks(self, gs: Sequence[Tensor]) -> list[slice]:
        """Slices over examples such that one chunk of per-example tensors stays small."""
        m, n = gs[0].shape[:2]
        numel = sum(p.numel() for p in self.params.values())
        step = max(1, CHUNK_ELEMENTS // max(1, m * numel))
        return [slice(i, min(i + step, n)) for i in range(0, n, step)] or [slice(0, 0)]

    def diag(self, gs: Sequence[Tensor], batch: bool) -> dict[str, Tensor]:
        """``sum_m B[m, n]**2`` per example (``batch``) or also summed over examples."""
        parts: dict[str, list[Tensor]] = {k: [] for k in self.params}
        for sl in self.chunks(gs):
            for k, v in self.per_example([g[:, sl] for g in gs], sl).items():
                sq = v.square().sum(0)
                parts[k].append(sq if batch else sq.sum(0))
        if batch:
            return {k: torch.cat(v) for k, v in parts.items()}
        return {k: torch.stack(v).sum(0) for k, v in parts.items()}

    def kron(self, gs: Sequence[Tensor], name: str) -> dict[str, list[Tensor]]:
        """Kronecker factors; the default is the exact GGN block ``[sum B B^T]`` per parameter.

        Only sensible for small parameters (normalisation layers); ``name`` is the quantity.
        """
        out: dict[str, list[Tensor]] = {}
        for k, p in self.params.items():
            if p.numel() > 4096:
                raise ValueError(
                    f"{name}: no Kronecker factorisation for {k} of shape {tuple(p.shape)}"
                )
            acc = None
            for sl in self.chunks(gs):
                b = self.per_example([g[:, sl] for g in gs], sl)[k].flatten(2).flatten(0, 1)
                acc = b.mT @ b if acc is None else acc + b.mT @ b
            assert acc is not None
            out[k] = [acc]
        return out


class AffineSite(BoundSite):
    """Linear and ConvNd (any groups) through the layer op's canonical form.

    ``a``: unfolded input ``[N, S, G, D_in/G]`` (computed lazily); columns
    ``[M, N, S, G, D_out/G]``. Per-example weight gradients are batched matrix products
    of the two (on CPU, unfolding plus ``bmm`` beat convolution backward with the examples
    folded into groups by 1.1-20x on 3C3D's layers).
    """

    def __init__(self, params: dict[str, nn.Parameter], calls: Sequence[tuple[Tensor, Any]]):
        super().__init__(params, calls)
        self.ops: list[AffineOp] = [op for _, op in calls]
        self.op = self.ops[0]
        self.groups = self.op.groups
        self.n = int(calls[0][0].shape[0])
        self._a: Tensor | None = None

    @property
    def a(self) -> Tensor:
        """The unfolded input ``[N, S, G, D_in/G]`` (all calls concatenated along ``S``)."""
        if self._a is None:
            parts = [op.canonical_input(x) for x, op in self.calls]
            a = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            self._a = a.unflatten(-1, (self.groups, -1))
        return self._a

    def _g(self, gs: Sequence[Tensor]) -> Tensor:
        parts = []
        for g, op in zip(gs, self.ops):
            m, n = g.shape[:2]
            c = op.canonical_output_grad(g.flatten(0, 1))  # [M*N, S, D_out]
            parts.append(c.reshape(m, n, c.shape[1], op.d_out))
        g = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return g.unflatten(-1, (self.groups, -1))

    def _weight_matrices(self, g: Tensor, sl: slice, out: Tensor | None = None) -> Tensor:
        """``[n, M, D_out, D_in]`` per-column, per-example weight matrices (``G = 1``).

        ``out``: an ``[n, D_out, D_in]`` buffer to write into (``M = 1`` only).
        """
        m, n, s, _, o = g.shape
        a = self.a[sl].flatten(2).to(g.dtype)  # [n, S, D_in]
        if out is not None and m == 1:
            gm = g[0].flatten(2).transpose(1, 2)  # [n, D_out, S]
            if s == 1:
                return torch.mul(gm, a, out=out).unsqueeze(1)
            return torch.bmm(gm, a, out=out).unsqueeze(1)
        if s == 1:  # outer products: a broadcast multiply beats bmm with inner size 1
            return g.flatten(3).permute(1, 0, 3, 2) * a.unsqueeze(1)
        if m == 1:
            gm = g[0].flatten(2).transpose(1, 2)
        else:
            gm = g.flatten(3).permute(1, 0, 3, 2).reshape(n, m * o, s)
        return torch.bmm(gm, a).unflatten(1, (m, o))

    def _direct(self, gs: Sequence[Tensor], sl: slice) -> Tensor | None:
        """Per-example weight gradients from the layer op's own fast path, if all calls have one.

        (Used only while the unfolded input ``a`` has not been formed anyway.)
        """
        total = None
        for (x, op), g in zip(self.calls, gs):
            w = op.per_example_weight_grad(x[sl], g[0])
            if w is None:
                return None
            total = w if total is None else total + w
        return total

    def _direct_moment(self, gs: Sequence[Tensor]) -> Tensor | None:
        """``sum_{n,s} a a^T`` from the op's unfold-free path (all calls), or ``None``."""
        if self._a is not None:
            return None
        total = None
        for (x, op), g in zip(self.calls, gs):
            m = op.input_second_moment(x.to(g.dtype), tuple(g.shape[3:]))
            if m is None:
                return None
            total = m if total is None else total + m
        return total

    def _direct_diag(self, gs: Sequence[Tensor], batch: bool) -> Tensor | None:
        """``sum_m`` of squared per-example weight gradients, by the unfold-free fast path.

        One column at a time; ``None`` where the op has no fast path or ``a`` exists anyway.
        """
        if self._a is not None:
            return None
        acc = None
        for mi in range(gs[0].shape[0]):
            w = self._direct([g[mi:mi + 1] for g in gs], ALL)
            if w is None:
                return None
            w = w.square_() if batch else w.square_().sum(0)
            acc = w if acc is None else acc.add_(w)
        return acc

    def per_example(
        self, gs: Sequence[Tensor], sl: slice = ALL, out: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        m = gs[0].shape[0]
        bufs, out = out or {}, {}
        if "weight" in self.params:
            buf = bufs.get("weight")
            view = None if buf is None else self.op.matrix_view(buf)
            direct = self._direct(gs, sl) if m == 1 and self._a is None else None
            if direct is not None:
                out["weight"] = (direct if buf is None else buf.copy_(direct)).unsqueeze(0)
            elif self.groups == 1 and buf is not None and view is not None and m == 1:
                self._weight_matrices(self._g(gs), sl, view)
                out["weight"] = buf.unsqueeze(0)
            elif self.groups == 1:
                w = self._weight_matrices(self._g(gs), sl)
                out["weight"] = self.op.weight_from_matrix(w.transpose(0, 1))
            else:
                g = self._g(gs)
                a = self.a[sl].to(g.dtype)
                w = torch.einsum("mnsgo,nsgi->mngoi", g, a)
                out["weight"] = self.op.weight_from_blocks(w)
        if "bias" in self.params:
            out["bias"] = self._g(gs).sum(2).flatten(2)
        return out

    def factors(self, gs: Sequence[Tensor]) -> dict[str, tuple[Tensor, ...]] | None:
        """``{"weight": (delta, a), "bias": (delta,)}`` for one position, one group, else ``None``.

        ``delta``: ``[N, D_out]`` output-gradient rows, ``a``: ``[N, D_in]`` input rows.
        """
        g = self._g(gs)
        if "weight" not in self.params or g.shape[0] != 1 or g.shape[2] != 1 or self.groups != 1:
            return None
        if self.op.matrix_view(self.params["weight"].detach()) is None:
            return None  # (delta, a) would factor a matrix that is not the weight's layout
        delta = g[0].flatten(1)
        out: dict[str, tuple[Tensor, ...]] = {
            "weight": (delta, self.a.flatten(1).to(delta.dtype))
        }
        if "bias" in self.params:
            out["bias"] = (delta,)
        return out

    def moments(self, gs: Sequence[Tensor]) -> dict[str, tuple[Tensor, Tensor, Tensor]] | None:
        """``{name: (sum_n b_n, sum_n b_n**2, ||b_n||^2)}`` for one column set, or ``None``.

        Only where no per-example tensor is needed: one position (``S = 1``, a Linear layer
        on ``[N, D]`` inputs), where ``b_n = g_n a_n^T`` gives ``sum_n b_n = G^T A``,
        ``sum_n b_n**2 = (G**2)^T (A**2)`` and ``||b_n||^2 = ||g_n||^2 ||a_n||^2``.
        """
        g = self._g(gs)
        if g.shape[0] != 1 or g.shape[2] != 1 or self.groups != 1:
            return None
        g = g[0].flatten(1)  # [N, D_out]
        out = {}
        g2 = g.square()
        if "weight" in self.params:
            a = self.a.flatten(1).to(g.dtype)
            a2 = a.square()
            to_w = self.op.weight_from_matrix
            out["weight"] = (to_w(g.T @ a), to_w(g2.T @ a2), g2.sum(1) * a2.sum(1))
        if "bias" in self.params:
            out["bias"] = (g.sum(0), g2.sum(0), g2.sum(1))
        return out

    def sq_norms(self, gs: Sequence[Tensor]) -> dict[str, Tensor]:
        g = self._g(gs)
        m, n, s, grp, d_out = g.shape
        d_in = self.op.d_in // grp
        out = {}
        if "weight" in self.params:
            full = m * n * s * grp * d_in * d_out
            gram = n * s * s * grp * d_in + m * n * s * s * grp * d_out
            if gram < full:
                a = self.a.to(g.dtype)
                ka = torch.einsum("nsgi,ntgi->ngst", a, a)
                kg = torch.einsum("mnsgo,mntgo->mngst", g, g)
                out["weight"] = (kg * ka.unsqueeze(0)).sum((-3, -2, -1))
            else:
                w = self.per_example(gs)["weight"]
                out["weight"] = torch.linalg.vector_norm(w.flatten(2), dim=-1).square()
        if "bias" in self.params:
            out["bias"] = g.sum(2).flatten(2).square().sum(-1)
        return out

    def diag(self, gs: Sequence[Tensor], batch: bool) -> dict[str, Tensor]:
        g = self._g(gs)
        m, n, s, grp, d_out = g.shape
        out: dict[str, Tensor] = {}
        if "bias" in self.params:
            b = g.sum(2).flatten(2).square().sum(0)
            out["bias"] = b if batch else b.sum(0)
        if "weight" not in self.params:
            return out
        to_w = self.op.weight_from_matrix
        if s == 1 and grp == 1:
            g2 = g.flatten(2).square()  # [M, N, D_out]
            a2 = self.a.flatten(1).to(g2.dtype).square()  # [N, D_in]
            out["weight"] = to_w(torch.einsum("mno,ni->noi" if batch else "mno,ni->oi", g2, a2))
            return out
        if grp != 1:
            out["weight"] = super().diag(gs, batch)["weight"]
            return out
        direct = self._direct_diag(gs, batch)
        if direct is not None:
            out["weight"] = direct
            return out
        parts = []
        for sl in self.chunks(gs):
            w = self._weight_matrices(g[:, sl], sl).square_().sum(1)  # [n, D_out, D_in]
            parts.append(w if batch else w.sum(0))
        out["weight"] = to_w(torch.cat(parts) if batch else torch.stack(parts).sum(0))
        return out

    def kron(self, gs: Sequence[Tensor], name: str) -> dict[str, list[Tensor]]:
        if "weight" in self.params and self.op.matrix_view(self.params["weight"].detach()) is None:
            raise ValueError(
                f"{name}: Kronecker factors need a weight laid out as the [D_out, D_in] matrix "
                f"(not the case for {type(self.op).__name__} with groups={self.groups})"
            )
        g = self._g(gs)
        gbar = g.sum(2).flatten(0, 1).flatten(1)  # [M*N, D_out], summed over positions
        big_g = gbar.mT @ gbar
        out: dict[str, list[Tensor]] = {}
        if "weight" in self.params:
            moment = self._direct_moment(gs)
            if moment is None:
                a = self.a.flatten(2).flatten(0, 1).to(g.dtype)  # [N*S, D_in]
                moment = a.mT @ a
            out["weight"] = [big_g, moment / self.n]
        if "bias" in self.params:
            out["bias"] = [big_g]
        return out


class NormSite(BoundSite):
    """BatchNorm (eval), LayerNorm, GroupNorm: ``y = weight * xhat + bias``."""

    def per_example(
        self, gs: Sequence[Tensor], sl: slice = ALL, out: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        w = b = None
        for (xhat, op), g in zip(self.calls, gs):
            wi, bi = op.per_example(xhat[sl].to(g.dtype), g)
            w = wi if w is None else w + wi
            b = bi if b is None else b + bi
        res: dict[str, Tensor] = {}
        if "weight" in self.params and w is not None:
            res["weight"] = w
        if "bias" in self.params and b is not None:
            res["bias"] = b
        return res


class EmbeddingSite(BoundSite):
    """``nn.Embedding``: one-hot inputs, see :mod:`backprobe.layers.embedding`."""

    def __init__(self, params: dict[str, nn.Parameter], calls: Sequence[tuple[Tensor, Any]]):
        super().__init__(params, calls)
        self.op = calls[0][1]
        self.idx = torch.cat([i.reshape(i.shape[0], -1) for i, _ in calls], dim=1)

    def _g(self, gs: Sequence[Tensor]) -> Tensor:
        d = self.op.embedding_dim
        return torch.cat([g.reshape(g.shape[0], g.shape[1], -1, d) for g in gs], dim=2)

    def per_example(
        self, gs: Sequence[Tensor], sl: slice = ALL, out: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        return {"weight": self.op.per_example(self.idx[sl], self._g(gs))}

    def sq_norms(self, gs: Sequence[Tensor]) -> dict[str, Tensor]:
        return {"weight": self.op.sq_norms(self.idx, self._g(gs))}

    def kron(self, gs: Sequence[Tensor], name: str) -> dict[str, list[Tensor]]:
        raise ValueError(f"{name}: Kronecker factors are not implemented for nn.Embedding")


class FuncSite(BoundSite):
    """Any single-input module, by ``torch.func`` (``record(..., fallback="torch.func")``).

    Per-example gradients are vector-Jacobian products of the module applied to one example
    at a time, vectorised with ``vmap``: exact for modules that treat examples
    independently, slower than the closed forms of the other sites.
    """

    def per_example(
        self, gs: Sequence[Tensor], sl: slice = ALL, out: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        from torch.func import functional_call, vjp, vmap

        params = {k: v.detach() for k, v in self.params.items()}
        out = None
        for (x, module), g in zip(self.calls, gs):

            def one(xn: Tensor, gn: Tensor, module: nn.Module = module) -> dict[str, Tensor]:
                def f(theta: dict[str, Tensor]) -> Tensor:
                    return functional_call(module, theta, (xn.unsqueeze(0),))

                _, pull = vjp(f, params)[:2]
                return pull(gn.unsqueeze(0))[0]

            r = vmap(vmap(one), in_dims=(None, 0))(x[sl].to(g.dtype), g)
            out = r if out is None else {k: out[k] + r[k] for k in out}
        assert out is not None
        return out


#: The site class for each op kind (see :data:`backprobe.layers.KINDS`), and ``"func"``.
SITES: dict[str, type[BoundSite]] = {
    "affine": AffineSite, "norm": NormSite, "embedding": EmbeddingSite, "func": FuncSite,
}
