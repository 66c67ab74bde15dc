"""The retriever contract and the index-metadata schema: round trip, old files, corpus checks, dispatch by kind."""

from __future__ import annotations

import json

import pytest

from recsparse.errors import UserError
from recsparse.io import INDEX_META
from recsparse.retrieval.base import (CorpusMismatchError, IndexMeta, IndexMetaError, IndexNotFoundError, Retriever,
                                      check_corpus, open_index, safe_name)


def test_index_meta_round_trip_is_flat_json(tmp_path):
    m = IndexMeta(kind="bm25", corpus_sha="abc", num_docs=3, build_s=1.5, config={"k1": 0.9},
                  info={"counters": {"indexed": 3}})
    m.save(tmp_path)
    on_disk = json.loads((tmp_path / INDEX_META).read_text())
    assert on_disk["kind"] == "bm25" and on_disk["counters"] == {"indexed": 3} and on_disk["schema"] == 1
    assert IndexMeta.read(tmp_path) == m
    assert m.matches("bm25", "abc", {"k1": 0.9}) and not m.matches("bm25", "abd", {"k1": 0.9})
    with pytest.raises(ValueError, match="redefine"):
        IndexMeta(kind="x", corpus_sha=None, info={"kind": "y"}).to_dict()


def test_old_impact_metadata_reads_without_fingerprint(tmp_path):
    """An impact index written before the schema (no corpus_sha, ``documents`` for the count) still opens; the
    harness can only warn that it cannot check the corpus."""
    (tmp_path / INDEX_META).write_text(json.dumps({"kind": "sparse-impact", "name": "s", "scale": 100.0,
                                                   "documents": 7, "build_s": 2.0}))
    m = IndexMeta.require(tmp_path, kind="sparse-impact")
    assert m.corpus_sha is None and m.num_docs == 7 and m.info["scale"] == 100.0 and m.schema == 0
    with pytest.warns(UserWarning, match="no corpus fingerprint"):
        check_corpus("s", m, "f" * 16, "some/folder", tmp_path)


def test_corpus_mismatch_and_bad_metadata_are_user_errors(tmp_path):
    m = IndexMeta(kind="dense", corpus_sha="a" * 16)
    check_corpus("d", m, "a" * 16, "c", tmp_path)  # same corpus: fine
    with pytest.raises(CorpusMismatchError, match="built from another corpus") as e:
        check_corpus("d", m, "b" * 16, "c", tmp_path)
    assert isinstance(e.value, UserError)
    with pytest.raises(IndexNotFoundError, match="no index folder"):
        open_index(tmp_path / "nope")
    with pytest.raises(IndexNotFoundError, match=INDEX_META):
        open_index(tmp_path)
    (tmp_path / INDEX_META).write_text("{not json")
    with pytest.raises(IndexMetaError, match="unreadable"):
        IndexMeta.read(tmp_path)
    (tmp_path / INDEX_META).write_text(json.dumps({"kind": "colbert"}))
    with pytest.raises(IndexMetaError, match="unknown index kind 'colbert'"):
        open_index(tmp_path)
    with pytest.raises(IndexMetaError, match="not 'dense'"):
        IndexMeta.require(tmp_path, kind="dense")


def test_contract_is_enforced_and_names_are_file_safe():
    class Half(Retriever):
        name = "half"

        def search(self, query, k=10):
            return []

    with pytest.raises(TypeError, match="abstract"):
        Half()
    assert safe_name("sparse:/a/b c") == "sparse_a_b_c" and safe_name("::") == "retriever"
