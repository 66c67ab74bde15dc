"""``UniversalHashMapper``: k universal hash functions into one table, their rows summed.

k = 1 is plain universal hashing; k = 2 is the "double hashing" baseline of GraphHash (Wu et al., 2024) and of
"Hash Embeddings" (Svenstrup et al., NeurIPS 2017) / multi-hash compositional embeddings (Shi et al., KDD 2020):
two ids collide only if all k hashes collide.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from recsparse.embeddings.mappers.base import (MapperBase, as_id_tensor, as_list_expr, hash_params, universal_hash,
                                               universal_hash_expr)
from recsparse.types import check_positive


class UniversalHashMapper(MapperBase):
    """``rows[..., i] = ((a_i·x + b_i) mod p) mod num_rows`` for i < ``num_hashes``; (a_i, b_i) drawn from ``seed``.

    ``transform``: ``[*S]`` -> ``[*S, num_hashes]``; the table sums the ``num_hashes`` rows of an id. The seed is the
    per-feature *salt* of unified embedding (see :mod:`recsparse.embeddings.unified`).
    """

    name = "universal"
    _scalars = ("m", "num_hashes", "seed")
    _tensors = ("a", "b")

    def __init__(self, num_rows: int, num_hashes: int = 1, seed: int = 0) -> None:
        check_positive("num_rows", num_rows)
        check_positive("num_hashes", num_hashes)
        self.m = int(num_rows)
        self.num_hashes = int(num_hashes)
        self.seed = int(seed)
        self.a, self.b = hash_params(self.num_hashes, self.seed)

    def validate(self) -> None:
        self._int_field("m", 1)
        self._hash_params(self._int_field("num_hashes", 1), "num_hashes")
        self._int_field("seed", -2**63)

    @property
    def num_rows(self) -> int:
        return self.m

    @property
    def rows_per_id(self) -> int:
        return self.num_hashes

    def fit(self, ids: Any = None, **_: Any) -> "UniversalHashMapper":
        return self  # data-independent

    def transform(self, ids: torch.Tensor) -> torch.Tensor:
        return universal_hash(as_id_tensor(ids), self.a, self.b, self.m)

    def polars_expr(self, column: str) -> pl.Expr:
        c = pl.col(column).cast(pl.Int64)
        parts = [universal_hash_expr(c, int(a), int(b), self.m) for a, b in zip(self.a.tolist(), self.b.tolist())]
        return as_list_expr(parts, column)
