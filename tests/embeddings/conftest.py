"""Shared fixtures: the real Gowalla training split (loaded once per session)."""

from __future__ import annotations

import pytest

from tests.conftest import dataset_path


@pytest.fixture(scope="session")
def gowalla():
    from recsparse.data import load

    dataset_path("gowalla")  # skips with a reason when the shared data is missing
    return load("gowalla")


@pytest.fixture(scope="session")
def gowalla_slice(gowalla):
    """The first 2,000 users' training interactions (a real sub-graph, fast to cluster)."""
    import polars as pl

    return gowalla.train.filter(pl.col("user_id") < 2000)
