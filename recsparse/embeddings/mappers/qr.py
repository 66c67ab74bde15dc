"""``QRMapper``: the quotient–remainder trick (Shi et al., "Compositional Embeddings Using Complementary
Partitions for Memory-Efficient Recommendation Systems", KDD 2020).

An id ``x`` (reduced mod ``m_r·m_q``) is the pair ``(x mod m_r, x div m_r)``; two small tables (remainder rows, then
quotient rows) stacked in ONE table of ``m_r + m_q`` rows, and the two rows are summed (the paper's "sum"
combiner). Every id in ``[0, m_r·m_q)`` gets a unique *pair* of rows, so no two ids share an embedding although the
table has only ``m_r + m_q ≈ 2√N`` rows.

The paper's *product* combiner (element-wise multiply) is not expressible as a pooled table lookup; models that want
it call ``transform`` and multiply the two looked-up rows themselves (``embed`` sums, i.e. the sum combiner).
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import torch

from recsparse.embeddings.mappers.base import MapperBase, as_id_tensor
from recsparse.types import check_positive


def qr_sizes(num_ids: int, num_rows: int | None) -> tuple[int, int]:
    """Choose (m_r, m_q) with ``m_r + m_q <= num_rows``: the largest remainder table that still leaves a quotient
    table covering all ``num_ids`` (unique pairs); below ``2·ceil(√N)`` rows split the budget evenly (collisions)."""
    if num_rows is None:
        m_r = math.isqrt(num_ids - 1) + 1
        return m_r, -(-num_ids // m_r)
    if num_rows < 2:
        raise ValueError(f"num_rows must be >= 2 for QR (one remainder + one quotient row), got {num_rows}")
    best = None
    lo = math.isqrt(max(num_ids - 1, 0)) + 1  # m_r = ceil(sqrt N) minimises m_r + ceil(N/m_r)
    if lo + -(-num_ids // lo) <= num_rows:
        # largest m_r with m_r + ceil(N / m_r) <= num_rows (binary search; the sum grows with m_r above √N)
        a, b = lo, num_rows - 1
        while a < b:
            mid = (a + b + 1) // 2
            if mid + -(-num_ids // mid) <= num_rows:
                a = mid
            else:
                b = mid - 1
        best = (a, -(-num_ids // a))
    if best is None:
        m_r = max(1, num_rows // 2)
        best = (m_r, num_rows - m_r)
    return best


class QRMapper(MapperBase):
    """Quotient–remainder mapper: ``[*S]`` -> ``[*S, 2]`` = ``[x mod m_r, m_r + (x div m_r)]`` with
    ``x = id mod (m_r·m_q)``; ``num_rows = m_r + m_q``; the table sums the two rows (combine='sum')."""

    name = "qr"
    _scalars = ("num_ids", "m_r", "m_q")

    def __init__(self, num_ids: int, num_rows: int | None = None, combine: str = "sum") -> None:
        check_positive("num_ids", num_ids)
        if combine != "sum":
            raise ValueError("combine must be 'sum' (the product combiner is model-side; see module docstring)")
        self.num_ids = int(num_ids)
        self.m_r, self.m_q = qr_sizes(self.num_ids, num_rows)

    def validate(self) -> None:
        self._int_field("num_ids", 1)
        self._int_field("m_r", 1)
        self._int_field("m_q", 1)

    @property
    def num_rows(self) -> int:
        return self.m_r + self.m_q

    @property
    def rows_per_id(self) -> int:
        return 2

    def fit(self, ids: Any = None, **_: Any) -> "QRMapper":
        return self

    def transform(self, ids: torch.Tensor) -> torch.Tensor:
        x = torch.remainder(as_id_tensor(ids), self.m_r * self.m_q)
        return torch.stack([torch.remainder(x, self.m_r), self.m_r + torch.div(x, self.m_r, rounding_mode="floor")],
                           dim=-1)

    def polars_expr(self, column: str) -> pl.Expr:
        x = pl.col(column).cast(pl.Int64) % (self.m_r * self.m_q)
        return pl.concat_list([x % self.m_r, self.m_r + x // self.m_r]).alias(column)
