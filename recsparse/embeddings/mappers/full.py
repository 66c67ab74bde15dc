"""``FullMapper``: one row per known id plus one shared out-of-vocabulary row (the uncompressed baseline)."""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from recsparse.embeddings.mappers.base import MapperBase, MapperStateError, as_id_tensor, ids_from_fit_input
from recsparse.types import check_positive


class FullMapper(MapperBase):
    """Vocabulary mapper: ``num_ids`` own rows + 1 OOV row (row ``num_ids``), so ``num_rows = num_ids + 1``.

    Two vocabularies: the *identity* vocabulary ``[0, num_ids)`` (dense remapped ids such as Gowalla's; no fit
    needed) or, after :meth:`fit`, the sorted distinct ids of a stream (sparse raw ids; row = rank of the id).
    Any other id (unseen, negative, huge) goes to the OOV row.

    ``transform``: LongTensor ``[*S]`` -> ``[*S, 1]``.
    """

    name = "full"
    _scalars = ("num_ids", "identity")
    _tensors = ("vocab",)

    def __init__(self, num_ids: int) -> None:
        check_positive("num_ids", num_ids)
        self.num_ids = int(num_ids)
        self.identity = 1
        self.vocab = torch.empty(0, dtype=torch.long)

    def validate(self) -> None:
        n = self._int_field("num_ids", 1)
        if self._int_field("identity", 0, 1):
            return
        if self.vocab.numel() != n:
            raise MapperStateError(f"full mapper state: vocab has {self.vocab.numel()} ids but num_ids={n}")
        if n > 1 and not bool((self.vocab[1:] > self.vocab[:-1]).all()):
            raise MapperStateError("full mapper state: vocab must be sorted and distinct")

    @property
    def num_rows(self) -> int:
        return self.num_ids + 1

    def fit(self, ids: Any, column: str | None = None, min_count: int = 1, **_: Any) -> "FullMapper":
        """Learn the vocabulary: distinct ids seen at least ``min_count`` times (ids ``[N]`` or ``frame[column]``)."""
        stream = ids_from_fit_input(ids, column)
        uniq, counts = torch.unique(stream, return_counts=True)  # sorted
        self.vocab = uniq[counts >= min_count].contiguous()
        if self.vocab.numel() == 0:
            raise ValueError("FullMapper.fit: empty vocabulary (no id reaches min_count)")
        self.num_ids = int(self.vocab.numel())
        self.identity = 0
        return self

    def transform(self, ids: torch.Tensor) -> torch.Tensor:
        x = as_id_tensor(ids)
        if self.identity:
            if x.numel():
                lo, hi = torch.aminmax(x)
                if int(lo) >= 0 and int(hi) < self.num_ids:  # all in the vocabulary: one reduction, no copy
                    return x.unsqueeze(-1)
            rows = torch.where((x >= 0) & (x < self.num_ids), x, torch.full_like(x, self.num_ids))
        else:
            vocab = self.vocab.to(x.device)
            idx = torch.searchsorted(vocab, x).clamp_(max=self.num_ids - 1)
            rows = torch.where(vocab[idx] == x, idx, torch.full_like(x, self.num_ids))
        return rows.unsqueeze(-1)

    def polars_expr(self, column: str) -> pl.Expr:
        c = pl.col(column).cast(pl.Int64)
        if self.identity:
            expr = pl.when((c >= 0) & (c < self.num_ids)).then(c).otherwise(pl.lit(self.num_ids, pl.Int64))
        else:
            expr = c.replace_strict(pl.Series(self.vocab.numpy()), pl.Series(range(self.num_ids), dtype=pl.Int64),
                                    default=self.num_ids, return_dtype=pl.Int64)
        return expr.alias(column)
