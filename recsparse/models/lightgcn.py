"""LightGCN: layer-mean propagation over the normalised user–item graph.

He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation" (SIGIR 2020):
``E⁽ˡ⁺¹⁾ = Â E⁽ˡ⁾`` with ``Â = D^-1/2 A D^-1/2``, ``A = [[0, R], [Rᵀ, 0]]`` over ``U + I`` nodes, and the final
embedding the mean ``(E⁽⁰⁾ + … + E⁽ᴸ⁾) / (L + 1)``. As in GraphHash (Wu et al., 2024) the graph is the *unhashed*
training graph — one node per raw user/item — while a node's layer-0 embedding is the table row(s) of its mapped
id, so a compressed table still propagates over the true graph. ``Â`` is a ``torch.sparse`` CSR matrix.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import torch
from torch import nn

from recsparse.embeddings import MappedEmbeddingBagCollection
from recsparse.types import check_positive


def normalized_adjacency(users: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor, num_users: int,
                         num_items: int) -> torch.Tensor:
    """Symmetric-normalised bipartite adjacency ``[U+I, U+I]`` (sparse CSR, float32). Duplicate edges count once;
    isolated nodes get an all-zero row (their propagated embedding decays to 0, their layer-0 term remains)."""
    u = torch.from_numpy(np.array(users, dtype=np.int64))
    i = torch.from_numpy(np.array(items, dtype=np.int64))
    key = torch.unique(u * num_items + i)
    u, i = key // num_items, key % num_items
    n = num_users + num_items
    rows = torch.cat([u, i + num_users])
    cols = torch.cat([i + num_users, u])
    deg = torch.bincount(rows, minlength=n).to(torch.float32)
    dinv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    vals = dinv[rows] * dinv[cols]
    adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "CSR support is in beta"
        warnings.simplefilter("ignore")
        return adj.to_sparse_csr()


class _SymmetricSpMM(torch.autograd.Function):
    """``Â @ E`` for a symmetric sparse ``Â``: the gradient ``Âᵀ G`` is ``Â G`` — one more CSR product, far cheaper
    than the generic sparse backward (which transposes ``Â`` every call)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, e: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adj = adj
        return torch.sparse.mm(adj, e)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, torch.sparse.mm(ctx.adj, grad)


def symmetric_spmm(adj: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``adj [N, N]`` (symmetric, sparse) @ ``e [N, d]`` -> ``[N, d]``, differentiable in ``e``."""
    return _SymmetricSpMM.apply(adj, e)


class LightGCN(nn.Module):
    """``tables``: features ``"user"`` / ``"item"``; ``adjacency``: :func:`normalized_adjacency` of the train graph.

    ``propagate() -> (users [U, d], items [I, d])`` final (layer-mean) embeddings of every node.
    """

    def __init__(self, tables: MappedEmbeddingBagCollection, adjacency: torch.Tensor, num_users: int, num_items: int,
                 num_layers: int = 3) -> None:
        super().__init__()
        if set(tables.feature_names) != {"user", "item"}:
            raise ValueError(f"LightGCN tables must have features 'user' and 'item', got {tables.feature_names}")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        check_positive("num_users", num_users)
        check_positive("num_items", num_items)
        n = num_users + num_items
        if tuple(adjacency.shape) != (n, n):
            raise ValueError(f"adjacency must be [{n}, {n}] (users + items), got {tuple(adjacency.shape)}")
        self.tables = tables
        self.num_users, self.num_items, self.num_layers = int(num_users), int(num_items), int(num_layers)
        self.adjacency = adjacency  # not a buffer: rebuilt from the data, not stored in checkpoints

    @classmethod
    def from_frame(cls, tables: MappedEmbeddingBagCollection, train: pl.DataFrame, num_users: int, num_items: int,
                   num_layers: int = 3) -> "LightGCN":
        adj = normalized_adjacency(train["user_id"].to_numpy(), train["item_id"].to_numpy(), num_users, num_items)
        return cls(tables, adj, num_users, num_items, num_layers)

    def ego(self) -> torch.Tensor:
        """Layer-0 embeddings ``[U+I, d]``: each node's mapped table row(s)."""
        return torch.cat([self.tables.embed("user", torch.arange(self.num_users)),
                          self.tables.embed("item", torch.arange(self.num_items))])

    def propagate(self, ego: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.ego() if ego is None else ego
        acc = e
        for _ in range(self.num_layers):
            e = symmetric_spmm(self.adjacency, e)
            acc = acc + e
        out = acc / (self.num_layers + 1)
        return out[: self.num_users], out[self.num_users:]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``users [B]``, ``items [B]`` -> scores ``[B]`` (propagates the whole graph)."""
        pu, pi = self.propagate()
        return (pu[users] * pi[items]).sum(-1)
