"""``ModuloMapper``: the hashing trick at its simplest, ``row = id mod m`` (Weinberger et al., ICML 2009)."""

from __future__ import annotations

from typing import Any

import polars as pl
import torch

from recsparse.embeddings.mappers.base import MapperBase, as_id_tensor
from recsparse.types import check_positive


class ModuloMapper(MapperBase):
    """``row = id mod num_rows`` (floor modulo: negative ids land in range too). No fit. ``[*S]`` -> ``[*S, 1]``."""

    name = "modulo"
    _scalars = ("m",)

    def __init__(self, num_rows: int) -> None:
        check_positive("num_rows", num_rows)
        self.m = int(num_rows)

    def validate(self) -> None:
        self._int_field("m", 1)

    @property
    def num_rows(self) -> int:
        return self.m

    def fit(self, ids: Any = None, **_: Any) -> "ModuloMapper":
        return self  # nothing to learn: hashing is data-independent

    def transform(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.remainder(as_id_tensor(ids), self.m).unsqueeze(-1)

    def polars_expr(self, column: str) -> pl.Expr:
        return (pl.col(column).cast(pl.Int64) % self.m).alias(column)
