"""``FrequencyHashMapper``: the most frequent ids own a row, the long tail shares hashed rows.

The frequency-based hybrid baseline of GraphHash (Wu et al., 2024) and of "Learning to Embed Categorical Features
without Embedding Tables" (Kang et al., KDD 2021): head ids are where collisions hurt most, so they get exact rows.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from recsparse.embeddings.mappers.base import (MapperBase, MapperStateError, as_id_tensor, hash_params,
                                               ids_from_fit_input, universal_hash, universal_hash_expr)
from recsparse.types import check_positive


class FrequencyHashMapper(MapperBase):
    """Rows ``[0, T)``: the ``T = num_top`` most frequent ids of the fit stream (ties -> smaller id first); rows
    ``[T, num_rows)``: every other id by one universal hash. Before ``fit`` every id is hashed.

    ``transform``: ``[*S]`` -> ``[*S, 1]``.
    """

    name = "frequency"
    _scalars = ("m", "num_top", "seed")
    _tensors = ("top_ids", "top_rows", "a", "b")

    def __init__(self, num_rows: int, num_top: int | None = None, seed: int = 0) -> None:
        check_positive("num_rows", num_rows)
        num_top = num_rows // 2 if num_top is None else int(num_top)
        if not 0 <= num_top < num_rows:
            raise ValueError(f"num_top must be in [0, num_rows={num_rows}) so hashed ids keep >= 1 row, got {num_top}")
        self.m = int(num_rows)
        self.num_top = num_top
        self.seed = int(seed)
        self.a, self.b = hash_params(1, self.seed)
        self.top_ids = torch.empty(0, dtype=torch.long)  # sorted, for searchsorted
        self.top_rows = torch.empty(0, dtype=torch.long)  # row of top_ids[i]

    def validate(self) -> None:
        m = self._int_field("m", 2)
        top = self._int_field("num_top", 0, m - 1)
        self._hash_params(1)
        n = self.top_ids.numel()
        if n > top:
            raise MapperStateError(f"frequency mapper state: top_ids has {n} ids, more than num_top={top}")
        self._tensor_range("top_rows", 0, max(top, 1), n)
        if n > 1 and not bool((self.top_ids[1:] > self.top_ids[:-1]).all()):
            raise MapperStateError("frequency mapper state: top_ids must be sorted and distinct")

    @property
    def num_rows(self) -> int:
        return self.m

    def fit(self, ids: Any, column: str | None = None, **_: Any) -> "FrequencyHashMapper":
        """Count ids (``[N]`` or ``frame[column]``) and give the ``num_top`` most frequent their own rows."""
        stream = ids_from_fit_input(ids, column)
        uniq, counts = torch.unique(stream, return_counts=True)  # uniq ascending
        # stable sort by -count keeps ascending-id order among ties -> deterministic
        order = torch.sort(-counts, stable=True).indices[: self.num_top]
        top = uniq[order]
        sorted_top, perm = torch.sort(top)
        self.top_ids = sorted_top.contiguous()
        self.top_rows = perm.contiguous()  # rank by frequency = own row
        return self

    def _hashed(self, x: torch.Tensor) -> torch.Tensor:
        return self.num_top + universal_hash(x, self.a, self.b, self.m - self.num_top)[..., 0]

    def transform(self, ids: torch.Tensor) -> torch.Tensor:
        x = as_id_tensor(ids)
        rows = self._hashed(x)
        if self.top_ids.numel():
            top = self.top_ids.to(x.device)
            idx = torch.searchsorted(top, x).clamp_(max=top.numel() - 1)
            rows = torch.where(top[idx] == x, self.top_rows.to(x.device)[idx], rows)
        return rows.unsqueeze(-1)

    def polars_expr(self, column: str) -> pl.Expr:
        c = pl.col(column).cast(pl.Int64)
        hashed = self.num_top + universal_hash_expr(c, int(self.a[0]), int(self.b[0]), self.m - self.num_top)
        if not self.top_ids.numel():
            return hashed.alias(column)
        own = c.replace_strict(pl.Series(self.top_ids.numpy()), pl.Series(self.top_rows.numpy()), default=None,
                               return_dtype=pl.Int64)
        return own.fill_null(hashed).alias(column)
