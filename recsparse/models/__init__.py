"""Recommender models on the embedding core: matrix factorisation, LightGCN, two-tower; ranking losses.

* :mod:`.mf` — :class:`MatrixFactorization` (BPR or sampled softmax).
* :mod:`.lightgcn` — :class:`LightGCN` (layer-mean propagation over the unhashed training graph).
* :mod:`.two_tower` — :class:`TwoTower` (embedding bags of ids + side features -> MLP -> unit vectors).
* :mod:`.losses` — :func:`bpr_loss`, :func:`sampled_softmax_loss` (logQ, mixed negatives), :class:`ItemFrequency`.
* :mod:`.bias` — :class:`ItemBias` (learned per-item score bias, folded into the vectors).
* :mod:`.common` — :func:`build_cf_mappers` (any id-mapper, row budgets), :func:`cf_tables`.
"""

from recsparse.models.bias import ItemBias
from recsparse.models.common import build_cf_mappers, cf_tables, table_stats
from recsparse.models.lightgcn import LightGCN, normalized_adjacency
from recsparse.models.losses import ItemFrequency, bpr_loss, sampled_softmax_loss
from recsparse.models.mf import MatrixFactorization
from recsparse.models.two_tower import Tower, TwoTower

__all__ = ["MatrixFactorization", "LightGCN", "normalized_adjacency", "TwoTower", "Tower", "bpr_loss",
           "sampled_softmax_loss", "ItemFrequency", "build_cf_mappers", "cf_tables", "table_stats", "ItemBias"]
