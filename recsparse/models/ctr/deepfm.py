"""DeepFM (Guo et al., IJCAI 2017): first-order term + FM over the shared field embeddings + an MLP over the same
embeddings (and dense features); the three logits summed."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsparse.embeddings.features import FittedFeatureSpec
from recsparse.models.ctr.base import CTRModel, dnn
from recsparse.models.ctr.fm import fm_interaction


class DeepFM(CTRModel):
    name = "deepfm"

    def __init__(self, fitted: FittedFeatureSpec, dim: int = 16, backend: str = "torch", seed: int = 0,
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.0) -> None:
        super().__init__(fitted, dim, backend, seed, linear=True)
        self.deep, out = dnn(self.num_sparse * dim + self.num_dense, hidden, dropout)
        self.head = nn.Linear(out, 1)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        deep = self.head(self.deep(torch.cat([emb.flatten(1), dense], dim=1)))
        return fm_interaction(emb) + deep.squeeze(-1)
