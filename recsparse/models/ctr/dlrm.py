"""DLRM (Naumov et al., 2019): bottom MLP maps the dense features to a ``d``-vector, pairwise dot products between
it and the field embeddings (TorchRec's ``InteractionArch``), top MLP -> logit. Without dense features a learned
``d``-vector stands in for the bottom MLP's output."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsparse.embeddings.features import FittedFeatureSpec
from recsparse.models.ctr.base import CTRModel, dnn


class DLRM(CTRModel):
    name = "dlrm"

    def __init__(self, fitted: FittedFeatureSpec, dim: int = 16, backend: str = "torch", seed: int = 0,
                 bottom: Sequence[int] = (64,), top: Sequence[int] = (256, 128), dropout: float = 0.0) -> None:
        super().__init__(fitted, dim, backend, seed)
        from torchrec.models.dlrm import InteractionArch

        if self.num_dense:
            self.bottom, _ = dnn(self.num_dense, [*bottom, dim])
            self.dense_vector = None
        else:
            self.bottom = None
            self.dense_vector = nn.Parameter(torch.zeros(dim))
        self.inter = InteractionArch(self.num_sparse)
        F = self.num_sparse
        self.top, out = dnn(dim + F * (F + 1) // 2, top, dropout)
        self.head = nn.Linear(out, 1)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        d = self.bottom(dense) if self.bottom is not None else self.dense_vector.expand(emb.shape[0], -1)
        return self.head(self.top(self.inter(d, emb))).squeeze(-1)
