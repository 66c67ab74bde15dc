"""JsonVectorCollection -> Lucene impact index (Anserini via Pyserini) -> search with integer query weights."""

from __future__ import annotations

import json

import pytest

from recsparse.retrieval.sparse.impact import (ImpactRetriever, collection_stats, flops_estimate,
                                               read_json_vector_collection, write_json_vector_collection)

DOCS = {"d0": {"cell": 120, "growth": 30}, "d1": {"cell": 10, "tumor": 200, "##s": 5}, "d2": {"plasma": 77}}


def test_collection_format(tmp_path):
    p = write_json_vector_collection(tmp_path / "c", list(DOCS), list(DOCS.values()))
    first = json.loads(p.read_text().splitlines()[0])
    assert first == {"id": "d0", "contents": "", "vector": {"cell": 120, "growth": 30}}
    assert read_json_vector_collection(tmp_path / "c") == (list(DOCS), list(DOCS.values()))
    with pytest.raises(ValueError, match="non-negative ints"):
        write_json_vector_collection(tmp_path / "bad", ["x"], [{"a": 1.5}])


def test_lucene_accepts_collection_and_scores_are_exact_dot_products(tmp_path, tiny_model):
    r = ImpactRetriever(tiny_model, name="t")
    r.write(tmp_path / "idx", list(DOCS), list(DOCS.values()))
    assert r.meta["counters"]["indexed"] == 3 and r.meta["postings"] == 6 and r.meta["index_bytes"] > 0
    hits = r.search_vector({"cell": 3, "tumor": 1}, k=10)
    # d0: 3*120 = 360; d1: 3*10 + 200 = 230; d2 shares no term
    assert [(h.docid, h.score) for h in hits] == [("d0", 360.0), ("d1", 230.0)]
    assert r.search_vector({"##s": 2}, 5)[0].docid == "d1"  # word pieces are indexed verbatim (pretokenized)
    from recsparse.retrieval.sparse import open_retriever

    again = open_retriever(tmp_path / "idx")
    assert [(h.docid, h.score) for h in again.search_vector({"cell": 3, "tumor": 1}, 10)] == [("d0", 360.0),
                                                                                              ("d1", 230.0)]
    run = again.batch_search({"q1": "plasma", "q2": "[SEP]"}, k=3)
    assert set(run) == {"q1", "q2"} and run["q2"] == []  # a query with no weighted term returns nothing
    again.close()
    r.close()


def test_stats_and_flops_hand_computed():
    s = collection_stats(list(DOCS.values()))
    assert s == {"documents": 3, "postings": 6, "terms": 5, "avg_doc_nnz": 2.0}
    # P_q(cell) = 1, P_q(plasma) = 1/2; P_d(cell) = 2/3, P_d(plasma) = 1/3 -> 2/3 + 1/6
    assert flops_estimate([{"cell": 1}, {"cell": 2, "plasma": 1}], list(DOCS.values())) == pytest.approx(5 / 6)


def test_open_names_the_missing_metadata(tmp_path):
    from recsparse.io import INDEX_META
    from recsparse.retrieval.sparse.impact import ImpactRetriever

    from recsparse.retrieval.sparse.models import ModelError

    with pytest.raises(ModelError, match=INDEX_META):
        ImpactRetriever.open(tmp_path)


def test_folded_idf_index_gives_the_same_integer_scores_as_query_weights(scifact_small, tmp_path,
                                                                          inference_free_model):
    from recsparse.data import load

    ds = load(scifact_small)
    queries = dict(list(ds.split_queries("test").items())[:6])
    plain = ImpactRetriever(inference_free_model, name="plain", fold_idf=False, progress=False)
    plain.index(ds.corpus, tmp_path / "plain")
    folded = ImpactRetriever(inference_free_model, name="folded", progress=False)
    folded.index(ds.corpus, tmp_path / "folded")
    assert not plain.folded and folded.folded and folded.meta["query_weights_folded"]
    _, pv = read_json_vector_collection(tmp_path / "plain" / "collection")
    _, fv = read_json_vector_collection(tmp_path / "folded" / "collection")
    q = folded._query_ints()
    assert fv[0] == {t: v * q[t] for t, v in pv[0].items() if t in q}  # d'_t = q_t * d_t
    for text in queries.values():
        a, b = plain.search(text, 20), folded.search(text, 20)
        assert [(h.docid, h.score) for h in a] == [(h.docid, h.score) for h in b] and a
    assert plain.batch_search(queries, k=20) == folded.batch_search(queries, k=20)
    again = ImpactRetriever.open(tmp_path / "folded")
    assert again.folded and again.batch_search(queries, k=20) == folded.batch_search(queries, k=20)
    for r in (plain, folded, again):
        r.close()
