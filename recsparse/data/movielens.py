"""MovieLens featurisation: what a MovieLens user or movie *is*, independent of the model that consumes it.

Used by the two-tower split (:func:`recsparse.pipelines.data.build_split`) and by the ml-100k CTR view
(:func:`recsparse.data.ctr.load_ctr`), so both read the same features:

* users: ``age_bucket`` (the MovieLens-1M age groups 1, 18, 25, 35, 45, 50, 56), ``gender``, ``occupation``,
  ``zip_prefix`` (first three characters of the zip code; non-US codes keep their own prefix);
* items: ``genres`` (list of genre tokens), ``release_year`` (Int64, null when unknown), ``year_bucket``
  (half-decade as a string, ``"unknown"`` when missing);
* ratings: ``hour`` and ``weekday`` (0 = Monday) of the UTC timestamp.

Models own their normalisation (vocabularies, scaling): these functions only derive raw columns.
"""

from __future__ import annotations

import polars as pl

AGE_GROUPS = (56, 50, 45, 35, 25, 18)  # MovieLens-1M: the group is the largest lower bound <= age; below 18 -> "1"


def age_bucket(age: pl.Expr) -> pl.Expr:
    """Age (string or int column) -> MovieLens-1M age group as a string; unparsable -> ``"unknown"``."""
    a = age.cast(pl.Utf8).str.strip_chars().cast(pl.Int64, strict=False)
    expr = pl.when(a.is_null()).then(pl.lit("unknown"))
    for lo in AGE_GROUPS:
        expr = expr.when(a >= lo).then(pl.lit(str(lo)))
    return expr.otherwise(pl.lit("1"))


def release_year(year: pl.Expr) -> pl.Expr:
    """Release-year token -> Int64 (null when empty or unparsable)."""
    return year.cast(pl.Utf8).str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)


def year_bucket(year: pl.Expr) -> pl.Expr:
    """Release year -> half-decade string (``"1995"`` for 1995–1999); ``"unknown"`` when missing."""
    y = release_year(year)
    return pl.when(y.is_null()).then(pl.lit("unknown")).otherwise((y // 5 * 5).cast(pl.Utf8))


def user_features(user: pl.DataFrame) -> pl.DataFrame:
    """``.user`` frame -> ``user_id, age_bucket, gender, occupation, zip_prefix`` (missing source columns skipped)."""
    cols = [pl.col("user_id")]
    if "age" in user.columns:
        cols.append(age_bucket(pl.col("age")).alias("age_bucket"))
    for c in ("gender", "occupation"):
        if c in user.columns:
            cols.append(pl.col(c))
    if "zip_code" in user.columns:
        cols.append(pl.col("zip_code").str.slice(0, 3).alias("zip_prefix"))
    return user.select(cols)


def item_features(item: pl.DataFrame) -> pl.DataFrame:
    """``.item`` frame -> ``item_id, genres, release_year, year_bucket`` (missing source columns skipped)."""
    cols = [pl.col("item_id")]
    if "class" in item.columns:
        cols.append(pl.col("class").alias("genres"))
    if "release_year" in item.columns:
        cols += [release_year(pl.col("release_year")).alias("release_year"),
                 year_bucket(pl.col("release_year")).alias("year_bucket")]
    return item.select(cols)


def rating_frame(ds: object) -> pl.DataFrame:
    """One row per rating of an :class:`~recsparse.data.AtomicDataset` with every user/item feature joined and
    ``hour``/``weekday`` of the timestamp: ``user_id, item_id, rating, timestamp, hour, weekday, <user features>,
    <item features>``. Ratings of users/items absent from the side files keep nulls there."""
    inter = ds.inter  # type: ignore[attr-defined]
    if "timestamp" not in inter.columns:
        raise ValueError(f"{ds.name}: the CTR view needs a timestamp column")  # type: ignore[attr-defined]
    ts = pl.from_epoch(pl.col("timestamp").cast(pl.Int64), time_unit="s")
    f = inter.with_columns(pl.col("timestamp").cast(pl.Int64), ts.dt.hour().cast(pl.Int64).alias("hour"),
                           (ts.dt.weekday() - 1).cast(pl.Int64).alias("weekday"))
    if ds.user is not None:  # type: ignore[attr-defined]
        f = f.join(user_features(ds.user), on="user_id", how="left")  # type: ignore[attr-defined]
    if ds.item is not None:  # type: ignore[attr-defined]
        f = f.join(item_features(ds.item), on="item_id", how="left")  # type: ignore[attr-defined]
    return f
