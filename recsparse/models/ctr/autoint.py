"""AutoInt (Song et al., CIKM 2019): multi-head self-attention across fields with residual connections
(``ReLU(Attn(E) + E W_res)``), flattened -> logit; dense features are fields too (``x_m · v_m``, as in the paper);
``hidden`` adds the parallel MLP of AutoInt+."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsparse.embeddings.features import FittedFeatureSpec
from recsparse.models.ctr.base import CTRModel, dnn


class AutoInt(CTRModel):
    name = "autoint"

    def __init__(self, fitted: FittedFeatureSpec, dim: int = 16, backend: str = "torch", seed: int = 0,
                 attention_layers: int = 3, heads: int = 2, hidden: Sequence[int] = (256, 128),
                 dropout: float = 0.0) -> None:
        super().__init__(fitted, dim, backend, seed)
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.dense_fields = nn.Parameter(torch.randn(self.num_dense, dim) * 0.01) if self.num_dense else None
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True, bias=False)
                                  for _ in range(attention_layers))
        self.res = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(attention_layers))
        fields = self.num_sparse + self.num_dense
        self.deep, out = dnn(fields * dim, hidden, dropout) if hidden else (None, 0)
        self.head = nn.Linear(fields * dim + out, 1)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x = emb
        if self.dense_fields is not None:
            x = torch.cat([x, dense.unsqueeze(-1) * self.dense_fields], dim=1)  # [B, F + n, d]
        flat = x.flatten(1)
        for attn, res in zip(self.attn, self.res):
            x = torch.relu(attn(x, x, x, need_weights=False)[0] + res(x))
        h = [x.flatten(1)]
        if self.deep is not None:
            h.append(self.deep(flat))
        return self.head(torch.cat(h, dim=1)).squeeze(-1)
