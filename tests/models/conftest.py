"""Real-data fixtures: a small Gowalla sub-graph (its first users, items remapped densely)."""

from __future__ import annotations

import pytest

from tests.conftest import dataset_path


@pytest.fixture(scope="session")
def gowalla():
    from recsparse.data import load

    dataset_path("gowalla")
    return load("gowalla")


@pytest.fixture(scope="session")
def tiny_graph(gowalla):
    """First 40 users' training edges with their items renumbered 0..I-1: (frame, num_users, num_items)."""
    import polars as pl

    f = gowalla.train.filter(pl.col("user_id") < 40)
    items = f["item_id"].unique().sort()
    f = f.with_columns(pl.col("item_id").replace_strict(items, pl.Series(range(items.len())), return_dtype=pl.Int64))
    return f, 40, items.len()
