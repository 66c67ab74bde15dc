"""Real-data slices for the retrieval tests: BEIR-format folders cut from the shared Cranfield / SciFact files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import dataset_path


def beir_slice(src: Path, dest: Path, num_docs: int, num_queries: int | None = None) -> Path:
    """First ``num_docs`` documents of ``src``; its queries (first ``num_queries``) and the qrels rows of those
    queries that judge a kept document. Every line is a real line of the source files."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "qrels").mkdir(exist_ok=True)
    with open(src / "corpus.jsonl", encoding="utf-8") as f:
        lines = [next(f) for _ in range(num_docs)]
    (dest / "corpus.jsonl").write_text("".join(lines), encoding="utf-8")
    docs = {json.loads(x)["_id"] for x in lines}
    with open(src / "queries.jsonl", encoding="utf-8") as f:
        qlines = f.readlines()
    qlines = qlines[:num_queries] if num_queries else qlines
    qids = {json.loads(x)["_id"] for x in qlines}
    (dest / "queries.jsonl").write_text("".join(qlines), encoding="utf-8")
    for qf in sorted((src / "qrels").glob("*.tsv")):
        rows = qf.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [r for r in rows[1:] if r.split("\t")[0] in qids and r.split("\t")[1] in docs]
        (dest / "qrels" / qf.name).write_text(rows[0] + "".join(kept), encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def cranfield_small(tmp_path_factory) -> Path:
    """Cranfield: 200 documents, the 225 queries, test qrels restricted to those documents."""
    return beir_slice(dataset_path("cranfield"), tmp_path_factory.mktemp("cran") / "cranfield-200", 200)


@pytest.fixture(scope="session")
def cranfield_tiny(tmp_path_factory) -> Path:
    """Cranfield: 60 documents and the first 40 queries (dense tests encode this in a few seconds)."""
    return beir_slice(dataset_path("cranfield"), tmp_path_factory.mktemp("crant") / "cranfield-60", 60, 40)
