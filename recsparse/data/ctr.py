"""CTR datasets: train/valid/test frames + the default feature spec, read through the data registry.

=================  ==========================================================================================
``ml-100k-ctr``    MovieLens 100K ratings as clicks: label = rating >= 4. Features: user id, item id, age bucket,
                   gender, occupation, zip prefix, genres (multi-hot), release year (bucketised, nulls own
                   bucket), hour and weekday of the timestamp. Split (:data:`ML100K_SPLIT`): all ratings sorted by
                   ``(timestamp, user_id, item_id)``; the first ``floor(0.8 n)`` rows train, the next
                   ``floor(0.9 n) - floor(0.8 n)`` validate, the rest test (time-ordered, global).
``adult``          UCI Adult, the standard split (``adult.train.csv`` / ``adult.test.csv``); label
                   ``income == ">50K"``; 8 categorical + 6 numeric fields; validation = the LAST 10 % of the
                   train file (file order), training = the first 90 %.
``criteo``         Criteo Kaggle display-advertising ``train.txt`` (label, I1–I13, C1–C26, tab-separated, no
                   header): registry entry + streaming loader (:func:`scan_criteo`); split = BARS Criteo_x1.
``avazu``          Avazu CTR ``train.gz`` (CSV with header): registry entry + loader (:func:`scan_avazu`).
``frappe_x1``,     BARS splits (``train.csv``, ``valid.csv``, ``test.csv`` with a header): registry entries +
``criteo_x1``      loader (:func:`scan_bars`).
=================  ==========================================================================================

:func:`load_ctr(name)` -> :class:`CTRDataset` (Polars frames + :class:`~recsparse.embeddings.features.FeatureSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import polars as pl

from recsparse.data.errors import DataFormatError
from recsparse.data.registry import dataset_dir
from recsparse.embeddings.features import Bucketized, Categorical, FeatureSpec, MultiHot, Numeric

ML100K_SPLIT = ("time-ordered 80/10/10: all ratings sorted by (timestamp, user_id, item_id); rows [0, floor(.8n)) "
                "train, [floor(.8n), floor(.9n)) valid, the rest test; label = rating >= 4")
ADULT_SPLIT = ("UCI standard split: adult.train.csv -> train (first 90 % of rows, file order) + valid (last 10 %); "
               "adult.test.csv -> test; label = income == '>50K'")
CRITEO_COLUMNS = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
AVAZU_CATEGORICAL = ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
                     "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
                     *[f"C{i}" for i in range(14, 22)]]
FRAPPE_COLUMNS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]


@dataclass
class CTRDataset:
    """``train``/``valid``/``test`` frames (features + a 0/1 ``label``), the default ``spec`` and the split rule."""

    name: str
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    spec: FeatureSpec
    split_rule: str

    file_counts: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        """Split sizes, training positive rate, and the counts of the source files (what the registry checks)."""
        return {"train": self.train.height, "valid": self.valid.height, "test": self.test.height,
                "positive_rate_train": round(float(self.train["label"].mean()), 4), **self.file_counts}


# -------------------------------------------------------------------------------------------------- ml-100k
def ml100k_spec(mapper: str = "full", **kw: Any) -> FeatureSpec:
    """The ml-100k CTR features (ten, as listed in the module docstring); ``mapper`` for every sparse feature."""
    cats = ["user_id", "item_id", "age_bucket", "gender", "occupation", "zip_prefix", "hour", "weekday"]
    feats: list[Any] = [Categorical(c, mapper=mapper) for c in cats]
    feats.append(MultiHot("genres", mapper=mapper, pooling="mean"))
    feats.append(Bucketized("release_year", boundaries=[1940, 1960, 1970, 1980, 1985, 1990, 1993, 1995, 1996,
                                                         1997, 1998], mapper=mapper))
    return FeatureSpec(feats, label="label", **kw)


def load_ml100k_ctr() -> CTRDataset:
    from recsparse.data import load
    from recsparse.data.movielens import rating_frame

    ds = load("ml-100k")
    f = rating_frame(ds).with_columns((pl.col("rating") >= 4).cast(pl.Int8).alias("label"))
    f = f.sort(["timestamp", "user_id", "item_id"])
    n = f.height
    a, b = int(0.8 * n), int(0.9 * n)
    return CTRDataset("ml-100k-ctr", f.slice(0, a), f.slice(a, b - a), f.slice(b), ml100k_spec(), ML100K_SPLIT)


# ---------------------------------------------------------------------------------------------------- adult
ADULT_CATEGORICAL = ["workclass", "education", "marital-status", "occupation", "relationship", "race", "gender",
                     "native-country"]
ADULT_NUMERIC = ["age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week"]


def adult_spec(mapper: str = "full", **kw: Any) -> FeatureSpec:
    """8 categorical fields (``?`` is its own value) + 6 standardised numeric ones (capital gain/loss in log1p)."""
    feats: list[Any] = [Categorical(c, mapper=mapper) for c in ADULT_CATEGORICAL]
    feats += [Numeric(c, log=c in ("capital-gain", "capital-loss", "fnlwgt")) for c in ADULT_NUMERIC]
    return FeatureSpec(feats, label="label", **kw)


def read_adult(path: str | Path) -> pl.DataFrame:
    """One adult CSV file -> frame with a 0/1 ``label``; a wrong header or label value names the file/line."""
    path = Path(path)
    want = [*ADULT_NUMERIC[:1], "workclass", "fnlwgt", "education", "educational-num", "marital-status",
            "occupation", "relationship", "race", "gender", "capital-gain", "capital-loss", "hours-per-week",
            "native-country", "income"]
    try:
        df = pl.read_csv(path, schema_overrides={c: pl.Int64 for c in ADULT_NUMERIC})
    except pl.exceptions.PolarsError as e:
        raise DataFormatError(path, None, f"not a valid adult CSV ({str(e).splitlines()[0]})") from None
    if df.columns != want:
        raise DataFormatError(path, 1, f"header must be {','.join(want)}")
    inc = df["income"].str.strip_chars().str.strip_chars_end(".")
    bad = (~inc.is_in(["<=50K", ">50K"])).arg_true()
    if bad.len():
        i = int(bad[0])
        raise DataFormatError(path, i + 2, f"income must be '<=50K' or '>50K', got {df['income'][i]!r}")
    return df.with_columns((inc == ">50K").cast(pl.Int8).alias("label"))


def load_adult() -> CTRDataset:
    d = dataset_dir("adult")
    train_full = read_adult(d / "adult.train.csv")
    test = read_adult(d / "adult.test.csv")
    n_val = train_full.height // 10
    cut = train_full.height - n_val
    files = {"train_rows": train_full.height, "test_rows": test.height,
             "train_positive": int(train_full["label"].sum()), "test_positive": int(test["label"].sum())}
    return CTRDataset("adult", train_full.slice(0, cut), train_full.slice(cut), test, adult_spec(), ADULT_SPLIT,
                      files)


# ---------------------------------------------------------------------------- large public sets (stream)
def criteo_spec(mapper: str = "full", min_count: int = 10, **kw: Any) -> FeatureSpec:
    """Criteo: 13 counts as log1p-standardised numbers (missing -> 0), 26 hex categorical ids (no vocabulary
    needed to hash; ``full`` keeps ids seen ``min_count`` times, the usual BARS cut-off)."""
    feats: list[Any] = [Numeric(f"I{i}", log=True, fill_null=0.0) for i in range(1, 14)]
    feats += [Categorical(f"C{i}", encode="hex", mapper=mapper, min_count=min_count) for i in range(1, 27)]
    return FeatureSpec(feats, label="label", **kw)


def scan_criteo(path: str | Path) -> pl.LazyFrame:
    """Criteo Kaggle ``train.txt`` (label, 13 ints, 26 hex strings; tab-separated, no header; empty = missing)."""
    schema = {"label": pl.Int8, **{f"I{i}": pl.Int64 for i in range(1, 14)},
              **{f"C{i}": pl.Utf8 for i in range(1, 27)}}
    return pl.scan_csv(path, separator="\t", has_header=False, schema=schema, quote_char=None)


def avazu_spec(mapper: str = "full", min_count: int = 2, **kw: Any) -> FeatureSpec:
    feats: list[Any] = [Categorical(c, mapper=mapper, min_count=min_count) for c in AVAZU_CATEGORICAL]
    feats += [Categorical("hour_of_day", mapper=mapper), Categorical("weekday", mapper=mapper)]
    return FeatureSpec(feats, label="label", **kw)


def scan_avazu(path: str | Path) -> pl.LazyFrame:
    """Avazu ``train(.gz)``: CSV with header ``id,click,hour,...``; ``hour`` is YYMMDDHH -> ``hour_of_day``,
    ``weekday``; ``click`` -> ``label``. Every id column is read as a string (the device ids are hex)."""
    lf = pl.scan_csv(path, infer_schema=False)
    hour = (pl.col("hour") + "00").str.to_datetime("%y%m%d%H%M", strict=True)
    return lf.with_columns(pl.col("click").cast(pl.Int8).alias("label"), hour.dt.hour().cast(pl.Int64).alias(
        "hour_of_day"), (hour.dt.weekday() - 1).cast(pl.Int64).alias("weekday"))


def frappe_spec(mapper: str = "full", **kw: Any) -> FeatureSpec:
    return FeatureSpec([Categorical(c, mapper=mapper) for c in FRAPPE_COLUMNS], label="label", **kw)


def scan_bars(path: str | Path) -> pl.LazyFrame:
    """A BARS split file (``label`` + feature columns, CSV with header; types inferred: Frappe's context fields are
    strings, Criteo_x1's counts numbers and its categorical ids hex strings)."""
    return pl.scan_csv(path, infer_schema_length=10_000).with_columns(pl.col("label").cast(pl.Int8))


_STREAMED: dict[str, tuple[Callable[[str | Path], pl.LazyFrame], dict[str, str], Callable[..., FeatureSpec], str]] = {
    "criteo": (scan_criteo, {"train": "train.txt"}, criteo_spec,
               "train.txt only; split it like BARS Criteo_x1 (random 8:1:1, seed 2018) or use criteo_x1"),
    "avazu": (scan_avazu, {"train": "train.gz"}, avazu_spec,
              "train.gz only; split by day (the last day as test) or use the BARS Avazu_x1 split"),
    "frappe_x1": (scan_bars, {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}, frappe_spec,
                  "BARS Frappe_x1 (7:2:1 random split of the 288,609 Frappe rows) as published"),
    "criteo_x1": (scan_bars, {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}, criteo_spec,
                  "BARS Criteo_x1 (7:2:1 random split of Kaggle train.txt) as published"),
}


def scan_ctr(name: str, part: str = "train", folder: str | Path | None = None) -> pl.LazyFrame:
    """Lazy frame of one part of a large registered CTR set (never collected here: stream it with
    ``FittedFeatureSpec.batches``). ``folder`` overrides the registry location (tests, custom copies)."""
    if name not in _STREAMED:
        raise KeyError(f"unknown streamed CTR dataset {name!r}; known: {sorted(_STREAMED)}")
    scan, files, _, _ = _STREAMED[name]
    if part not in files:
        raise KeyError(f"{name} has parts {sorted(files)}, not {part!r}")
    d = Path(folder) if folder is not None else dataset_dir(name)
    return scan(d / files[part])


def default_spec(name: str, mapper: str = "full", **kw: Any) -> FeatureSpec:
    builders: dict[str, Callable[..., FeatureSpec]] = {"ml-100k-ctr": ml100k_spec, "adult": adult_spec,
                                                       **{k: v[2] for k, v in _STREAMED.items()}}
    if name not in builders:
        raise KeyError(f"unknown CTR dataset {name!r}; known: {sorted(builders)}")
    return builders[name](mapper=mapper, **kw)


CTR_DATASETS: dict[str, Callable[[], CTRDataset]] = {"ml-100k-ctr": load_ml100k_ctr, "adult": load_adult}


def load_ctr(name: str, spec: FeatureSpec | None = None) -> CTRDataset:
    """An in-memory CTR dataset by name (``ml-100k-ctr``, ``adult``), optionally with another feature spec."""
    if name not in CTR_DATASETS:
        hint = f" ({name} is large: stream it with scan_ctr)" if name in _STREAMED else ""
        raise KeyError(f"unknown CTR dataset {name!r}; in-memory sets: {sorted(CTR_DATASETS)}{hint}")
    ds = CTR_DATASETS[name]()
    return replace(ds, spec=spec) if spec is not None else ds
