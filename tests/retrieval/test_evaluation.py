"""Evaluation: our keys give the numbers of ir_measures and pytrec_eval; missing queries score 0; self hits; TREC."""

from __future__ import annotations

import math

import pytest

from recsparse.data import DataFormatError, load
from recsparse.retrieval.evaluation import (DEFAULT_MEASURES, drop_self, evaluate, read_trec_run, to_ir_measure,
                                            write_trec_run)
from recsparse.types import Hit
from tests.conftest import dataset_path


@pytest.fixture(scope="module")
def tiny():
    """Three real SciFact test queries with their real qrels, and a run over real SciFact doc ids where the
    relevant documents sit at hand-chosen ranks."""
    ds = load(dataset_path("scifact"))
    qrels_all = ds.qrels_dict("test")
    qids = sorted(qrels_all)[:3]
    qrels = {q: qrels_all[q] for q in qids}
    others = [d for d in ds.corpus["_id"].to_list()[:200] if not any(d in qrels[q] for q in qids)]
    run = {}
    rel_rank = {qids[0]: 1, qids[1]: 3, qids[2]: 12}  # 12: outside the top 10
    for i, q in enumerate(qids):
        docs = others[i * 20:(i + 1) * 20]
        rel = sorted(qrels[q])
        docs.insert(rel_rank[q] - 1, rel[0])
        run[q] = [Hit(d, 100.0 - r) for r, d in enumerate(docs)]
    return qrels, run, rel_rank


def test_keys_map_to_ir_measures():
    assert [str(to_ir_measure(m)) for m in DEFAULT_MEASURES] == ["nDCG@10", "R@100", "RR@10", "AP@100"]
    with pytest.raises(ValueError, match="bleu"):
        to_ir_measure("bleu@4")


def test_equals_ir_measures_and_pytrec_eval(tiny):
    import ir_measures
    import pytrec_eval

    qrels, run, _ = tiny
    agg, pq = evaluate(run, qrels, per_query=True)
    ir_run = {q: {h.docid: h.score for h in hits} for q, hits in run.items()}
    lib = ir_measures.calc_aggregate([to_ir_measure(m) for m in DEFAULT_MEASURES], qrels, ir_run)
    assert agg == pytest.approx({m: lib[to_ir_measure(m)] for m in DEFAULT_MEASURES}, abs=1e-12)
    # an independent route: pytrec_eval (trec_eval's C code) per query
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "recip_rank", "map_cut.100"})
    ref = ev.evaluate(ir_run)
    for q in qrels:
        assert pq[q]["ndcg@10"] == pytest.approx(ref[q]["ndcg_cut_10"], abs=1e-12)
        assert pq[q]["recall@100"] == pytest.approx(ref[q]["recall_100"], abs=1e-12)
        assert pq[q]["map@100"] == pytest.approx(ref[q]["map_cut_100"], abs=1e-12)


def test_hand_checked_reciprocal_rank(tiny):
    qrels, run, rel_rank = tiny
    _, pq = evaluate(run, qrels, per_query=True)
    for q, r in rel_rank.items():
        # one relevant doc placed at rank r (others of the query, if any, are absent): RR@10 = 1/r if r <= 10
        assert pq[q]["mrr@10"] == pytest.approx(1 / r if r <= 10 else 0.0)


def test_missing_query_scores_zero_and_counts_in_mean(tiny):
    qrels, run, _ = tiny
    full = evaluate(run, qrels, per_query=True)[1]
    q0 = next(iter(run))
    partial = {q: h for q, h in run.items() if q != q0}
    agg, pq = evaluate(partial, qrels, per_query=True)
    assert pq[q0] == {m: 0.0 for m in DEFAULT_MEASURES}
    expected = math.fsum(full[q]["ndcg@10"] for q in qrels if q != q0) / len(qrels)
    assert agg["ndcg@10"] == pytest.approx(expected)


def test_drop_self_hits(tiny):
    qrels, run, _ = tiny
    q = next(iter(run))
    # put the query's own id on top (as ArguAna / Quora runs do), with a score above everything
    selfish = dict(run)
    selfish[q] = [Hit(q, 1000.0), *run[q]]
    qrels2 = {k: dict(v) for k, v in qrels.items()}
    assert drop_self(selfish)[q] == run[q]
    kept = evaluate(selfish, qrels2, per_query=True)[1][q]
    dropped = evaluate(selfish, qrels2, per_query=True, drop_self_hits=True)[1][q]
    clean = evaluate(run, qrels2, per_query=True)[1][q]
    assert dropped == clean
    assert kept["mrr@10"] == pytest.approx(0.5) and clean["mrr@10"] == pytest.approx(1.0)


def test_trec_run_round_trip_and_malformed(tiny, tmp_path):
    _, run, _ = tiny
    p = write_trec_run(run, tmp_path / "r.trec", tag="t1")
    back = read_trec_run(p)
    assert list(back) == list(run)
    assert all([h.docid for h in back[q]] == [h.docid for h in run[q]] for q in run)
    assert all(abs(a.score - b.score) <= 1e-9 * abs(b.score) for q in run for a, b in zip(back[q], run[q]))
    lines = p.read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0]  # drop the tag column
    (tmp_path / "bad.trec").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"bad\.trec:5: expected 6 columns"):
        read_trec_run(tmp_path / "bad.trec")
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run({"q 1": [Hit("d", 1.0)]}, tmp_path / "x.trec")


def test_binary_relevance_on_cranfield_grades():
    """Cranfield's codes 1-4 (1 = most relevant) and -1: binary mode is the library's nDCG on 0/1 qrels."""
    import ir_measures

    ds = load(dataset_path("cranfield"))
    qrels = ds.qrels_dict("test")
    q = next(q for q, d in qrels.items() if len(set(d.values())) >= 3)
    docs = sorted(qrels[q], key=lambda d: qrels[q][d])  # grade 1 (and -1) first
    run = {q: [Hit(d, float(len(docs) - i)) for i, d in enumerate(docs)]}
    sub = {q: qrels[q]}
    graded = evaluate(run, sub, ["ndcg@10"])["ndcg@10"]
    binary = evaluate(run, sub, ["ndcg@10"], binary_relevance=True)["ndcg@10"]
    ref = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], {q: {d: int(s > 0) for d, s in qrels[q].items()}},
                                     {q: {h.docid: h.score for h in run[q]}})[ir_measures.nDCG @ 10]
    assert binary == pytest.approx(ref) and graded != pytest.approx(binary)
    assert evaluate(run, sub, ["recall@100"], binary_relevance=True) == evaluate(run, sub, ["recall@100"])
