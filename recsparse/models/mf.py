"""Matrix factorisation on id-mapped tables: ``s(u, i) = <e_u, e_i>`` (optionally cosine / temperature).

Koren, Bell & Volinsky, "Matrix Factorization Techniques for Recommender Systems" (Computer 2009); trained with BPR
(Rendle et al., 2009) or with sampled softmax (in-batch + uniform negatives, logQ-corrected; Yi et al., 2019) —
see :mod:`recsparse.models.losses`. ``e_u`` is the embedding-core row(s) of the user's mapped id: with GraphHash the
users of one cluster share it (Wu et al., 2024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsparse.embeddings import MappedEmbeddingBagCollection


class MatrixFactorization(nn.Module):
    """``tables``: features ``"user"`` and ``"item"`` of equal dim. ``normalize``: L2-normalise both sides (cosine
    scores; what sampled softmax with a temperature expects)."""

    def __init__(self, tables: MappedEmbeddingBagCollection, num_users: int, num_items: int,
                 normalize: bool = False) -> None:
        super().__init__()
        if set(tables.feature_names) != {"user", "item"}:
            raise ValueError(f"MF tables must have features 'user' and 'item', got {tables.feature_names}")
        self.tables = tables
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.normalize = bool(normalize)

    def _out(self, e: torch.Tensor) -> torch.Tensor:
        return F.normalize(e, dim=-1) if self.normalize else e

    def raw_user(self, users: torch.Tensor) -> torch.Tensor:
        """``users [B]`` -> un-normalised ``[B, d]`` (the layer-0 embedding a regulariser penalises)."""
        return self.tables.embed("user", users)

    def raw_item(self, items: torch.Tensor) -> torch.Tensor:
        return self.tables.embed("item", items)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """``users [B]`` -> ``[B, d]`` scoring vectors."""
        return self._out(self.raw_user(users))

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """``items [B]`` (``None`` -> the whole catalog ``[0, num_items)``) -> ``[B, d]``."""
        if items is None:
            items = torch.arange(self.num_items)
        return self._out(self.raw_item(items))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``users [B]``, ``items [B]`` -> scores ``[B]``."""
        return (self.user_vectors(users) * self.item_vectors(items)).sum(-1)
