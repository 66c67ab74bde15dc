"""DeepFM (Guo et al., IJCAI 2017): first-order term + FM over the shared field embeddings + an MLP over the same
embeddings (and dense features); the three logits summed — i.e. :class:`WideDeep` plus the FM term."""

from __future__ import annotations

import torch

from recsparse.models.ctr.fm import fm_interaction
from recsparse.models.ctr.wide_deep import WideDeep


class DeepFM(WideDeep):
    name = "deepfm"

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return super().interact(emb, dense) + fm_interaction(emb)
