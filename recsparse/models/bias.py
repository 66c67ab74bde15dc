"""Per-item score bias for collaborative-filtering models: ``score(u, j) = <u, v_j> + b_j``.

Cosine scores are bounded (``|<u, v>| <= 1``, so a softmax logit lies in ``[-1/τ, 1/τ]``): a normalised model must
spend directions on the items' popularity prior, and on Gowalla the trained LightGCN's item norms (thrown away by the
normalisation) correlate 0.81 with log popularity. A learned additive bias carries that prior instead — the item
bias of classic biased MF (Koren et al., 2009) on top of cosine scores.

The bias is folded into the vectors — ``u' = [u, c]``, ``v' = [v, b]`` — so every scorer sees one inner product:
the training losses (the chunked softmax included), full-ranking evaluation and FAISS alike. With ``c = τ`` a
softmax logit is ``<u', v'>/τ = <u, v>/τ + b``; with ``c = 1`` a BPR score is ``<u, v> + b``.
"""

from __future__ import annotations

import torch
from torch import nn

from recsparse.types import check_positive


class ItemBias(nn.Module):
    """``num_items`` biases, initialised at 0 (the model starts as the unbiased one).

    ``user(u [B, d], c) -> [B, d+1]`` appends the constant ``c``; ``item(v [N, d], ids [N] | None) -> [N, d+1]``
    appends ``b[ids]`` (all items in id order when ``ids`` is ``None``).
    """

    def __init__(self, num_items: int) -> None:
        super().__init__()
        check_positive("num_items", num_items)
        self.bias = nn.Parameter(torch.zeros(int(num_items)))

    def user(self, u: torch.Tensor, c: float) -> torch.Tensor:
        return torch.cat([u, u.new_full((u.shape[0], 1), float(c))], dim=1)

    def item(self, v: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        b = self.bias if ids is None else self.bias[ids]
        if b.shape[0] != v.shape[0]:
            raise ValueError(f"item vectors [{v.shape[0]}, d] and biases [{b.shape[0]}] differ in length")
        return torch.cat([v, b.unsqueeze(1).to(v.dtype)], dim=1)
