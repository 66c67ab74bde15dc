"""IDF-aware FLOPS: the document regulariser the sentence-transformers sparse stack lacks.

It plugs into ``SpladeLoss(model, loss=..., document_regularizer=IdfFlopsLoss(model, idf), ...)`` beside the stack's
own ``FlopsLoss``; both are called on the ``(N, V)`` document vectors of a batch.
"""

from __future__ import annotations

import torch
from torch import nn

from recsparse.types import check_positive


def idf_penalty(idf: torch.Tensor, floor: float = 0.5) -> torch.Tensor:
    """Per-term penalty scale ``gamma_t = mean(idf) / max(idf_t, floor)`` -> ``(V,)``.

    Inversely proportional to IDF: frequent (low-IDF) terms pay more, rare ones less; normalised by the mean IDF so
    that ``gamma = 1`` on an average term and lambda stays comparable with plain FLOPS. ``floor`` keeps the weight of
    terms with IDF near 0 finite.
    """
    check_positive("floor", floor)
    return idf.mean() / idf.clamp(min=floor)


class IdfFlopsLoss(nn.Module):
    """IDF-aware FLOPS, ``sum_t gamma_t (mean_i w_it)^2`` with ``gamma = idf_penalty(idf)`` (~ ``1 / idf_t``).

    Plain FLOPS (Paria et al. 2020, ``sum_t (mean_i w_it)^2``) penalises a term by how often it fires; with IDF-weighted
    (inference-free) queries a term's ranking signal scales with its IDF, so a uniform penalty removes useful rare
    terms as readily as useless frequent ones (Geng, Ru & Yang 2024, arXiv:2411.04403). Scaling the penalty down with
    IDF spends the sparsity budget on stop-word-like terms, which also have the longest posting lists (DF-FLOPS,
    Porco et al. 2025, arXiv:2505.15070, weights by document frequency in the same spirit). Our ``gamma`` is the simple
    ``mean(idf) / idf_t`` form.

    Args:
        model: the SparseEncoder (kept for the sentence-transformers loss anatomy; not used in the computation).
        idf: ``(V,)`` corpus IDF (:func:`recsparse.retrieval.sparse.models.corpus_idf`).
        floor: lower clamp of the IDF in ``gamma``.
    """

    def __init__(self, model: nn.Module | None, idf: torch.Tensor, floor: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.floor = floor
        self.threshold = None  # SpladeLoss.get_config_dict reads it, as on FlopsLoss
        self.register_buffer("gamma", idf_penalty(idf.detach().float(), floor), persistent=False)

    def compute_loss_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``embeddings: (N, V)`` -> scalar."""
        gamma = self.gamma.to(embeddings.device, embeddings.dtype)
        return (gamma * embeddings.mean(dim=0) ** 2).sum()

    def forward(self, *_: object) -> torch.Tensor:
        raise NotImplementedError("IdfFlopsLoss is a regulariser: use it as SpladeLoss(document_regularizer=...)")

    def get_config_dict(self) -> dict:
        return {"floor": self.floor}
