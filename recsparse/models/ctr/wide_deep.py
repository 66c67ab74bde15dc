"""Wide & Deep (Cheng et al., DLRS 2016): wide = the first-order term over the same features; deep = an MLP over
the concatenated field embeddings and dense features; logits summed."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsparse.embeddings.features import FittedFeatureSpec
from recsparse.models.ctr.base import CTRModel, dnn


class WideDeep(CTRModel):
    name = "wide_deep"

    def __init__(self, fitted: FittedFeatureSpec, dim: int = 16, backend: str = "torch", seed: int = 0,
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.0) -> None:
        super().__init__(fitted, dim, backend, seed, linear=True)
        self.deep, out = dnn(self.num_sparse * dim + self.num_dense, hidden, dropout)
        self.head = nn.Linear(out, 1)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.head(self.deep(torch.cat([emb.flatten(1), dense], dim=1))).squeeze(-1)
