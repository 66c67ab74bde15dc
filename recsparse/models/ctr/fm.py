"""Factorization machine (Rendle, ICDM 2010): first-order term + ``Σ_{i<j} <e_i, e_j>`` over the sparse fields,
computed as ``½ Σ_k ((Σ_i e_ik)² − Σ_i e_ik²)``. Dense features enter the first-order term only.

(TorchRec's ``FactorizationMachine`` is not this: it flattens ``[B, F, d]`` to ``B × F·d`` scalars and crosses every
pair of scalars, including the dimensions of one field with each other.)"""

from __future__ import annotations

import torch

from recsparse.embeddings.features import FittedFeatureSpec
from recsparse.models.ctr.base import CTRModel


class FM(CTRModel):
    name = "fm"

    def __init__(self, fitted: FittedFeatureSpec, dim: int = 16, backend: str = "torch", seed: int = 0) -> None:
        super().__init__(fitted, dim, backend, seed, linear=True)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return fm_interaction(emb)


def fm_interaction(emb: torch.Tensor) -> torch.Tensor:
    """``[B, F, d]`` -> ``[B]``: the sum over field pairs ``i < j`` of ``<e_i, e_j>`` in O(F·d)."""
    s = emb.sum(dim=1)
    return 0.5 * (s * s - (emb * emb).sum(dim=1)).sum(dim=1)
