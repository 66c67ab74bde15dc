"""Two-tower retrieval model: id + side-feature embedding bags -> MLP -> L2-normalised vectors.

Covington et al., "Deep Neural Networks for YouTube Recommendations" (RecSys 2016); Yi et al., "Sampling-Bias-
Corrected Neural Modeling for Large Corpus Item Recommendations" (RecSys 2019) — trained with the in-batch sampled
softmax + logQ correction of :mod:`recsparse.models.losses`. Each tower's sparse features (user id, age bucket,
gender, occupation | item id, genres, year …) are TorchRec-pooled by one
:class:`~recsparse.embeddings.MappedEmbeddingBagCollection` (any id-mapper per feature); the pooled ``[B, Σ dims]``
goes through an MLP to ``[B, out_dim]`` and is L2-normalised, so scores are cosines (divide by a temperature).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection
from recsparse.kernels.tbe import TBEConfig
from recsparse.types import check_positive


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``in_dim -> hidden... -> out_dim`` with ReLU between layers (no activation on the output)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        check_positive("hidden size", h)
        layers += [nn.Linear(d, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class Tower(nn.Module):
    """``KeyedJaggedTensor`` of raw ids (keys ⊇ the tower's features, stride B) -> ``[B, out_dim]`` unit vectors."""

    def __init__(self, features: Sequence[FeatureConfig], hidden: Sequence[int], out_dim: int,
                 backend: str = "torch", init_std: float | None = None, seed: int = 0, dropout: float = 0.0,
                 tbe_config: TBEConfig | None = None) -> None:
        super().__init__()
        check_positive("out_dim", out_dim)
        self.ebc = MappedEmbeddingBagCollection(features, backend=backend, init_std=init_std, seed=seed,
                                                tbe_config=tbe_config)
        self.mlp = mlp(sum(self.ebc.embedding_dims), hidden, out_dim, dropout)

    def embed_features(self, kjt: Any, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Raw-id KJT -> pooled ``[B, Σ dims]``, one block per feature in ``ebc.feature_names`` order (towers have
        no dense features: ``dense`` is part of the SSL encoder contract and must be ``None``)."""
        if dense is not None:
            raise ValueError("Tower has no dense features")
        return self.ebc(kjt).values()

    def encode(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, Σ dims]`` -> ``[B, out_dim]`` unit vectors (the SSL term feeds masked views through here too)."""
        return F.normalize(self.mlp(pooled), dim=-1)

    def forward(self, kjt: Any) -> torch.Tensor:
        return self.encode(self.embed_features(kjt))


class TwoTower(nn.Module):
    """A user tower and an item tower; ``forward(user_kjt, item_kjt) -> cosine scores [B]``."""

    def __init__(self, user_features: Sequence[FeatureConfig], item_features: Sequence[FeatureConfig],
                 hidden: Sequence[int] = (128,), out_dim: int = 64, backend: str = "torch",
                 init_std: float | None = None, seed: int = 0, dropout: float = 0.0,
                 tbe_config: TBEConfig | None = None) -> None:
        super().__init__()
        self.user_tower = Tower(user_features, hidden, out_dim, backend, init_std, seed, dropout, tbe_config)
        self.item_tower = Tower(item_features, hidden, out_dim, backend, init_std, seed + 1, dropout, tbe_config)

    def forward(self, user_kjt: Any, item_kjt: Any) -> torch.Tensor:
        return (self.user_tower(user_kjt) * self.item_tower(item_kjt)).sum(-1)
