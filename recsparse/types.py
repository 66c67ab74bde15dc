"""The contracts between recsparse's stages: one protocol per seam.

* :class:`IdMapper` — raw categorical id -> row(s) of an embedding table (every compression method is one).
* :class:`Hit` and :data:`Run` — what a retriever returns and what evaluation consumes (the retriever contract
  itself, an abstract base class with the index-metadata schema, is :mod:`recsparse.retrieval.base`).

Sparse features travel as TorchRec ``KeyedJaggedTensor`` everywhere; tabular data as Polars frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:  # keep `import recsparse.types` free of torch/polars import cost
    import polars as pl
    import torch


@runtime_checkable
class IdMapper(Protocol):
    """Maps raw integer ids of one feature to rows of an embedding table.

    ``transform(ids)`` takes a LongTensor of any shape ``S`` and returns a LongTensor of shape ``S + (k,)`` with the
    ``k = rows_per_id`` rows whose embeddings are summed (k = 1 for plain hashing; k > 1 for multi-hash / double
    GraphHash / QR-sum). Every id — unseen, negative or out of range — maps to valid rows in ``[0, num_rows)``.
    """

    @property
    def num_rows(self) -> int: ...

    @property
    def rows_per_id(self) -> int: ...

    def fit(self, ids: "torch.Tensor | pl.DataFrame", **kwargs: Any) -> "IdMapper": ...

    def transform(self, ids: "torch.Tensor") -> "torch.Tensor": ...

    def polars_expr(self, column: str) -> "pl.Expr": ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved document: its id and the retriever's score (higher is better)."""

    docid: str
    score: float


# query id -> ranked hits (best first). Evaluation consumes runs only, never retriever internals.
Run = dict[str, list[Hit]]


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` naming the field when a config value must be > 0."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming the field and the allowed values."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
