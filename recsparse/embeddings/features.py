"""Declarative feature spec: Polars (Lazy)Frame -> ``KeyedJaggedTensor`` + dense + label batches, vectorised in Polars.

A :class:`FeatureSpec` lists features of four kinds:

* :class:`Categorical` — one id per row (string, integer, or hex-string column);
* :class:`MultiHot` — a ``list[...]`` column (genres, title words, a history), pooled ``sum`` or ``mean``;
* :class:`Numeric` — a number, standardised (``(x - mean) / std``, optionally after ``log1p``) into the dense tensor;
* :class:`Bucketized` — a number cut at train-quantile boundaries into a categorical id (nulls get their own bucket).

Each sparse feature names its id-mapper: ``full`` (vocabulary of ids seen ``min_count`` times + one OOV row), any
hashing mapper (``modulo``, ``universal``, ``frequency``, ``qr``), ``graphhash`` (bipartite clustering with the
feature named in ``graph_pair``) or ``unified`` (all ``unified`` features share ONE table,
:class:`~recsparse.embeddings.unified.UnifiedEmbedding`, sized by ``FeatureSpec.unified_rows``).

Two stages, both Polars expressions:

1. *encode*: raw value -> int64 id. Strings go through a fitted string vocabulary (sorted distinct values; an unseen
   string or a null -> id ``-1``), hex strings are parsed (``encode="hex"``: Criteo/Avazu ids need no vocabulary),
   integers pass through (null -> ``-1``). Every mapper sends ``-1`` to a valid row (the OOV row of ``full``, a hashed
   row otherwise) — an unseen category never raises.
2. *map*: id -> table row(s) with the mapper's Polars expression (:meth:`FittedFeatureSpec.rows_frame`, or
   ``pl.col(c).recsparse.rows(mapper)`` for any mapper). The model path instead hands the encoded ids to
   :class:`~recsparse.embeddings.MappedEmbeddingBagCollection`, which maps them in torch (one mapping code path).

``spec.fit(train_frame)`` -> :class:`FittedFeatureSpec`; ``fitted.encode(frame)`` -> :class:`EncodedFrame`
(all rows as tensors; ``batch(idx)`` gathers any rows, e.g. a shuffled training batch);
``fitted.batches(frame_or_lazy_or_parquet, batch_size)`` streams :class:`Batch` es chunk by chunk, so a LazyFrame or
parquet file larger than memory never has to be collected whole. ``fitted.save(dir)`` writes ``spec.json`` (spec,
vocabularies, scalars) + ``tensors.safetensors`` (mapper tensors, cached artifacts such as feature-pair mutual
information); ``FittedFeatureSpec.load(dir)`` restores it (no pickle).

Bad input raises :class:`FeatureSpecError` (a :class:`~recsparse.errors.UserError`) naming the feature and column:
a missing column, a wrong dtype (a float column as a categorical, a string column as a number, a non-list column
as multi-hot), a null/NaN/inf numeric value (unless ``fill_null`` is set; bucketised features give nulls their own
bucket), a null or non-binary label.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import polars as pl
import torch

from recsparse.embeddings.mappers import MAPPERS, GraphHashMapper, MapperBase, build_mapper, mapper_from_state
from recsparse.errors import UserError

SPARSE_MAPPERS = (*sorted(MAPPERS), "unified")
ENCODINGS = ("auto", "vocab", "int", "hex")
_INT_TYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
_FLOAT_TYPES = (pl.Float32, pl.Float64)
SPEC_FILE, TENSOR_FILE = "spec.json", "tensors.safetensors"


class FeatureSpecError(UserError, ValueError):
    """A feature spec that does not fit the data (missing column, wrong dtype, NaN, bad label); names the feature."""


# ----------------------------------------------------------------------------------------------------- the spec
@dataclass
class Categorical:
    """One categorical id per row. ``column`` defaults to ``name``. ``encode``: ``auto`` (strings -> vocabulary,
    integers as they are), ``vocab``, ``int``, ``hex`` (parse hexadecimal strings: no vocabulary to store).
    ``mapper``: ``full`` | a hashing mapper | ``graphhash`` (with ``graph_pair``) | ``unified``; ``num_rows``: the
    hashing budget; ``min_count``: ``full`` keeps ids seen this often in training (the rest share the OOV row)."""

    name: str
    column: str | None = None
    mapper: str = "full"
    num_rows: int | None = None
    min_count: int = 1
    encode: str = "auto"
    mapper_kwargs: dict[str, Any] = field(default_factory=dict)
    graph_pair: str | None = None
    kind: str = "categorical"

    def __post_init__(self) -> None:
        _check_sparse(self)


@dataclass
class MultiHot(Categorical):
    """A ``list`` column of categorical values (genres, title words): a bag, pooled ``pooling`` over its ids.
    ``max_len`` keeps the first ``max_len`` values of a row. An empty or null list is an empty bag (zero vector)."""

    pooling: str = "mean"
    max_len: int | None = None
    kind: str = "multi_hot"

    def __post_init__(self) -> None:
        _check_sparse(self)
        if self.pooling not in ("sum", "mean"):
            raise FeatureSpecError(f"feature {self.name!r}: pooling must be 'sum' or 'mean', got {self.pooling!r}")
        if self.graph_pair is not None:
            raise FeatureSpecError(f"feature {self.name!r}: graphhash needs one id per row (not a multi-hot bag)")
        if self.max_len is not None and self.max_len < 1:
            raise FeatureSpecError(f"feature {self.name!r}: max_len must be >= 1, got {self.max_len}")


@dataclass
class Numeric:
    """A number into the dense tensor: ``(f(x) - mean) / std`` with mean/std from training (``f = log1p`` of
    ``max(x, 0)`` when ``log=True``, for heavy-tailed counts). ``fill_null``: raw value used for null/NaN; ``None``
    (default) -> a null/NaN/inf raises :class:`FeatureSpecError`."""

    name: str
    column: str | None = None
    log: bool = False
    fill_null: float | None = None
    kind: str = "numeric"

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.fill_null is not None and not math.isfinite(float(self.fill_null)):
            raise FeatureSpecError(f"feature {self.name!r}: fill_null must be a finite number, got {self.fill_null!r}")


@dataclass
class Bucketized:
    """A number cut into ``num_buckets`` train-quantile buckets (or explicit ``boundaries``), used as a categorical
    id: bucket ``i`` for ``boundaries[i-1] <= x < boundaries[i]``; null/NaN -> its own last bucket. Table rows come
    from ``mapper`` as for :class:`Categorical` (default ``full``: one row per bucket)."""

    name: str
    column: str | None = None
    num_buckets: int = 10
    boundaries: list[float] | None = None
    mapper: str = "full"
    num_rows: int | None = None
    mapper_kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = "bucketized"

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.mapper not in SPARSE_MAPPERS or self.mapper == "graphhash":
            raise FeatureSpecError(f"feature {self.name!r}: mapper must be one of "
                                   f"{[m for m in SPARSE_MAPPERS if m != 'graphhash']}, got {self.mapper!r}")
        if self.boundaries is None and self.num_buckets < 2:
            raise FeatureSpecError(f"feature {self.name!r}: num_buckets must be >= 2, got {self.num_buckets}")
        if self.boundaries is not None:
            b = [float(x) for x in self.boundaries]
            if not b or any(not math.isfinite(x) for x in b) or b != sorted(set(b)):
                raise FeatureSpecError(f"feature {self.name!r}: boundaries must be finite and strictly increasing")
            self.boundaries = b


Feature = Categorical | MultiHot | Numeric | Bucketized
_KINDS: dict[str, type] = {"categorical": Categorical, "multi_hot": MultiHot, "numeric": Numeric,
                           "bucketized": Bucketized}


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "#" in name:
        raise FeatureSpecError(f"feature name must be a non-empty string without '#', got {name!r}")


def _check_sparse(f: Categorical) -> None:
    _check_name(f.name)
    if f.mapper not in SPARSE_MAPPERS:
        raise FeatureSpecError(f"feature {f.name!r}: mapper must be one of {list(SPARSE_MAPPERS)}, got {f.mapper!r}")
    if f.encode not in ENCODINGS:
        raise FeatureSpecError(f"feature {f.name!r}: encode must be one of {list(ENCODINGS)}, got {f.encode!r}")
    if f.min_count < 1:
        raise FeatureSpecError(f"feature {f.name!r}: min_count must be >= 1, got {f.min_count}")
    if f.num_rows is not None and f.num_rows < 1:
        raise FeatureSpecError(f"feature {f.name!r}: num_rows must be >= 1, got {f.num_rows}")
    if (f.mapper == "graphhash") != (f.graph_pair is not None):
        raise FeatureSpecError(f"feature {f.name!r}: mapper='graphhash' and graph_pair (the other side of the "
                               "bipartite graph, e.g. item_id for user_id) go together")


def _col(f: Feature) -> str:
    return f.column or f.name


@dataclass
class FeatureSpec:
    """Features + the label column. ``unified_rows``/``unified_seed``/``unified_chunks``: the shared table of
    ``mapper='unified'`` features. ``unified_rows`` is the table's size in rows of the MODEL's embedding dim d: with
    ``unified_chunks = c`` (multi-probe: each feature looks up c independently salted rows of width d/c and
    concatenates them, Coleman et al. 2023) the table is stored as ``c · unified_rows`` rows of d/c — the same
    parameters. Build it in code or from a dict/YAML: ``{"label": "label", "features": [{"name": "user_id",
    "kind": "categorical", "mapper": "full"}, ...]}``."""

    features: list[Feature]
    label: str | None = "label"
    unified_rows: int | None = None
    unified_seed: int = 0
    unified_chunks: int = 1

    def __post_init__(self) -> None:
        if not self.features:
            raise FeatureSpecError("a feature spec needs at least one feature")
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise FeatureSpecError(f"feature names must be unique, repeated: {dup}")
        for f in self.sparse:
            if isinstance(f, Categorical) and f.graph_pair is not None and f.graph_pair not in names:
                raise FeatureSpecError(f"feature {f.name!r}: graph_pair {f.graph_pair!r} is not a feature")
        if any(f.mapper == "unified" for f in self.sparse) and (self.unified_rows is None or self.unified_rows < 1):
            raise FeatureSpecError("mapper='unified' features need FeatureSpec.unified_rows (the shared table's rows)")
        if not isinstance(self.unified_chunks, int) or self.unified_chunks < 1:
            raise FeatureSpecError(f"unified_chunks must be an integer >= 1, got {self.unified_chunks!r}")

    @property
    def sparse(self) -> list[Categorical | Bucketized]:
        return [f for f in self.features if not isinstance(f, Numeric)]

    @property
    def dense(self) -> list[Numeric]:
        return [f for f in self.features if isinstance(f, Numeric)]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "unified_rows": self.unified_rows, "unified_seed": self.unified_seed,
                "unified_chunks": self.unified_chunks, "features": [asdict(f) for f in self.features]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSpec":
        feats = []
        for i, fd in enumerate(d.get("features") or []):
            fd = dict(fd)
            kind = fd.pop("kind", "categorical")
            if kind not in _KINDS:
                raise FeatureSpecError(f"features[{i}].kind must be one of {list(_KINDS)}, got {kind!r}")
            try:
                feats.append(_KINDS[kind](**fd))
            except TypeError as e:
                raise FeatureSpecError(f"features[{i}] ({kind}): {e}") from None
        return cls(feats, label=d.get("label", "label"), unified_rows=d.get("unified_rows"),
                   unified_seed=int(d.get("unified_seed", 0)), unified_chunks=int(d.get("unified_chunks", 1)))

    def fit(self, frame: pl.DataFrame | pl.LazyFrame) -> "FittedFeatureSpec":
        """Learn vocabularies, mapper state, normalisation and bucket boundaries from the TRAINING frame."""
        lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
        schema = lf.collect_schema()
        check_columns(self, schema, need_label=False)
        states: dict[str, dict[str, Any]] = {}
        strs = [f for f in self.sparse if isinstance(f, Categorical) and _encoding(f, schema) == "vocab"]
        # string vocabularies: one pass per feature over the distinct values (Polars group-by)
        for f in strs:
            c = _col(f)
            src = pl.col(c).explode() if isinstance(f, MultiHot) else pl.col(c)
            vals = lf.select(src.alias("v")).drop_nulls().unique().sort("v").collect()["v"]
            states[f.name] = {"vocab": vals.cast(pl.Utf8).to_list()}
        numeric_stats = _numeric_stats(self, lf, schema)
        fitted = FittedFeatureSpec(self, states, {}, numeric_stats)
        # lazy throughout: id-space sizes in one aggregate query, then per-feature group-by counts — the encoded
        # training frame is never collected whole (only a frequency mapper collects its own id column)
        enc = fitted.encode_frame(lf, with_label=False)
        _fit_id_spaces(self, enc, fitted)
        for f in self.sparse:
            fitted.mappers[f.name] = _fit_mapper(self, f, enc, fitted)
        return fitted


def _encoding(f: Categorical, schema: Mapping[str, pl.DataType]) -> str:
    dt = schema[_col(f)]
    inner = dt.inner if isinstance(dt, pl.List) else dt  # type: ignore[union-attr]
    is_str = inner in (pl.Utf8, pl.Categorical) or isinstance(inner, (pl.Categorical, pl.Enum))
    if f.encode == "auto":
        if is_str:
            return "vocab"
        if inner in _INT_TYPES:
            return "int"
    elif f.encode in ("vocab", "hex") and is_str:
        return f.encode
    elif f.encode == "int" and inner in _INT_TYPES:
        return "int"
    raise FeatureSpecError(f"feature {f.name!r}: column {_col(f)!r} has dtype {dt}; encode={f.encode!r} needs "
                           f"{'integer' if f.encode == 'int' else 'string' if f.encode != 'auto' else 'string or integer'}"
                           f" values" + (" (bucketize a numeric column with kind='bucketized')"
                                         if inner in _FLOAT_TYPES else ""))


def check_columns(spec: FeatureSpec, schema: Mapping[str, pl.DataType], need_label: bool = True) -> None:
    """Raise :class:`FeatureSpecError` for a missing column or a dtype that does not fit the feature's kind."""
    cols = list(schema)
    for f in spec.features:
        c = _col(f)
        if c not in schema:
            raise FeatureSpecError(f"feature {f.name!r}: column {c!r} is not in the frame (columns: {cols})")
        dt = schema[c]
        if isinstance(f, MultiHot):
            if not isinstance(dt, pl.List):
                raise FeatureSpecError(f"feature {f.name!r}: multi_hot needs a list column, {c!r} has dtype {dt} "
                                       "(split a string with pl.col(c).str.split(' ') first)")
            _encoding(f, schema)
        elif isinstance(f, Categorical):
            if isinstance(dt, pl.List):
                raise FeatureSpecError(f"feature {f.name!r}: column {c!r} is a list ({dt}); use kind='multi_hot'")
            _encoding(f, schema)
        elif not (dt in _INT_TYPES or dt in _FLOAT_TYPES or dt == pl.Boolean):
            raise FeatureSpecError(f"feature {f.name!r}: {f.kind} needs a numeric column, {c!r} has dtype {dt}")
    if need_label and spec.label is not None:
        if spec.label not in schema:
            raise FeatureSpecError(f"label column {spec.label!r} is not in the frame (columns: {cols})")
        dt = schema[spec.label]
        if not (dt in _INT_TYPES or dt in _FLOAT_TYPES or dt == pl.Boolean):
            raise FeatureSpecError(f"label column {spec.label!r} must be 0/1 (bool or number), has dtype {dt}")


def _numeric_stats(spec: FeatureSpec, lf: pl.LazyFrame, schema: Mapping[str, pl.DataType]) -> dict[str, Any]:
    exprs: list[pl.Expr] = []
    for f in spec.dense:
        x = _numeric_value(f, strict_nan=True)
        exprs += [x.mean().alias(f"{f.name}:mean"), x.std().alias(f"{f.name}:std")]
    for f in spec.features:
        if isinstance(f, Bucketized) and f.boundaries is None:
            x = pl.col(_col(f)).cast(pl.Float64)
            x = pl.when(x.is_finite()).then(x)
            qs = np.linspace(0, 1, f.num_buckets + 1)[1:-1]
            exprs.append(pl.concat_list([x.quantile(float(q), "linear") for q in qs]).alias(f"{f.name}:q"))
        if isinstance(f, Numeric) and f.fill_null is None:
            exprs.append((~pl.col(_col(f)).cast(pl.Float64).is_finite()).fill_null(True).sum()
                         .alias(f"{f.name}:bad"))
    row = lf.select(exprs).collect().row(0, named=True) if exprs else {}
    out: dict[str, Any] = {}
    for f in spec.dense:
        if f.fill_null is None and row[f"{f.name}:bad"]:
            raise FeatureSpecError(f"feature {f.name!r}: column {_col(f)!r} has {row[f'{f.name}:bad']} null/NaN/inf "
                                   "value(s) in the training frame; clean them or set fill_null")
        mean, std = row[f"{f.name}:mean"], row[f"{f.name}:std"]
        if mean is None:
            raise FeatureSpecError(f"feature {f.name!r}: no values to fit mean/std on")
        out[f.name] = {"mean": float(mean), "std": float(std) if std and std > 0 else 1.0}
    for f in spec.features:
        if isinstance(f, Bucketized):
            if f.boundaries is not None:
                out[f.name] = {"boundaries": list(f.boundaries)}
            else:
                q = [x for x in (row[f"{f.name}:q"] or []) if x is not None]
                b = sorted(set(float(x) for x in q))
                if not b:
                    raise FeatureSpecError(f"feature {f.name!r}: no finite values to place bucket boundaries on")
                out[f.name] = {"boundaries": b}
    return out


def _numeric_value(f: Numeric, strict_nan: bool = False) -> pl.Expr:
    x = pl.col(_col(f)).cast(pl.Float64)
    if f.fill_null is not None:
        x = pl.when(x.is_finite()).then(x).otherwise(pl.lit(float(f.fill_null)))
    if f.log:
        x = x.clip(lower_bound=0.0).log1p()
    return x


def _ids(f: Categorical | Bucketized) -> pl.Expr:
    return (pl.col(f.name).explode() if isinstance(f, MultiHot) else pl.col(f.name)).alias("id")


def _fit_id_spaces(spec: FeatureSpec, enc: pl.LazyFrame, fitted: "FittedFeatureSpec") -> None:
    """``states[f]["num_ids"]``: vocabulary size, bucket count (+ the null bucket), or max training id + 1."""
    need = []
    for f in spec.sparse:
        st = fitted.states.setdefault(f.name, {})
        if isinstance(f, Bucketized):
            st["num_ids"] = len(fitted.numeric[f.name]["boundaries"]) + 2  # buckets 0..len(b); nulls len(b) + 1
        elif "vocab" in st:
            st["num_ids"] = max(1, len(st["vocab"]))
        else:
            need.append(f)
    if need:
        row = enc.select([_ids(f).max().alias(f.name) for f in need]).collect().row(0, named=True)
        for f in need:
            mx = row[f.name]
            fitted.states[f.name]["num_ids"] = int(mx) + 1 if mx is not None and int(mx) >= 0 else 1


def _fit_mapper(spec: FeatureSpec, f: Categorical | Bucketized, enc: pl.LazyFrame,
                fitted: "FittedFeatureSpec") -> MapperBase:
    """The fitted mapper of one sparse feature, on the ENCODED training ids (``-1`` = unseen / null)."""
    st = fitted.states[f.name]
    num_ids = int(st["num_ids"])
    if f.mapper == "unified":
        from recsparse.embeddings.mappers import UniversalHashMapper
        from recsparse.embeddings.unified import feature_salt

        # the Polars view of the shared table (UnifiedEmbedding builds the same mapper from the name and seed)
        assert spec.unified_rows is not None
        c = spec.unified_chunks
        return UniversalHashMapper(spec.unified_rows * c, c, feature_salt(f.name, spec.unified_seed))
    if isinstance(f, Categorical) and f.mapper == "graphhash":
        assert f.graph_pair is not None
        # distinct edges are enough: GraphHash merges duplicate edges to weight 1
        pair = enc.select(pl.col(f.name).alias("u"), pl.col(f.graph_pair).alias("i")).filter(
            (pl.col("u") >= 0) & (pl.col("i") >= 0)).unique().collect()
        m = GraphHashMapper(num_ids, side="user", user_col="u", item_col="i", **dict(f.mapper_kwargs))
        return m.fit(pair, num_items=fitted.num_ids_of(f.graph_pair))
    if f.mapper == "full":
        min_count = getattr(f, "min_count", 1)
        if isinstance(f, Bucketized) or ("vocab" in st and min_count == 1):
            return build_mapper("full", num_ids)  # identity over [0, num_ids) + the OOV row for -1 / unseen
        kept = (enc.select(_ids(f)).filter(pl.col("id") >= 0).group_by("id").len()
                .filter(pl.col("len") >= min_count).select("id").sort("id").collect()["id"])
        if kept.len() == 0:
            raise FeatureSpecError(f"feature {f.name!r}: no id reaches min_count={min_count} in the training frame "
                                   "(nothing to build a vocabulary from)")
        return build_mapper("full", num_ids).fit(torch.from_numpy(kept.to_numpy().astype(np.int64)))
    kw = dict(f.mapper_kwargs)
    if f.mapper in ("universal", "frequency"):
        kw.setdefault("seed", 0)
    try:
        m = build_mapper(f.mapper, num_ids, f.num_rows, **kw)
    except (TypeError, ValueError) as e:
        raise FeatureSpecError(f"feature {f.name!r}: {e}") from None
    if f.mapper == "frequency":
        ids = enc.select(_ids(f)).drop_nulls().collect()["id"]
        m.fit(torch.from_numpy(ids.to_numpy().astype(np.int64)))
    return m


# -------------------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One batch: ``sparse`` KeyedJaggedTensor of encoded ids (keys = sparse features, stride B), ``dense``
    ``[B, num_dense]`` float32, ``label`` ``[B]`` float32 (``None`` without a label column)."""

    sparse: Any
    dense: torch.Tensor
    label: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.dense.shape[0])


@dataclass
class EncodedFrame:
    """All rows of a frame as tensors: per sparse feature ``values`` (int64 ids) and ``offsets`` ``[N+1]``;
    ``dense [N, num_dense]``; ``label [N]``. ``batch(idx)`` gathers rows (vectorised, any order)."""

    keys: list[str]
    values: dict[str, torch.Tensor]
    offsets: dict[str, torch.Tensor]
    dense: torch.Tensor
    label: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def batch(self, idx: torch.Tensor | slice | None = None) -> Batch:
        from torchrec import KeyedJaggedTensor

        n = len(self)
        if idx is None:
            idx = slice(0, n)
        if isinstance(idx, slice):
            lo, hi, _ = idx.indices(n)
            vals, lens = [], []
            for k in self.keys:
                off = self.offsets[k]
                vals.append(self.values[k][off[lo]:off[hi]])
                lens.append(off[lo + 1:hi + 1] - off[lo:hi])
            dense, label = self.dense[lo:hi], None if self.label is None else self.label[lo:hi]
        else:
            idx = torch.as_tensor(idx, dtype=torch.long)
            vals, lens = [], []
            for k in self.keys:
                off = self.offsets[k]
                starts, ln = off[idx], off[idx + 1] - off[idx]
                if bool((ln == 1).all()):
                    vals.append(self.values[k][starts])
                else:
                    total = int(ln.sum())
                    within = torch.arange(total) - torch.repeat_interleave(torch.cumsum(ln, 0) - ln, ln)
                    vals.append(self.values[k][torch.repeat_interleave(starts, ln) + within])
                lens.append(ln)
            dense, label = self.dense[idx], None if self.label is None else self.label[idx]
        kjt = KeyedJaggedTensor(keys=list(self.keys), values=torch.cat(vals) if vals else torch.empty(0, dtype=torch.long),
                                lengths=torch.cat(lens) if lens else torch.empty(0, dtype=torch.long))
        return Batch(kjt, dense, label)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> Iterator[Batch]:
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for lo in range(0, stop, batch_size):
            hi = min(lo + batch_size, n)
            yield self.batch(order[lo:hi] if order is not None else slice(lo, hi))


class FittedFeatureSpec:
    """A spec fitted on training data: string vocabularies, mappers, normalisation, bucket boundaries, and
    ``artifacts`` (tensors other components cache with the spec, e.g. feature-pair mutual information)."""

    def __init__(self, spec: FeatureSpec, states: dict[str, dict[str, Any]], mappers: dict[str, MapperBase],
                 numeric: dict[str, Any], artifacts: dict[str, torch.Tensor] | None = None) -> None:
        self.spec = spec
        self.states = states
        self.mappers = mappers
        self.numeric = numeric
        self.artifacts: dict[str, torch.Tensor] = dict(artifacts or {})

    # ---- introspection --------------------------------------------------------------------------------------
    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.spec.sparse]

    @property
    def dense_names(self) -> list[str]:
        return [f.name for f in self.spec.dense]

    def feature(self, name: str) -> Feature:
        for f in self.spec.features:
            if f.name == name:
                return f
        raise KeyError(f"unknown feature {name!r}; features: {[f.name for f in self.spec.features]}")

    def num_ids_of(self, name: str) -> int:
        """Size of a sparse feature's encoded id space (vocabulary size, bucket count, or max training id + 1)."""
        st = self.states.get(name, {})
        if "num_ids" not in st:
            raise KeyError(f"feature {name!r} is not a fitted sparse feature")
        return int(st["num_ids"])

    def feature_configs(self, embedding_dim: int) -> list[Any]:
        """One :class:`~recsparse.embeddings.FeatureConfig` per sparse feature, with its fitted mapper (for
        ``unified`` features the config carries the id-space size; :class:`UnifiedEmbedding` salts its own)."""
        from recsparse.embeddings.tables import FeatureConfig

        out = []
        for f in self.spec.sparse:
            pooling = f.pooling if isinstance(f, MultiHot) else "sum"
            m = self.mappers[f.name]
            out.append(FeatureConfig(f.name, self.num_ids_of(f.name), embedding_dim, mapper=m, pooling=pooling))
        return out

    def table_rows(self) -> dict[str, int]:
        return {n: m.num_rows for n, m in self.mappers.items()}

    # ---- Polars stage 1: encode ----------------------------------------------------------------------------
    def _encode_expr(self, f: Categorical | Bucketized, schema: Mapping[str, pl.DataType]) -> pl.Expr:
        c = _col(f)
        if isinstance(f, Bucketized):
            b = self.numeric[f.name]["boundaries"]
            x = pl.col(c).cast(pl.Float64)
            idx = pl.lit(pl.Series(b, dtype=pl.Float64)).search_sorted(x, side="right").cast(pl.Int64)
            return pl.when(x.is_finite()).then(idx).otherwise(pl.lit(len(b) + 1, pl.Int64)).alias(f.name)
        enc = _encoding(f, schema)
        src = pl.element() if isinstance(f, MultiHot) else pl.col(c)
        if enc == "vocab":
            vocab = self.states[f.name]["vocab"]
            e = src.cast(pl.Utf8).replace_strict(pl.Series(vocab, dtype=pl.Utf8),
                                                 pl.Series(range(len(vocab)), dtype=pl.Int64),
                                                 default=-1, return_dtype=pl.Int64)
        elif enc == "hex":
            e = src.cast(pl.Utf8).str.to_integer(base=16, strict=False).cast(pl.Int64).fill_null(-1)
        else:
            e = src.cast(pl.Int64).fill_null(-1)
        if isinstance(f, MultiHot):
            lst = pl.col(c)
            if f.max_len is not None:
                lst = lst.list.head(f.max_len)
            return lst.list.eval(e).fill_null(pl.lit([], dtype=pl.List(pl.Int64))).alias(f.name)
        return e.alias(f.name)

    def _dense_expr(self, f: Numeric) -> pl.Expr:
        st = self.numeric[f.name]
        return ((_numeric_value(f) - st["mean"]) / st["std"]).cast(pl.Float32).alias(f.name)

    def encode_frame(self, frame: pl.DataFrame | pl.LazyFrame, with_label: bool = True) -> pl.LazyFrame:
        """Lazy frame of encoded columns: one Int64 (or ``list[i64]``) column of ids per sparse feature, one
        Float32 per numeric feature (normalised), and ``label`` (Float32) — the Polars view of a batch."""
        lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
        schema = lf.collect_schema()
        check_columns(self.spec, schema, need_label=with_label)
        exprs = [self._encode_expr(f, schema) for f in self.spec.sparse]
        exprs += [self._dense_expr(f) for f in self.spec.dense]
        if with_label and self.spec.label is not None:
            exprs.append(pl.col(self.spec.label).cast(pl.Float32).alias("__label__"))
        return lf.select(exprs)

    # ---- Polars stage 2: rows ------------------------------------------------------------------------------
    def rows_frame(self, frame: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
        """Table rows of every sparse feature computed in Polars (no torch): encode, then each mapper's expression
        (``list[i64]`` for k > 1 rows per id and for multi-hot features). Equal to the torch mapper path."""
        enc = self.encode_frame(frame, with_label=False)
        exprs = []
        for f in self.spec.sparse:
            m = self.mappers[f.name]
            if isinstance(f, MultiHot):
                exprs.append(pl.col(f.name).list.eval(m.polars_expr("")).alias(f.name))
            else:
                exprs.append(m.polars_expr(f.name))
        return enc.select(exprs)

    # ---- tensors -------------------------------------------------------------------------------------------
    def _check_encoded(self, df: pl.DataFrame) -> None:
        for f in self.spec.dense:
            bad = df.select((~pl.col(f.name).is_finite()).fill_null(True).sum()).item()
            if bad:
                raise FeatureSpecError(f"feature {f.name!r}: column {_col(f)!r} has {bad} null/NaN/inf value(s); "
                                       "clean them or set fill_null")
        if "__label__" in df.columns:
            lab = df["__label__"]
            bad = lab.null_count() + int(((lab != 0) & (lab != 1)).fill_null(False).sum())
            if bad:
                raise FeatureSpecError(f"label column {self.spec.label!r}: {bad} value(s) are null or not 0/1")

    def tensors(self, encoded: pl.DataFrame) -> EncodedFrame:
        """An encoded (collected) frame -> :class:`EncodedFrame` (zero-copy where Polars allows)."""
        self._check_encoded(encoded)
        n = encoded.height
        values, offsets = {}, {}
        for f in self.spec.sparse:
            col = encoded[f.name]
            if isinstance(f, MultiHot):
                lens = col.list.len().fill_null(0).to_numpy().astype(np.int64)
                vals = col.explode(empty_as_null=False, keep_nulls=False).drop_nulls().to_numpy().astype(np.int64)
                off = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lens, out=off[1:])
            else:
                vals = col.to_numpy().astype(np.int64, copy=False)
                off = np.arange(n + 1, dtype=np.int64)
            values[f.name] = torch.from_numpy(np.ascontiguousarray(vals))
            offsets[f.name] = torch.from_numpy(off)
        if self.spec.dense:
            dense = torch.from_numpy(encoded.select(self.dense_names).to_numpy().astype(np.float32, copy=False)
                                     .reshape(n, len(self.spec.dense)).copy())
        else:
            dense = torch.zeros(n, 0)
        label = (torch.from_numpy(encoded["__label__"].to_numpy().astype(np.float32).copy())
                 if "__label__" in encoded.columns else None)
        return EncodedFrame(self.sparse_names, values, offsets, dense, label)

    def encode(self, frame: pl.DataFrame | pl.LazyFrame, with_label: bool = True) -> EncodedFrame:
        """Every row of ``frame`` as tensors (collects: for data larger than memory use :meth:`batches`)."""
        return self.tensors(self.encode_frame(frame, with_label).collect())

    def batches(self, source: pl.DataFrame | pl.LazyFrame | str | Path, batch_size: int = 4096,
                with_label: bool = True, chunk_rows: int | None = None) -> Iterator[Batch]:
        """Stream :class:`Batch` es in row order from a frame, a LazyFrame or a parquet path (glob): Polars
        encodes ``chunk_rows`` rows at a time (default ``16 · batch_size``), never the whole input."""
        if batch_size < 1:
            raise FeatureSpecError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(source, (str, Path)):
            source = pl.scan_parquet(source)
        lf = self.encode_frame(source, with_label)
        chunk = chunk_rows or 16 * batch_size
        carry: pl.DataFrame | None = None
        for df in lf.collect_batches(chunk_size=chunk):
            if carry is not None and carry.height:
                df = pl.concat([carry, df])
            full = df.height - df.height % batch_size
            if full:
                yield from self.tensors(df.slice(0, full)).batches(batch_size)
            carry = df.slice(full)
        if carry is not None and carry.height:
            yield from self.tensors(carry).batches(batch_size)

    # ---- save / load ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``spec.json`` + ``tensors.safetensors`` into folder ``path`` (atomically, no pickle)."""
        from safetensors.torch import save as st_save

        from recsparse.io import atomic_write

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        mappers: dict[str, dict[str, Any]] = {}
        for name, m in self.mappers.items():
            st = m.state_dict()
            scal = {}
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"mapper.{name}.{k}"] = v.contiguous()
                else:
                    scal[k] = v
            mappers[name] = scal
        for k, v in self.artifacts.items():
            tensors[f"artifact.{k}"] = v.contiguous()
        meta = {"format": "recsparse.feature_spec/1", "spec": self.spec.to_dict(), "states": self.states,
                "numeric": self.numeric, "mappers": mappers,
                "mapper_tensors": {n: [k for k in m.state_dict() if isinstance(m.state_dict()[k], torch.Tensor)]
                                   for n, m in self.mappers.items()},
                "artifacts": sorted(self.artifacts)}
        with atomic_write(path / SPEC_FILE) as f:
            f.write(json.dumps(meta, indent=1))
        with atomic_write(path / TENSOR_FILE, mode="wb") as f:
            f.write(st_save(tensors) if tensors else st_save({"_empty": torch.zeros(0)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FittedFeatureSpec":
        from safetensors.torch import load as st_load

        path = Path(path)
        for fn in (SPEC_FILE, TENSOR_FILE):
            if not (path / fn).is_file():
                raise FeatureSpecError(f"{path / fn}: missing (a fitted feature spec folder holds {SPEC_FILE} and "
                                       f"{TENSOR_FILE}; write one with FittedFeatureSpec.save)")
        try:
            meta = json.loads((path / SPEC_FILE).read_text())
        except json.JSONDecodeError as e:
            raise FeatureSpecError(f"{path / SPEC_FILE}:{e.lineno}: not valid JSON ({e.msg})") from None
        if meta.get("format") != "recsparse.feature_spec/1":
            raise FeatureSpecError(f"{path / SPEC_FILE}: not a recsparse feature spec (format {meta.get('format')!r})")
        tensors = st_load((path / TENSOR_FILE).read_bytes())
        spec = FeatureSpec.from_dict(meta["spec"])
        mappers = {}
        for name, scal in meta["mappers"].items():
            st = dict(scal)
            for k in meta["mapper_tensors"][name]:
                st[k] = tensors[f"mapper.{name}.{k}"]
            try:
                mappers[name] = mapper_from_state(st)
            except ValueError as e:
                raise FeatureSpecError(f"{path / SPEC_FILE}: mapper of feature {name!r}: {e}") from None
        arts = {k: tensors[f"artifact.{k}"] for k in meta.get("artifacts", [])}
        return cls(spec, meta["states"], mappers, meta["numeric"], arts)


# --------------------------------------------------------------------------------- Polars expression namespace
@pl.api.register_expr_namespace("recsparse")
class RecsparseExpr:
    """``pl.col("item").recsparse.rows(mapper)``: table row(s) of any id-mapper as a Polars expression (Int64, or
    ``list[i64]`` for mappers with k > 1 rows per id) — the same rows as ``mapper.transform`` in torch."""

    def __init__(self, expr: pl.Expr) -> None:
        self._expr = expr

    def rows(self, mapper: Any) -> pl.Expr:
        if not hasattr(mapper, "polars_expr"):
            raise TypeError(f"rows() needs an id-mapper (recsparse.embeddings.mappers), got {type(mapper).__name__}")
        if self._expr.meta.is_column():
            return mapper.polars_expr(self._expr.meta.output_name())
        # any other expression: evaluate the mapper on its values (pl.col("") is the element inside list.eval)
        name = self._expr.meta.output_name(raise_if_undetermined=False) or "rows"
        return self._expr.implode().list.eval(mapper.polars_expr("")).explode().alias(name)


__all__ = ["FeatureSpec", "FittedFeatureSpec", "Categorical", "MultiHot", "Numeric", "Bucketized", "Batch",
           "EncodedFrame", "FeatureSpecError", "check_columns", "SPARSE_MAPPERS"]
