"""Kernels: the FBGEMM TBE path (fused backward + optimizer) and a plain ``nn.EmbeddingBag`` fallback with the same
layout and numerics (:func:`make_tables` picks TBE when FBGEMM imports); the chunked shared-negative sampled softmax
(:func:`shared_negative_softmax_loss`) beside its materialised-logits reference."""

from __future__ import annotations

import torch

from recsparse.kernels.fallback import EmbeddingBagTables
from recsparse.kernels.softmax import materialized_shared_negative_softmax_loss, shared_negative_softmax_loss
from recsparse.kernels.tbe import OPTIMIZERS, FusedTBE, TBEConfig, fbgemm_available


def make_tables(rows: list[int], dims: list[int], config: TBEConfig | None = None, backend: str = "auto",
                device: str | torch.device = "cpu") -> FusedTBE | EmbeddingBagTables:
    """``backend``: ``"fbgemm"`` (TBE), ``"torch"`` (EmbeddingBag fallback) or ``"auto"`` (TBE if available)."""
    if backend == "auto":
        backend = "fbgemm" if fbgemm_available() else "torch"
    if backend == "fbgemm":
        return FusedTBE(rows, dims, config, device)
    if backend == "torch":
        return EmbeddingBagTables(rows, dims, config, device)
    raise ValueError(f"backend must be one of ['auto', 'fbgemm', 'torch'], got {backend!r}")


__all__ = ["FusedTBE", "EmbeddingBagTables", "TBEConfig", "OPTIMIZERS", "fbgemm_available", "make_tables",
           "shared_negative_softmax_loss", "materialized_shared_negative_softmax_loss"]
