"""Loaders on the real shared datasets: counts from the data README, schema, and format detection."""

from __future__ import annotations

import polars as pl
import pytest

from recsparse.data import REGISTRY, detect_format, get_spec, load, load_beir, verify_checksums
from tests.conftest import dataset_path


def test_gowalla_counts_and_schema():
    dataset_path("gowalla")
    ds = load("gowalla")
    assert ds.counts() == {"users": 29_858, "items": 40_981, "train_interactions": 810_128,
                           "test_interactions": 217_242}
    assert ds.train.schema == pl.Schema({"user_id": pl.Int64, "item_id": pl.Int64})
    # every user has at least one test item (data README)
    assert ds.test["user_id"].n_unique() == 29_858
    assert ds.train["item_id"].max() < ds.num_items


def test_ml100k_counts_and_side_features():
    dataset_path("ml-100k")
    ds = load("ml-100k")
    assert ds.counts() == {"ratings": 100_000, "users": 943, "items": 1_682}
    assert ds.inter["rating"].dtype == pl.Float64 and set(ds.inter["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ds.user.height == 943 and ds.item.height == 1_682
    assert ds.item.schema["class"] == pl.List(pl.Utf8)
    toy = ds.item.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy["class"] == ["Animation", "Children's", "Comedy"]


@pytest.mark.parametrize("name,docs,queries,test_q", [("scifact", 5_183, 1_109, 300), ("cranfield", 1_400, 225, 225),
                                                      ("nfcorpus", 3_633, 3_237, 323)])
def test_beir_counts(name, docs, queries, test_q):
    dataset_path(name)
    ds = load(name)
    assert ds.counts() == {"documents": docs, "queries": queries, "test_queries": test_q}
    assert len(ds.split_queries("test")) == test_q


def test_scifact_train_split_and_qrels_dict():
    ds = load_beir(dataset_path("scifact"))
    assert ds.qrels_for("train")["query_id"].n_unique() == 809
    qd = ds.qrels_dict("test")
    assert len(qd) == 300 and sum(len(v) for v in qd.values()) == 339
    with pytest.raises(KeyError, match="no qrels split 'dev'"):
        ds.qrels_for("dev")


def test_nfcorpus_splits_match_the_data_readme():
    """NFCorpus is registered with its three BEIR splits (queries / qrels rows from the shared data README)."""
    dataset_path("nfcorpus")
    ds = load("nfcorpus")
    spec = get_spec("nfcorpus")
    assert spec.archive and spec.archive.endswith("/nfcorpus.zip") and set(spec.files) >= {
        "qrels/train.tsv", "qrels/dev.tsv", "qrels/test.tsv"}
    assert {s: (q["query_id"].n_unique(), q.height) for s, q in ds.qrels.items()} == {
        "train": (2_590, 110_575), "dev": (324, 11_385), "test": (323, 12_334)}
    assert spec.reference["bm25:ndcg@10"] == 0.3218 and spec.reference["dense:ndcg@10"] == 0.3159


def test_checksums_match_registry():
    from tests.conftest import DATA

    present = [name for name in REGISTRY if (DATA / name).is_dir()]  # large CTR sets are not in the shared data
    if not present:
        pytest.skip(f"no registered dataset under RECSPARSE_DATA={DATA}")
    for name in present:
        verify_checksums(get_spec(name))


def test_detect_format(tmp_path):
    assert detect_format(dataset_path("scifact")) == "beir"
    assert detect_format(dataset_path("gowalla")) == "lightgcn"
    assert detect_format(dataset_path("ml-100k")) == "recbole"
    with pytest.raises(ValueError, match=str(tmp_path)):
        detect_format(tmp_path)


def test_load_folder_by_path():
    ds = load(str(dataset_path("cranfield")))
    assert ds.corpus.height == 1_400
