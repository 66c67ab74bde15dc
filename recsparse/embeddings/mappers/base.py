"""Shared pieces of every id-mapper: id coercion, the universal hash family, state-dict plumbing.

The hash family is the classic Carter–Wegman universal family ``h(x) = ((a·x + b) mod p) mod m`` with the Mersenne
prime ``p = 2^31 - 1`` (Carter & Wegman, "Universal classes of hash functions", 1979) — the one the GraphHash
baselines use (Wu et al., "GraphHash: Graph Clustering Enables Parameter Efficiency in Recommender Systems", 2024).
Ids are first reduced mod ``p`` (floor modulo, so negative and huge int64 ids are fine) which keeps ``a·x + b`` below
2^62: no int64 overflow in torch or Polars, and both give bit-identical rows.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import polars as pl
import torch

from recsparse.errors import UserError

PRIME = 2**31 - 1  # Mersenne prime of the universal hash family


class MapperStateError(UserError, ValueError):
    """A mapper state (from a checkpoint or ``mapper_from_state``) that would map ids outside ``[0, num_rows)`` or is
    inconsistent; the message names the mapper and the field."""


def as_id_tensor(ids: Any) -> torch.Tensor:
    """Coerce ids (tensor, numpy array, Polars series, list) to an int64 CPU-or-device tensor of the same shape."""
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"ids must be an integer tensor, got dtype {ids.dtype}")
        return ids.long()
    if isinstance(ids, pl.Series):
        ids = ids.to_numpy()
    return torch.as_tensor(np.array(ids, dtype=np.int64, copy=True))


def ids_from_fit_input(data: Any, column: str | None) -> torch.Tensor:
    """The 1-D id stream of a ``fit`` input: a tensor/array/Series of ids, or ``frame[column]`` of a Polars frame."""
    if isinstance(data, (pl.DataFrame, pl.LazyFrame)):
        if column is None:
            raise ValueError("column must name the id column when fitting on a Polars frame")
        frame = data.collect() if isinstance(data, pl.LazyFrame) else data
        if column not in frame.columns:
            raise ValueError(f"column {column!r} not in frame columns {frame.columns}")
        return torch.from_numpy(frame[column].cast(pl.Int64).to_numpy().copy())
    return as_id_tensor(data).reshape(-1)


def hash_params(num_hashes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_hashes`` (a, b) pairs with ``a ∈ [1, p)``, ``b ∈ [0, p)`` deterministically from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randint(1, PRIME, (num_hashes,), generator=g, dtype=torch.long)
    b = torch.randint(0, PRIME, (num_hashes,), generator=g, dtype=torch.long)
    return a, b


def universal_hash(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, m: int) -> torch.Tensor:
    """``((a·x + b) mod p) mod m`` for every hash: ids ``[*S]`` -> rows ``[*S, k]`` in ``[0, m)``."""
    x = torch.remainder(ids, PRIME).unsqueeze(-1)
    a = a.to(ids.device)
    b = b.to(ids.device)
    return torch.remainder(torch.remainder(x * a + b, PRIME), m)


def universal_hash_expr(col: pl.Expr, a: int, b: int, m: int) -> pl.Expr:
    """Polars twin of :func:`universal_hash` for one (a, b): equal row for row (Polars ``%`` is floor modulo too)."""
    return ((((col % PRIME) * a + b) % PRIME) % m).cast(pl.Int64)


def as_list_expr(parts: list[pl.Expr], name: str) -> pl.Expr:
    """One row per id -> that Int64 column; k rows -> a ``list[i64]`` column (the Polars shape of ``[S, k]``)."""
    if len(parts) == 1:
        return parts[0].cast(pl.Int64).alias(name)
    return pl.concat_list([p.cast(pl.Int64) for p in parts]).alias(name)


class MapperBase:
    """Common behaviour: ``__call__`` = ``transform``, state dicts of plain ints/floats/tensors, validation helpers.

    Subclasses list their scalar hyper-parameters in ``_scalars`` and their tensor state in ``_tensors``; that is
    all ``state_dict``/``load_state_dict`` need (so ``torch.save`` + ``torch.load(weights_only=True)`` round-trips).
    """

    name: str = "base"
    _scalars: tuple[str, ...] = ()
    _tensors: tuple[str, ...] = ()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.transform(ids)

    def transform(self, ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"mapper": self.name}
        for k in self._scalars:
            state[k] = getattr(self, k)
        for k in self._tensors:
            state[k] = getattr(self, k).clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("mapper", self.name) != self.name:
            raise MapperStateError(f"state is for mapper {state.get('mapper')!r}, not {self.name!r}")
        missing = [k for k in (*self._scalars, *self._tensors) if k not in state]
        if missing:
            raise MapperStateError(f"{self.name} mapper state is missing {missing}")
        staged = type(self).__new__(type(self))  # validate a copy: a bad state leaves this mapper untouched
        for k in self._scalars:
            setattr(staged, k, state[k])
        for k in self._tensors:
            v = state[k]
            if not isinstance(v, torch.Tensor) or v.dtype != torch.long or v.dim() != 1:
                raise MapperStateError(f"{self.name} mapper state: {k} must be a 1-D int64 tensor, got "
                                       f"{getattr(v, 'dtype', type(v).__name__)} {tuple(getattr(v, 'shape', ()))}")
            setattr(staged, k, v.clone())
        staged.validate()
        self.__dict__.update(staged.__dict__)

    # ---- state validation: a loaded state must keep every id inside [0, num_rows) -------------------------------
    def validate(self) -> None:
        """Raise :class:`MapperStateError` naming the field when the state is inconsistent (subclasses extend)."""

    def _int_field(self, k: str, lo: int, hi: int | None = None) -> int:
        v = getattr(self, k)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise MapperStateError(f"{self.name} mapper state: {k} must be an integer {rng}, got {v!r}")
        return int(v)

    def _tensor_range(self, k: str, lo: int, hi: int, size: int | None = None) -> None:
        """``getattr(self, k)`` has values in ``[lo, hi)`` (and ``size`` elements if given)."""
        t = getattr(self, k)
        if size is not None and t.numel() != size:
            raise MapperStateError(f"{self.name} mapper state: {k} has {t.numel()} entries, expected {size}")
        if t.numel() and (int(t.min()) < lo or int(t.max()) >= hi):
            raise MapperStateError(f"{self.name} mapper state: {k} has values in [{int(t.min())}, {int(t.max())}], "
                                   f"outside [{lo}, {hi})")

    def _hash_params(self, k: int, field: str = "a") -> None:
        """Universal-hash parameters ``a`` in [1, p), ``b`` in [0, p), ``k`` of each (``field``: the scalar that
        sets ``k``, named when the counts disagree)."""
        if self.a.numel() != k or self.b.numel() != k:
            raise MapperStateError(f"{self.name} mapper state: {field}={k} but a / b hold {self.a.numel()} / "
                                   f"{self.b.numel()} hash parameters")
        self._tensor_range("a", 1, PRIME)
        self._tensor_range("b", 0, PRIME)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._scalars)
        return f"{type(self).__name__}({args}, num_rows={self.num_rows}, rows_per_id={self.rows_per_id})"

    # the protocol's two properties; subclasses override
    @property
    def num_rows(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def rows_per_id(self) -> int:
        return 1

    @property
    def num_bytes_state(self) -> int:
        """Bytes of the mapper's own state (vocabularies, cluster labels) — part of its memory cost."""
        return int(sum(getattr(self, k).numel() * getattr(self, k).element_size() for k in self._tensors))
