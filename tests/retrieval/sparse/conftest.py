"""A small real SciFact slice with train and test judgments (every line is a real line of the shared files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import dataset_path


def scifact_slice(dest: Path, train_queries: int = 24, extra_docs: int = 60) -> Path:
    src = dataset_path("scifact")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "qrels").mkdir(exist_ok=True)
    train = (src / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    test = (src / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    tq: list[str] = []
    for r in train[1:]:
        q = r.split("\t")[0]
        if q not in tq:
            tq.append(q)
    tq = tq[:train_queries]
    keep_rows = [r for r in train[1:] if r.split("\t")[0] in tq]
    docs = {r.split("\t")[1] for r in keep_rows}
    test_rows = test[1:11]
    docs |= {r.split("\t")[1] for r in test_rows}
    with open(src / "corpus.jsonl", encoding="utf-8") as f:
        lines = f.readlines()
    kept = [x for i, x in enumerate(lines) if i < extra_docs or json.loads(x)["_id"] in docs]
    (dest / "corpus.jsonl").write_text("".join(kept), encoding="utf-8")
    qids = set(tq) | {r.split("\t")[0] for r in test_rows}
    with open(src / "queries.jsonl", encoding="utf-8") as f:
        (dest / "queries.jsonl").write_text("".join(x for x in f if json.loads(x)["_id"] in qids), encoding="utf-8")
    (dest / "qrels" / "train.tsv").write_text(train[0] + "".join(keep_rows), encoding="utf-8")
    (dest / "qrels" / "test.tsv").write_text(test[0] + "".join(test_rows), encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def scifact_small(tmp_path_factory) -> Path:
    return scifact_slice(tmp_path_factory.mktemp("scifact") / "scifact-small")


@pytest.fixture(scope="session")
def tiny_model():
    """Siamese SPLADE on the shipped splade-tiny (a sentence-transformers SparseEncoder); do not mutate."""
    from recsparse.retrieval.sparse.models import splade_model

    return splade_model("splade-tiny")


@pytest.fixture()
def inference_free_model():
    """A fresh inference-free splade-tiny per test (tests change its IDF table)."""
    from recsparse.retrieval.sparse.models import inference_free_model

    return inference_free_model("splade-tiny")
