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

    from recsparse.retrieval.base import IndexNotFoundError

    with pytest.raises(IndexNotFoundError, match=INDEX_META):
        ImpactRetriever.open(tmp_path)


def test_fold_query_weights_hand_computed():
    from recsparse.retrieval.sparse.quantize import fold_query_weights

    docs = [{"cell": 120, "growth": 30, "the": 3}, {"tumor": 200}]
    # cell 120 * 250 / 100 = 300; growth 30 * 5 / 100 = 1.5 -> 2; the: no query weight -> dropped; tumor 1 -> 2
    assert fold_query_weights(docs, {"cell": 250, "growth": 5, "tumor": 1}) == [{"cell": 300, "growth": 2},
                                                                                 {"tumor": 2}]


def test_folded_idf_index_ranks_like_query_weights(scifact_small, tmp_path, inference_free_model):
    from recsparse.data import load

    ds = load(scifact_small)
    queries = dict(list(ds.split_queries("test").items())[:6])
    plain = ImpactRetriever(inference_free_model, name="plain", progress=False)
    plain.index(ds.corpus, tmp_path / "plain")
    folded = ImpactRetriever(inference_free_model, name="folded", fold_idf=True, progress=False)
    folded.index(ds.corpus, tmp_path / "folded")
    assert not plain.folded and folded.folded and folded.meta["query_weights_folded"]
    _, pv = read_json_vector_collection(tmp_path / "plain" / "collection")
    _, fv = read_json_vector_collection(tmp_path / "folded" / "collection")
    q = folded._query_ints()
    assert fv[0] == {t: p for t, v in pv[0].items() if t in q and (p := round(v * q[t] / 100)) > 0}
    for text in queries.values():
        a, b = plain.search(text, 10), folded.search(text, 10)
        assert a and len(b) == len(a)
        # folded score = plain score / scale up to one rounding (<= 0.5) per query term
        nq = len(plain.query_vectors([text])[0])
        fs = {x.docid: x.score for x in b}
        for h in a:
            if h.docid in fs:
                assert abs(fs[h.docid] - h.score / 100) <= 0.5 * nq
        assert len({h.docid for h in a[:5]} & {h.docid for h in b}) >= 4
    assert folded.batch_search(queries, k=10) == {qid: folded.search(t, 10) for qid, t in queries.items()}
    again = ImpactRetriever.open(tmp_path / "folded")
    assert again.folded and again.batch_search(queries, k=10) == folded.batch_search(queries, k=10)
    for r in (plain, folded, again):
        r.close()
