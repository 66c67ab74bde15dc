"""Real-data fixtures for pipeline tests: Gowalla and MovieLens-100K from RECSPARSE_DATA."""

from __future__ import annotations

import pytest

from tests.conftest import dataset_path


@pytest.fixture(scope="session")
def gowalla():
    from recsparse.data import load

    dataset_path("gowalla")
    return load("gowalla")


@pytest.fixture(scope="session")
def ml100k_path():
    return dataset_path("ml-100k")


@pytest.fixture(scope="session")
def gowalla_small(gowalla, tmp_path_factory):
    """A LightGCN-format folder with Gowalla's first 150 users (train and test lines kept as published; items
    renumbered densely) — a real slice the whole pipeline can train on in seconds."""
    import polars as pl

    tr = gowalla.train.filter(pl.col("user_id") < 150)
    te = gowalla.test.filter(pl.col("user_id") < 150)
    items = pl.concat([tr["item_id"], te["item_id"]]).unique().sort()
    remap = dict(zip(items.to_list(), range(items.len())))
    d = tmp_path_factory.mktemp("gowalla150")
    for name, f in (("train.txt", tr), ("test.txt", te)):
        g = f.with_columns(pl.col("item_id").replace_strict(remap, return_dtype=pl.Int64)) \
            .group_by("user_id", maintain_order=True).agg("item_id")
        with open(d / name, "w") as out:
            for u, its in g.iter_rows():
                out.write(" ".join(map(str, [u, *its])) + "\n")
    return d
