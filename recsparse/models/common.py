"""User/item tables for collaborative-filtering models, built from the embedding core.

Every model takes its embeddings from :class:`~recsparse.embeddings.MappedEmbeddingBagCollection`: one feature
``"user"`` and one ``"item"``, each behind an :class:`~recsparse.types.IdMapper` (full table, hashing family,
GraphHash ...). :func:`build_cf_mappers` fits the mappers that need the training graph and sizes the hashing
baselines to a row budget (e.g. the rows GraphHash uses at a given resolution — the comparison of Wu et al., 2024).
"""

from __future__ import annotations

from typing import Any, Mapping

import polars as pl
import torch

from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection, build_mapper
from recsparse.embeddings.mappers import GraphHashMapper, cluster_bipartite
from recsparse.kernels.tbe import TBEConfig
from recsparse.types import IdMapper

# mappers whose rows come from the clustering itself
GRAPH_MAPPERS = ("graphhash", "double_graphhash")


def build_cf_mappers(name: str, train: pl.DataFrame, num_users: int, num_items: int,
                     user_rows: int | None = None, item_rows: int | None = None,
                     budget_resolution: float | None = None, seed: int = 0,
                     kwargs: Mapping[str, Any] | None = None) -> tuple[IdMapper, IdMapper]:
    """(user mapper, item mapper) of family ``name``, fitted on the TRAIN frame ``(user_id, item_id)``.

    Row budget per side: ``user_rows`` / ``item_rows``, or — with ``budget_resolution`` — the user / item row counts of
    GraphHash at that Louvain resolution (so a hashing baseline gets exactly GraphHash's budget). ``graphhash`` takes
    ``resolution`` from ``kwargs``; ``double_graphhash`` given a budget puts ``budget - cluster rows`` into its hashed
    part (so it needs a resolution with fewer clusters than the budget). ``frequency`` counts the training stream.
    """
    kw = dict(kwargs or {})
    if budget_resolution is not None:
        c = cluster_bipartite(train, budget_resolution, seed, num_users=num_users, num_items=num_items)
        # GraphHash rows = clusters + 1 OOV row per side
        user_rows, item_rows = c.num_user_clusters + 1, c.num_item_clusters + 1
    if name == "graphhash":
        kw.setdefault("seed", seed)
        return GraphHashMapper.fit_bipartite(train, num_users=num_users, num_items=num_items, **kw)
    if name == "double_graphhash":
        from recsparse.embeddings.mappers import DoubleGraphHashMapper

        kw.setdefault("seed", seed)
        res = kw.pop("resolution", 1.0)
        c = cluster_bipartite(train, res, kw["seed"], num_users=num_users, num_items=num_items)
        out = []
        for side, n, budget, clusters in (("user", num_users, user_rows, c.num_user_clusters),
                                          ("item", num_items, item_rows, c.num_item_clusters)):
            extra = dict(kw)
            if budget is not None:
                hashed = budget - clusters - kw.get("num_oov_rows", 1)
                if hashed < 1:
                    raise ValueError(f"double_graphhash: resolution {res} gives {clusters} {side} clusters, no room "
                                     f"left in a budget of {budget} rows; lower the resolution")
                extra["num_hash_rows"] = hashed
            out.append(DoubleGraphHashMapper(n, side=side, resolution=res, **extra).from_clustering(c))
        return out[0], out[1]
    if name in ("universal", "frequency"):
        kw.setdefault("seed", seed)
    um = build_mapper(name, num_users, user_rows, **kw)
    im = build_mapper(name, num_items, item_rows, **kw)
    if name == "frequency":
        um.fit(train, column="user_id")
        im.fit(train, column="item_id")
    return um, im


def cf_tables(user_mapper: IdMapper, item_mapper: IdMapper, num_users: int, num_items: int, dim: int,
              backend: str = "torch", init_std: float | None = 0.1, seed: int = 0,
              tbe_config: TBEConfig | None = None) -> MappedEmbeddingBagCollection:
    """The ``user`` and ``item`` tables (``[user_mapper.num_rows, dim]``, ``[item_mapper.num_rows, dim]``);
    ``tbe_config``: the fused optimizer of ``backend='fbgemm'``."""
    return MappedEmbeddingBagCollection(
        [FeatureConfig("user", num_users, dim, mapper=user_mapper),
         FeatureConfig("item", num_items, dim, mapper=item_mapper)], backend=backend, init_std=init_std, seed=seed,
        tbe_config=tbe_config)


def table_stats(tables: MappedEmbeddingBagCollection) -> dict[str, int]:
    """Rows and bytes of all tables (what the GraphHash study compares)."""
    return {"rows": int(sum(tables.num_rows().values())), "bytes": int(tables.num_bytes())}


def all_ids(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.arange(n, dtype=torch.long, device=device)
