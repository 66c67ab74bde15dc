"""Losses for learned sparse retrieval that compose: a ranking loss wrapped by sparsity regularisers.

    loss = ranking(q, d) + lambda_q(step) * R_q(q) + lambda_d(step) * R_d(d)

(the shape of sentence-transformers' ``SpladeLoss(loss=SparseMultipleNegativesRankingLoss(...), ...)``).

Shapes: ``B`` queries per batch, ``n`` hard negatives per query, ``V`` vocabulary. Query vectors ``q: (B, V)``;
document vectors ``d: (B * (1 + n), V)`` laid out as ``[pos_0 .. pos_{B-1}, neg_{0,0} .. neg_{0,n-1}, neg_{1,0} ..]``
(positives first, then each query's ``n`` negatives in query order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from recsparse.types import check_positive


def flops(w: torch.Tensor) -> torch.Tensor:
    """FLOPS regulariser (Paria et al., ICLR 2020, "Minimizing FLOPs to learn efficient sparse representations";
    used by SPLADE, Formal et al. 2021): ``sum_t (mean_i w_it)^2`` for a batch ``w: (N, V)`` -> scalar.

    A smooth proxy of the expected number of multiplications ``sum_t P(q_t != 0) P(d_t != 0)`` of an inverted index.
    """
    return (w.mean(dim=0) ** 2).sum()


def idf_penalty(idf: torch.Tensor, floor: float = 0.5) -> torch.Tensor:
    """Per-term penalty scale of IDF-aware FLOPS: ``gamma_t = mean(idf) / max(idf_t, floor)`` -> ``(V,)``.

    Inversely proportional to IDF: frequent (low-IDF) terms pay more, rare (high-IDF) terms less. Normalised by the
    mean IDF so that ``gamma = 1`` on an average term and lambda stays comparable with plain FLOPS. ``floor`` keeps
    the weight of terms with IDF near 0 finite.
    """
    check_positive("floor", floor)
    return idf.mean() / idf.clamp(min=floor)


def idf_flops(w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """IDF-aware FLOPS: ``sum_t gamma_t (mean_i w_it)^2`` with ``gamma_t = idf_penalty(idf)_t`` ~ ``1 / idf_t``.

    ``w: (N, V)``, ``gamma: (V,)`` -> scalar. Motivation (Geng, Ru & Yang 2024, "Towards Competitive Search Relevance
    for Inference-Free Learned Sparse Retrievers", arXiv:2411.04403): with IDF-weighted queries the ranking signal of
    a term scales with its IDF, so a uniform FLOPS penalty removes useful rare terms as readily as useless frequent
    ones; scaling the penalty down with IDF spends the sparsity budget on low-IDF (stop-word-like) terms, which also
    have the longest posting lists (the same idea, weighted by document frequency, is DF-FLOPS: Porco et al. 2025,
    arXiv:2505.15070). Our ``gamma`` is the simple ``mean(idf) / idf_t`` form; the issue defines the behaviour, the
    paper's exact weighting may differ.
    """
    return (gamma * w.mean(dim=0) ** 2).sum()


class Regularizer(Protocol):
    def __call__(self, w: torch.Tensor) -> torch.Tensor: ...


class FlopsRegularizer(nn.Module):
    """:func:`flops` as a module."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return flops(w)


class IdfFlopsRegularizer(nn.Module):
    """:func:`idf_flops` with a fixed ``(V,)`` corpus IDF."""

    def __init__(self, idf: torch.Tensor, floor: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("gamma", idf_penalty(idf.float(), floor))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return idf_flops(w, self.gamma)


def quadratic_warmup(step: int, warmup_steps: int) -> float:
    """Multiplier of lambda at ``step``: ``min(1, step / T)^2`` (SPLADE's quadratic lambda schedule, Formal et al.)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps) ** 2


def in_batch_scores(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``q: (B, V)``, ``d: (M, V)`` -> ``(B, M)`` dot products."""
    return q @ d.T


class InfoNCELoss(nn.Module):
    """In-batch contrastive loss with hard negatives (InfoNCE, van den Oord et al. 2018; DPR, Karpukhin et al. 2020).

    Query ``i`` must rank its positive ``d[i]`` above every other document of the batch (other queries' positives
    and all hard negatives, e.g. BM25 top hits that are not relevant): ``CE(softmax(q d^T / tau), i)``.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, q: torch.Tensor, d: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        scores = in_batch_scores(q, d) / self.temperature  # (B, M)
        labels = torch.arange(q.shape[0], device=q.device)
        return F.cross_entropy(scores, labels)


def minmax(x: torch.Tensor, dim: int = -1, eps: float = 1e-9) -> torch.Tensor:
    """Min-max normalise along ``dim`` to [0, 1]."""
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    return (x - lo) / (hi - lo + eps)


def ensemble_teacher(*teacher_scores: torch.Tensor) -> torch.Tensor:
    """Heterogeneous teacher ensemble (Geng et al. 2024, sec. 3.2): each teacher's ``(B, C)`` scores min-max normalised
    per query over its candidates, then summed -> ``(B, C)``."""
    return torch.stack([minmax(s) for s in teacher_scores]).sum(dim=0)


class DistillationLoss(nn.Module):
    """KL(teacher || student) over each query's own candidates (its positive and its ``n`` hard negatives).

    ``teacher: (B, 1 + n)`` ensemble scores (see :func:`ensemble_teacher`), turned into a distribution with
    temperature ``teacher_temperature``; the student's ``(B, 1 + n)`` sparse dot products are log-softmaxed.
    """

    def __init__(self, teacher_temperature: float = 0.1) -> None:
        super().__init__()
        check_positive("teacher_temperature", teacher_temperature)
        self.tt = teacher_temperature

    @staticmethod
    def candidate_scores(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Student scores of each query on its own candidates -> ``(B, 1 + n)`` (layout as in the module doc)."""
        b = q.shape[0]
        n = d.shape[0] // b - 1
        cand = [d[:b].unsqueeze(1)]
        if n:
            cand.append(d[b:].reshape(b, n, -1))
        docs = torch.cat(cand, dim=1)  # (B, 1 + n, V)
        return torch.einsum("bv,bcv->bc", q, docs)

    def forward(self, q: torch.Tensor, d: torch.Tensor, teacher: torch.Tensor | None = None,
                **_: torch.Tensor) -> torch.Tensor:
        if teacher is None:
            raise ValueError("DistillationLoss needs teacher scores (B, 1 + n) in the batch")
        student = F.log_softmax(self.candidate_scores(q, d), dim=-1)
        target = F.softmax(teacher / self.tt, dim=-1)
        return F.kl_div(student, target, reduction="batchmean")


class SumLoss(nn.Module):
    """Weighted sum of ranking losses, e.g. InfoNCE + distillation."""

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = weights or {k: 1.0 for k in losses}

    def forward(self, q: torch.Tensor, d: torch.Tensor, **batch: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[k] * f(q, d, **batch) for k, f in self.losses.items())


@dataclass
class LossParts:
    total: torch.Tensor
    ranking: torch.Tensor
    reg_query: torch.Tensor
    reg_doc: torch.Tensor
    lambda_query: float
    lambda_doc: float


class SpladeLoss(nn.Module):
    """Ranking loss + lambda-scheduled regularisers on the query and document vectors.

    ``lambda_*(step) = lambda_* * quadratic_warmup(step, warmup_steps)``. A regulariser of ``None`` (e.g. the query
    side of an inference-free model, whose query weights are IDF, not model outputs) contributes 0.
    """

    def __init__(self, loss: nn.Module, document_regularizer: nn.Module | None = None, lambda_doc: float = 0.0,
                 query_regularizer: nn.Module | None = None, lambda_query: float = 0.0,
                 warmup_steps: int = 0) -> None:
        super().__init__()
        if lambda_doc < 0 or lambda_query < 0:
            raise ValueError(f"lambda_doc and lambda_query must be >= 0, got {lambda_doc}, {lambda_query}")
        self.loss = loss
        self.document_regularizer = document_regularizer
        self.query_regularizer = query_regularizer
        self.lambda_doc = lambda_doc
        self.lambda_query = lambda_query
        self.warmup_steps = warmup_steps

    def forward(self, q: torch.Tensor, d: torch.Tensor, step: int = 0, **batch: torch.Tensor) -> LossParts:
        m = quadratic_warmup(step, self.warmup_steps)
        rank = self.loss(q, d, **batch)
        zero = rank.new_zeros(())
        rd = self.document_regularizer(d) if self.document_regularizer is not None else zero
        rq = self.query_regularizer(q) if self.query_regularizer is not None else zero
        ld, lq = self.lambda_doc * m, self.lambda_query * m
        return LossParts(rank + ld * rd + lq * rq, rank, rq, rd, lq, ld)
