"""GraphHash and DoubleGraphHash: modularity clustering of the user–item graph as the hash function.

Wu et al., "GraphHash: Graph Clustering Enables Parameter Efficiency in Recommender Systems" (WWW 2025,
arXiv:2412.17245). The bipartite training graph (users × items, one edge per interaction) is clustered by Louvain
modularity maximisation (Blondel et al., 2008; bipartite modularity of Barber, 2007) as implemented in scikit-network
(``Louvain(resolution, random_state=seed).fit(biadjacency, force_bipartite=True)``). Each user (item) then maps to
the row of its cluster: users that interact with the same items share an embedding, which is a far better collision
than a random hash. The ``resolution`` γ sets the budget: larger γ -> more, smaller clusters -> more rows.

Users and items get *separate* row spaces (one table each): the user mapper's rows are the distinct clusters that
contain at least one user (compactly renumbered), the item mapper's rows those that contain an item. Ids that had no
training edge (or fall outside ``[0, num_ids)``, are negative or huge) go to ``num_oov_rows`` extra rows by modulo.

**One clustering, both sides.** Fit both mappers from a single Louvain run::

    users, items = GraphHashMapper.fit_bipartite(train, resolution=200, seed=0, num_users=U, num_items=I)

or construct ``GraphHashMapper(num_ids, side="user" | "item", resolution=..., seed=...)`` and call
``fit(train_frame)`` on each: the clustering is memoised on (frame content, resolution, seed, columns, sizes), so
the second ``fit`` reuses the first run. :func:`cluster_bipartite` exposes the clustering itself (labels, modularity,
time) for reports. **DoubleGraphHash** adds a universal-hash row to the cluster row (rows summed from one table),
which lets ids within a cluster differ.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from recsparse.embeddings.mappers.base import (MapperBase, MapperStateError, as_id_tensor, hash_params,
                                               universal_hash, universal_hash_expr)
from recsparse.types import check_choice, check_positive


@dataclass(frozen=True)
class BipartiteClustering:
    """Result of one Louvain run. Labels are compact per side: ``user_labels[u] ∈ [0, num_user_clusters)`` or -1
    for users without a training edge (likewise items). ``modularity`` is Barber's bipartite modularity at γ = 1."""

    user_labels: np.ndarray
    item_labels: np.ndarray
    num_user_clusters: int
    num_item_clusters: int
    num_clusters: int
    modularity: float
    seconds: float
    resolution: float
    seed: int


def _compact(labels: np.ndarray, degree: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the clusters present on one side to 0..C-1 (by first appearance order of cluster id); -1 if no edge."""
    out = np.full(labels.shape[0], -1, dtype=np.int64)
    has = degree > 0
    uniq, inv = np.unique(labels[has], return_inverse=True)
    out[has] = inv
    return out, int(uniq.size)


_CACHE: "OrderedDict[tuple, BipartiteClustering]" = OrderedDict()


def _frame_key(frame: pl.DataFrame, user_col: str, item_col: str) -> tuple:
    sub = frame.select(user_col, item_col)
    return (sub.height, int(sub.hash_rows(seed=0).sum()), user_col, item_col)


def cluster_bipartite(frame: pl.DataFrame, resolution: float = 1.0, seed: int = 0, user_col: str = "user_id",
                      item_col: str = "item_id", num_users: int | None = None, num_items: int | None = None,
                      cache: bool = True) -> BipartiteClustering:
    """Louvain clustering of the bipartite graph of ``frame`` (one edge per row, duplicate rows merged to weight 1).

    ``num_users`` / ``num_items`` default to ``max id + 1``. Ids must be dense non-negative integers (remapped ids).
    """
    check_positive("resolution", resolution)
    for col in (user_col, item_col):
        if col not in frame.columns:
            raise ValueError(f"column {col!r} not in frame columns {frame.columns}")
    u = frame[user_col].cast(pl.Int64).to_numpy()
    i = frame[item_col].cast(pl.Int64).to_numpy()
    if u.size == 0:
        raise ValueError("cannot cluster an empty interaction frame")
    if u.min() < 0 or i.min() < 0:
        raise ValueError(f"{user_col}/{item_col} must be non-negative remapped ids for GraphHash")
    nu = int(u.max()) + 1 if num_users is None else int(num_users)
    ni = int(i.max()) + 1 if num_items is None else int(num_items)
    if u.max() >= nu or i.max() >= ni:
        raise ValueError(f"ids exceed num_users={nu} / num_items={ni}")
    key = (_frame_key(frame, user_col, item_col), float(resolution), int(seed), nu, ni)
    if cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    from sknetwork.clustering import Louvain, get_modularity

    biadj = sp.csr_matrix((np.ones(u.size, dtype=np.float64), (u, i)), shape=(nu, ni))
    biadj.data[:] = 1.0  # duplicates summed by csr -> back to binary edges
    t0 = time.perf_counter()
    louvain = Louvain(resolution=resolution, random_state=seed, return_probs=False, return_aggregate=False)
    louvain.fit(biadj, force_bipartite=True)
    seconds = time.perf_counter() - t0
    row, col = np.asarray(louvain.labels_row_), np.asarray(louvain.labels_col_)
    modularity = float(get_modularity(biadj, row, col))
    ulab, nuc = _compact(row, np.asarray(biadj.sum(axis=1)).ravel())
    ilab, nic = _compact(col, np.asarray(biadj.sum(axis=0)).ravel())
    result = BipartiteClustering(ulab, ilab, nuc, nic, int(np.unique(np.concatenate([row, col])).size), modularity,
                                 seconds, float(resolution), int(seed))
    if cache:
        _CACHE[key] = result
        while len(_CACHE) > 4:
            _CACHE.popitem(last=False)
    return result


class GraphHashMapper(MapperBase):
    """Cluster-row mapper of one side (``side='user'`` or ``'item'``) of a bipartite Louvain clustering.

    ``num_rows = num_clusters + num_oov_rows``; ``transform``: ``[*S]`` -> ``[*S, 1]``; an id with no training edge
    or outside ``[0, num_ids)`` -> ``num_clusters + (id mod num_oov_rows)``. Fit on the TRAIN interactions only.
    """

    name = "graphhash"
    _scalars = ("num_ids", "side", "resolution", "seed", "num_clusters", "num_oov_rows", "user_col", "item_col")
    _tensors = ("labels",)

    def __init__(self, num_ids: int, side: str = "user", resolution: float = 1.0, seed: int = 0,
                 num_oov_rows: int = 1, user_col: str = "user_id", item_col: str = "item_id") -> None:
        check_positive("num_ids", num_ids)
        check_choice("side", side, ("user", "item"))
        check_positive("resolution", resolution)
        check_positive("num_oov_rows", num_oov_rows)
        self.num_ids, self.side, self.resolution, self.seed = int(num_ids), side, float(resolution), int(seed)
        self.num_oov_rows, self.user_col, self.item_col = int(num_oov_rows), user_col, item_col
        self.num_clusters = 0
        self.labels = torch.full((self.num_ids,), -1, dtype=torch.long)  # unfitted: everything OOV

    @property
    def num_rows(self) -> int:
        return self.num_clusters + self.num_oov_rows

    def validate(self) -> None:
        n = self._int_field("num_ids", 1)
        c = self._int_field("num_clusters", 0)
        self._int_field("num_oov_rows", 1)
        if self.side not in ("user", "item"):
            raise MapperStateError(f"{self.name} mapper state: side must be 'user' or 'item', got {self.side!r}")
        self._tensor_range("labels", -1, c, n)  # -1 = no training edge -> OOV rows

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(self, frame: Any, num_users: int | None = None, num_items: int | None = None,
            **_: Any) -> "GraphHashMapper":
        """Cluster the bipartite graph of ``frame`` (user_col, item_col) and keep this mapper's side.

        The other side's size defaults to ``max id + 1``; this side's size is ``num_ids``.
        """
        if not isinstance(frame, (pl.DataFrame, pl.LazyFrame)):
            raise TypeError("GraphHash fits on an interaction frame (user_col, item_col), not an id stream")
        frame = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
        nu = self.num_ids if self.side == "user" else num_users
        ni = self.num_ids if self.side == "item" else num_items
        nu = int(frame[self.user_col].max()) + 1 if nu is None else nu
        ni = int(frame[self.item_col].max()) + 1 if ni is None else ni
        return self.from_clustering(cluster_bipartite(frame, self.resolution, self.seed, self.user_col,
                                                      self.item_col, nu, ni))

    def from_clustering(self, clustering: BipartiteClustering) -> "GraphHashMapper":
        labels = clustering.user_labels if self.side == "user" else clustering.item_labels
        n = clustering.num_user_clusters if self.side == "user" else clustering.num_item_clusters
        if labels.shape[0] != self.num_ids:
            raise ValueError(f"clustering has {labels.shape[0]} {self.side}s but num_ids={self.num_ids}")
        self.labels = torch.from_numpy(labels.copy())
        self.num_clusters = n
        return self

    @classmethod
    def fit_bipartite(cls, frame: pl.DataFrame, resolution: float = 1.0, seed: int = 0, num_users: int | None = None,
                      num_items: int | None = None, user_col: str = "user_id", item_col: str = "item_id",
                      **kw: Any) -> tuple["GraphHashMapper", "GraphHashMapper"]:
        """(user_mapper, item_mapper) from ONE Louvain run on the train frame."""
        nu = int(frame[user_col].max()) + 1 if num_users is None else int(num_users)
        ni = int(frame[item_col].max()) + 1 if num_items is None else int(num_items)
        c = cluster_bipartite(frame, resolution, seed, user_col, item_col, nu, ni)
        common = dict(resolution=resolution, seed=seed, user_col=user_col, item_col=item_col, **kw)
        return (cls(nu, side="user", **common).from_clustering(c), cls(ni, side="item", **common).from_clustering(c))

    # ---- mapping -------------------------------------------------------------------------------------------
    def _cluster_rows(self, x: torch.Tensor) -> torch.Tensor:
        labels = self.labels.to(x.device)
        inside = (x >= 0) & (x < self.num_ids)
        lab = torch.where(inside, labels[x.clamp(0, self.num_ids - 1)], torch.full_like(x, -1))
        return torch.where(lab >= 0, lab, self.num_clusters + torch.remainder(x, self.num_oov_rows))

    def transform(self, ids: torch.Tensor) -> torch.Tensor:
        return self._cluster_rows(as_id_tensor(ids)).unsqueeze(-1)

    def _cluster_expr(self, c: pl.Expr) -> pl.Expr:
        labels = pl.Series(self.labels.numpy())
        lab = (pl.when((c >= 0) & (c < self.num_ids)).then(pl.lit(labels).gather(c.clip(0, self.num_ids - 1)))
               .otherwise(pl.lit(-1, pl.Int64)))
        return pl.when(lab >= 0).then(lab).otherwise(self.num_clusters + c % self.num_oov_rows).cast(pl.Int64)

    def polars_expr(self, column: str) -> pl.Expr:
        return self._cluster_expr(pl.col(column).cast(pl.Int64)).alias(column)


class DoubleGraphHashMapper(GraphHashMapper):
    """GraphHash cluster row + one universal-hash row, summed from ONE table (Wu et al., 2024, "DoubleGraphHash").

    Rows ``[0, C + num_oov_rows)``: cluster part (as :class:`GraphHashMapper`); rows ``[C + num_oov_rows,
    num_rows)``: ``num_hash_rows`` hashed rows. ``num_hash_rows=None`` -> as many as the cluster part.
    ``transform``: ``[*S]`` -> ``[*S, 2]``.
    """

    name = "double_graphhash"
    _scalars = GraphHashMapper._scalars + ("num_hash_rows", "hash_rows_auto")
    _tensors = ("labels", "a", "b")

    def __init__(self, num_ids: int, side: str = "user", resolution: float = 1.0, seed: int = 0,
                 num_oov_rows: int = 1, num_hash_rows: int | None = None, user_col: str = "user_id",
                 item_col: str = "item_id") -> None:
        super().__init__(num_ids, side, resolution, seed, num_oov_rows, user_col, item_col)
        if num_hash_rows is not None:
            check_positive("num_hash_rows", num_hash_rows)
        self.hash_rows_auto = int(num_hash_rows is None)
        self.num_hash_rows = 1 if num_hash_rows is None else int(num_hash_rows)
        self.a, self.b = hash_params(1, seed + 7919)  # a salt different from the OOV modulo

    def from_clustering(self, clustering: BipartiteClustering) -> "DoubleGraphHashMapper":
        super().from_clustering(clustering)
        if self.hash_rows_auto:
            self.num_hash_rows = self.num_clusters + self.num_oov_rows
        return self

    @property
    def num_rows(self) -> int:
        return self.num_clusters + self.num_oov_rows + self.num_hash_rows

    def validate(self) -> None:
        super().validate()
        self._int_field("num_hash_rows", 1)
        self._int_field("hash_rows_auto", 0, 1)
        self._hash_params(1)

    @property
    def rows_per_id(self) -> int:
        return 2

    def transform(self, ids: torch.Tensor) -> torch.Tensor:
        x = as_id_tensor(ids)
        base = self.num_clusters + self.num_oov_rows
        return torch.stack([self._cluster_rows(x), base + universal_hash(x, self.a, self.b, self.num_hash_rows)[..., 0]],
                           dim=-1)

    def polars_expr(self, column: str) -> pl.Expr:
        c = pl.col(column).cast(pl.Int64)
        base = self.num_clusters + self.num_oov_rows
        hashed = base + universal_hash_expr(c, int(self.a[0]), int(self.b[0]), self.num_hash_rows)
        return pl.concat_list([self._cluster_expr(c), hashed.cast(pl.Int64)]).alias(column)
