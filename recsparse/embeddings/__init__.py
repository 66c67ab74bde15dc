"""Embedding core: id-mappers (hashing family, GraphHash, unified embedding) on TorchRec/FBGEMM tables.

* :mod:`recsparse.embeddings.mappers` — ``build_mapper(name, num_ids, num_rows, **kw)`` / :data:`MAPPERS`.
* :mod:`recsparse.embeddings.tables` — :class:`FeatureConfig`, :class:`MappedEmbeddingBagCollection`
  (KJT in, KeyedTensor out; ``embed(feature, ids)``).
* :mod:`recsparse.embeddings.unified` — one shared table for all features (feature multiplexing).
* :mod:`recsparse.embeddings.sharding` — TorchRec DistributedModelParallel plans (table-wise / row-wise).
* :mod:`recsparse.embeddings.quant` — int8 / int4 inference tables.
"""

from recsparse.embeddings.mappers import (MAPPERS, BipartiteClustering, DoubleGraphHashMapper, FrequencyHashMapper,
                                          FullMapper, GraphHashMapper, ModuloMapper, QRMapper, UniversalHashMapper,
                                          build_mapper, cluster_bipartite, mapper_from_state)
from recsparse.embeddings.tables import BACKENDS, FeatureConfig, MappedEmbeddingBagCollection, resolve_backend

__all__ = ["MAPPERS", "build_mapper", "mapper_from_state", "FullMapper", "ModuloMapper", "UniversalHashMapper",
           "FrequencyHashMapper", "QRMapper", "GraphHashMapper", "DoubleGraphHashMapper", "BipartiteClustering",
           "cluster_bipartite", "FeatureConfig", "MappedEmbeddingBagCollection", "BACKENDS", "resolve_backend"]
