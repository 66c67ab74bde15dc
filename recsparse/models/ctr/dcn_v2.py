"""DCN-V2 (Wang et al., WWW 2021): ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` over ``x_0 = [field embeddings,
dense]``. ``structure='stacked'`` (cross then deep, the paper's best on Criteo) or ``'parallel'`` (cross ‖ deep).
``num_experts``/``low_rank`` > 0 -> the low-rank mixture of experts (DCN-Mix); else full-rank ``W_l``. The cross
layers are TorchRec's ``CrossNet`` / ``LowRankMixtureCrossNet``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsparse.embeddings.features import FittedFeatureSpec
from recsparse.models.ctr.base import CTRModel, dnn
from recsparse.types import check_choice


class DCNv2(CTRModel):
    name = "dcn_v2"

    def __init__(self, fitted: FittedFeatureSpec, dim: int = 16, backend: str = "torch", seed: int = 0,
                 cross_layers: int = 2, hidden: Sequence[int] = (128, 128), structure: str = "stacked",
                 low_rank: int = 0, num_experts: int = 1, dropout: float = 0.0) -> None:
        super().__init__(fitted, dim, backend, seed)
        from torchrec.modules.crossnet import CrossNet, LowRankMixtureCrossNet

        check_choice("structure", structure, ("stacked", "parallel"))
        self.structure = structure
        n = self.num_sparse * dim + self.num_dense
        self.cross: nn.Module = (LowRankMixtureCrossNet(n, cross_layers, num_experts=num_experts, low_rank=low_rank)
                                 if low_rank > 0 else CrossNet(n, cross_layers))
        self.deep, out = dnn(n, hidden, dropout)
        self.head = nn.Linear(out if structure == "stacked" else out + n, 1)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([emb.flatten(1), dense], dim=1)
        c = self.cross(x0)
        h = self.deep(c) if self.structure == "stacked" else torch.cat([c, self.deep(x0)], dim=1)
        return self.head(h).squeeze(-1)
