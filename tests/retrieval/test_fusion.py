"""Fusion math on hand-checked runs (RRF k=60, min-max interpolation) and the fused retriever's contract."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsparse.retrieval.base import Retriever
from recsparse.retrieval.fusion import FusionRetriever, fuse, interpolate, minmax, rrf
from recsparse.types import Hit


def run_of(*docs_scores):
    return [Hit(d, s) for d, s in docs_scores]


A = {"q1": run_of(("d1", 12.0), ("d2", 10.0), ("d3", 4.0))}
B = {"q1": run_of(("d3", 0.9), ("d1", 0.7), ("d4", 0.5))}


def test_rrf_hand_checked():
    out = rrf([A, B], k=60)["q1"]
    # d1: 1/61 + 1/62; d3: 1/63 + 1/61; d2: 1/62; d4: 1/63
    expected = {"d1": 1 / 61 + 1 / 62, "d3": 1 / 63 + 1 / 61, "d2": 1 / 62, "d4": 1 / 63}
    assert [h.docid for h in out] == ["d1", "d3", "d2", "d4"]
    assert {h.docid: h.score for h in out} == pytest.approx(expected, abs=1e-15)
    assert [h.docid for h in rrf([A, B], k=60, top=2)["q1"]] == ["d1", "d3"]
    # weights and depth
    w = {h.docid: h.score for h in rrf([A, B], k=1, weights=[2.0, 1.0], depth=1)["q1"]}
    assert w == pytest.approx({"d1": 2 / 2, "d3": 1 / 2})


def test_interpolation_hand_checked():
    out = {h.docid: h.score for h in interpolate(A, B, alpha=0.25)["q1"]}
    # minmax(A): d1 1, d2 0.75, d3 0;  minmax(B): d3 1, d1 0.5, d4 0
    assert out == pytest.approx({"d1": 0.25 * 1 + 0.75 * 0.5, "d2": 0.25 * 0.75, "d3": 0.75 * 1.0, "d4": 0.0})
    assert [h.docid for h in interpolate(A, B, alpha=0.25)["q1"]][:2] == ["d3", "d1"]
    assert minmax(run_of(("x", 3.0), ("y", 3.0))) == {"x": 1.0, "y": 1.0}


def test_queries_in_only_one_run_and_validation():
    out = rrf([A, {"q2": run_of(("d9", 1.0))}])
    assert set(out) == {"q1", "q2"} and out["q2"][0].score == pytest.approx(1 / 61)
    with pytest.raises(ValueError, match="alpha"):
        interpolate(A, B, alpha=1.5)
    with pytest.raises(ValueError, match="exactly two"):
        fuse([A, B, A], "interpolation")
    with pytest.raises(ValueError, match="method"):
        fuse([A, B], "borda")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=30, unique=True))
def test_fusing_a_run_with_itself_keeps_its_order(scores):
    hits = sorted((Hit(f"d{i}", s) for i, s in enumerate(scores)), key=lambda h: -h.score)
    run = {"q": hits}
    assert [h.docid for h in rrf([run, run])["q"]] == [h.docid for h in hits]
    inter = interpolate(run, run, alpha=0.3)["q"]
    assert [round(h.score, 9) for h in inter] == sorted((round(h.score, 9) for h in inter), reverse=True)
    assert {h.docid: h.score for h in inter} == pytest.approx(minmax(hits))


class _Fixed(Retriever):
    """A stand-in retriever that returns a fixed run (fusion logic only; real backends are tested elsewhere)."""

    def __init__(self, name, run):
        self.name, self.run, self.indexed = name, run, None

    def index(self, corpus, path, threads=1):
        self.indexed = path

    @classmethod
    def open(cls, path, name=None):
        raise NotImplementedError

    @property
    def index_meta(self):
        return None

    def search(self, query, k=10):
        return self.run["q1"][:k]

    def batch_search(self, queries, k=10, threads=1):
        return {q: self.run["q1"][:k] for q in queries}  # every query gets the one fixed ranking


def test_fusion_retriever(tmp_path):
    import polars as pl

    f = FusionRetriever([_Fixed("a", A), _Fixed("b", B)], k_rrf=60)
    assert isinstance(f, Retriever) and f.name == "rrf(a+b)"
    f.index(pl.DataFrame({"_id": ["d1"], "title": [""], "text": ["x"]}), tmp_path)
    assert [r.indexed for r in f.retrievers] == [tmp_path / "a", tmp_path / "b"]
    assert f.index_meta.kind == "fusion" and f.index_meta.config["parts"] == ["a", "b"]
    assert f.batch_search({"q1": "x"}, k=3)["q1"] == rrf([A, B], top=3)["q1"]
    assert [h.docid for h in f.search("x", k=2)] == ["d1", "d3"]
    with pytest.raises(ValueError, match="exactly two"):
        FusionRetriever([_Fixed("a", A), _Fixed("b", B), _Fixed("c", A)], method="interpolation")
    with pytest.raises(ValueError, match="distinct names"):
        FusionRetriever([_Fixed("a", A), _Fixed("a", B)])


def test_fusion_of_real_backends_saves_reopens_and_reuses(cranfield_tiny, tmp_path):
    """BM25 flat + multifield fused: ``open_index`` re-opens the saved fusion (parts by their metadata), ``reuse``
    accepts it only for the same corpus."""
    from recsparse.data import load
    from recsparse.retrieval.base import open_index
    from recsparse.retrieval.lucene import BM25Config, BM25Retriever

    ds = load(cranfield_tiny)
    f = FusionRetriever([BM25Retriever(), BM25Retriever(BM25Config(fields="multifield"))], method="interpolation",
                        alpha=0.3, depth=50)
    f.index(ds.corpus, tmp_path / "fused")
    qs = dict(list(ds.split_queries("test").items())[:5])
    again = open_index(tmp_path / "fused")
    assert isinstance(again, FusionRetriever) and again.name == f.name and again.alpha == 0.3
    assert again.batch_search(qs, k=10) == f.batch_search(qs, k=10)
    fresh = FusionRetriever([BM25Retriever(), BM25Retriever(BM25Config(fields="multifield"))], method="interpolation",
                            alpha=0.3, depth=50)
    assert fresh.reuse(tmp_path / "fused", ds.fingerprint)
    other = FusionRetriever([BM25Retriever(), BM25Retriever(BM25Config(fields="multifield"))], method="interpolation",
                            alpha=0.3, depth=50)
    assert not other.reuse(tmp_path / "fused", "0" * 16)
    for r in (f, again, fresh):
        r.close()
