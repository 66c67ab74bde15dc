"""Plain-PyTorch fallback of :class:`recsparse.kernels.tbe.FusedTBE`: one ``nn.EmbeddingBag`` per table with sparse
gradients and the same optimizer rules, applied by :meth:`EmbeddingBagTables.step` after ``backward``.

Same input layout (``indices [L]``, ``offsets [T·B+1]``) and output (``[B, sum(dims)]``); numerics equal TBE's
(fp32) up to summation order — tests assert forward, gradient and updated-weight agreement.
"""

from __future__ import annotations

import torch
from torch import nn

from recsparse.kernels.tbe import TBEConfig


class EmbeddingBagTables(nn.Module):
    """``T`` tables as ``nn.EmbeddingBag(mode, sparse=True)``; ``step()`` applies the configured optimizer.

    ``forward(indices [L], offsets [T·B+1]) -> [B, sum(dims)]``. Row-wise Adagrad keeps one ``[rows]`` accumulator
    per table (``s += mean(g²)`` over the row, ``w -= lr·g/(sqrt(s)+eps)``), exactly FBGEMM's
    ``EXACT_ROWWISE_ADAGRAD``; ``"adagrad"`` keeps a full ``[rows, dim]`` accumulator.
    """

    def __init__(self, rows: list[int], dims: list[int], config: TBEConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        if len(rows) != len(dims) or not rows:
            raise ValueError(f"rows and dims must be non-empty and the same length, got {len(rows)} and {len(dims)}")
        self.config = config or TBEConfig()
        self.rows, self.dims = list(map(int, rows)), list(map(int, dims))
        self.bags = nn.ModuleList(nn.EmbeddingBag(r, d, mode=self.config.pooling, sparse=True, device=device)
                                  for r, d in zip(self.rows, self.dims))
        if self.config.optimizer == "rowwise_adagrad":
            for i, r in enumerate(self.rows):
                self.register_buffer(f"state_{i}", torch.zeros(r, device=device))
        elif self.config.optimizer == "adagrad":
            for i, (r, d) in enumerate(zip(self.rows, self.dims)):
                self.register_buffer(f"state_{i}", torch.zeros(r, d, device=device))

    @property
    def num_tables(self) -> int:
        return len(self.rows)

    def weights(self, t: int) -> torch.Tensor:
        return self.bags[t].weight

    @torch.no_grad()
    def set_weights(self, t: int, w: torch.Tensor) -> None:
        self.bags[t].weight.copy_(w)

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        T = self.num_tables
        B = (offsets.numel() - 1) // T
        indices, offsets = indices.long(), offsets.long()
        outs = []
        for t, bag in enumerate(self.bags):
            lo, hi = offsets[t * B], offsets[(t + 1) * B]
            # per-table bag starts, relative to the table's first index
            outs.append(bag(indices[lo:hi], offsets[t * B:(t + 1) * B] - lo))
        return torch.cat(outs, dim=1)

    @torch.no_grad()
    def step(self) -> None:
        """Apply the optimizer to every table's sparse gradient, then clear the gradients."""
        lr, eps = self.config.learning_rate, self.config.eps
        for t, bag in enumerate(self.bags):
            g = bag.weight.grad
            if g is None:
                continue
            g = g.coalesce()  # sum duplicate rows first ("exact" optimizers)
            idx, val = g.indices()[0], g.values()
            if self.config.optimizer == "sgd":
                bag.weight.index_add_(0, idx, val, alpha=-lr)
            elif self.config.optimizer == "rowwise_adagrad":
                s = getattr(self, f"state_{t}")
                s.index_add_(0, idx, val.pow(2).mean(dim=1))
                bag.weight.index_add_(0, idx, -lr * val / (s[idx].sqrt() + eps).unsqueeze(1))
            else:
                s = getattr(self, f"state_{t}")
                s.index_add_(0, idx, val.pow(2))
                bag.weight.index_add_(0, idx, -lr * val / (s[idx].sqrt() + eps))
            bag.weight.grad = None
