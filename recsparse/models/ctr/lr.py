"""Logistic regression: the first-order term alone, ``σ(Σ_f w[row(x_f)] + <v, dense> + b)``."""

from __future__ import annotations

import torch

from recsparse.embeddings.features import FittedFeatureSpec
from recsparse.models.ctr.base import CTRModel


class LogisticRegression(CTRModel):
    name = "lr"

    def __init__(self, fitted: FittedFeatureSpec, dim: int = 16, backend: str = "torch", seed: int = 0) -> None:
        super().__init__(fitted, dim, backend, seed, linear=True, vectors=False)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.zeros(dense.shape[0], device=dense.device)
