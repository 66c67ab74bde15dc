"""Ranking losses for retrieval recommenders: BPR and sampled softmax with logQ correction (mixed negatives).

* BPR — Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback" (UAI 2009):
  ``-log σ(s(u, i⁺) - s(u, i⁻))``.
* Sampled softmax with in-batch negatives and logQ correction — Yi et al., "Sampling-Bias-Corrected Neural Modeling
  for Large Corpus Item Recommendations" (RecSys 2019): every positive item of the batch is a negative of every other
  row; popular items are over-sampled as negatives, so each logit is corrected by ``- log q(j)``, ``q(j)`` the
  probability that item ``j`` is among the sampled candidates.
* Mixed negative sampling — Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural Networks in
  Recommendations" (WWW 2020): ``M`` extra items drawn uniformly from the catalog join the in-batch candidates.
  With ``B`` in-batch draws from the unigram ``p(j)`` and ``M`` uniform draws over ``N`` items, the expected count
  of ``j`` among the candidates is ``q(j) = B·p(j) + M/N``, used as the correction for every candidate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsparse.kernels.softmax import negative_logits, shared_negative_softmax_loss
from recsparse.types import check_positive


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """``pos_scores [B]``, ``neg_scores [B]`` or ``[B, n]`` -> scalar mean of ``-log σ(pos - neg)`` (softplus form)."""
    if neg_scores.dim() == pos_scores.dim() + 1:
        pos_scores = pos_scores.unsqueeze(-1)
    return F.softplus(neg_scores - pos_scores).mean()


def sampled_softmax_loss(user: torch.Tensor, item: torch.Tensor, temperature: float = 1.0,
                         item_logq: torch.Tensor | None = None, item_ids: torch.Tensor | None = None,
                         neg_item: torch.Tensor | None = None, neg_logq: torch.Tensor | None = None,
                         neg_ids: torch.Tensor | None = None, in_batch: bool = True) -> torch.Tensor:
    """In-batch sampled softmax (+ optional extra negatives) with logQ correction.

    ``in_batch=False``: the candidates of row ``b`` are its own positive and the shared ``neg_item`` only (sampled
    softmax with uniform negatives, "SSM" of Wu et al., 2022 — ``B·(1+M)`` logits instead of ``B·(B+M)``); the
    correction then applies to the negatives only (``neg_logq``; constant for uniform sampling).

    ``user [B, d]``, ``item [B, d]``: row ``b`` is a positive pair; candidates for row ``b`` are all ``B`` batch items
    plus the ``M`` rows of ``neg_item [M, d]``. Logits ``<u_b, v_j> / temperature - log q(j)`` where ``item_logq
    [B]`` / ``neg_logq [M]`` hold ``log q(j)`` (``None`` -> no correction). ``item_ids [B]`` / ``neg_ids [M]``: raw
    item ids; a candidate equal to row ``b``'s positive item (other than the diagonal itself) is masked out, so a
    duplicate positive is never pushed down as a negative ("accidental hits"). Returns the mean cross-entropy with
    target = diagonal.
    """
    check_positive("temperature", temperature)
    if not in_batch:
        if neg_item is None:
            raise ValueError("in_batch=False needs neg_item (the shared negatives)")
        # chunked kernel: never materialises the [B, M] logits (the step's cost at thousands of negatives)
        if item_ids is None or neg_ids is None:
            item_ids = neg_ids = None
        return shared_negative_softmax_loss(user, item, neg_item, temperature, neg_logq, item_ids, neg_ids)
    logits = user @ item.T / temperature  # [B, B]
    if item_logq is not None:
        logits = logits - item_logq.unsqueeze(0)
    B = user.shape[0]
    if item_ids is not None:
        dup = item_ids.unsqueeze(1) == item_ids.unsqueeze(0)
        dup.fill_diagonal_(False)
        logits = logits.masked_fill(dup, float("-inf"))
    if neg_item is not None:
        neg = negative_logits(user, neg_item, temperature, neg_logq, item_ids, neg_ids)  # [B, M]
        logits = torch.cat([logits, neg], dim=1)
    target = torch.arange(B, device=user.device)
    return F.cross_entropy(logits, target)


class ItemFrequency(nn.Module):
    """Streaming estimate of each item's sampling probability from the training stream (Yi et al., 2019).

    ``update(item_ids)`` counts the positives of each batch as it is trained on; ``p(j) = (c_j + α) / (Σc + α·N)``
    (additive smoothing ``α`` so unseen items have a finite log). ``log_q(ids, batch_size, num_uniform)`` returns
    ``log(B·p(j) + M/N)`` — the expected number of times ``j`` appears among the in-batch + uniform candidates.
    Counts are a buffer: they travel in checkpoints, so a resumed run corrects exactly as an uninterrupted one.
    """

    def __init__(self, num_items: int, smoothing: float = 1.0) -> None:
        super().__init__()
        check_positive("num_items", num_items)
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        self.num_items = int(num_items)
        self.smoothing = float(smoothing)
        self.register_buffer("counts", torch.zeros(self.num_items, dtype=torch.float64))

    @torch.no_grad()
    def update(self, item_ids: torch.Tensor) -> None:
        ids = item_ids.reshape(-1).clamp(0, self.num_items - 1)
        self.counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))

    def prob(self, item_ids: torch.Tensor) -> torch.Tensor:
        total = self.counts.sum() + self.smoothing * self.num_items
        if total <= 0:
            return torch.full(item_ids.shape, 1.0 / self.num_items, dtype=torch.float64, device=item_ids.device)
        return (self.counts[item_ids.clamp(0, self.num_items - 1)] + self.smoothing) / total

    def log_q(self, item_ids: torch.Tensor, batch_size: int, num_uniform: int = 0) -> torch.Tensor:
        q = batch_size * self.prob(item_ids) + num_uniform / self.num_items
        return torch.log(q).to(torch.float32)
