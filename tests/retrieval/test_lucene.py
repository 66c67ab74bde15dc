"""Lucene BM25 on a real Cranfield slice: protocol, search == batch_search, reopen, atomic builds, reuse, impact."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsparse.data import load
from recsparse.io import read_index_meta
from recsparse.retrieval.lucene import BM25Config, BM25Retriever, IndexBuildError, build_lucene_index
from recsparse.retrieval.base import Retriever
from recsparse.types import Hit


@pytest.fixture(scope="module")
def cran(cranfield_small):
    return load(cranfield_small)


@pytest.fixture(scope="module")
def bm25(cran, tmp_path_factory):
    r = BM25Retriever()
    r.index(cran.corpus, tmp_path_factory.mktemp("bm25") / "idx")
    return r


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_protocol_and_search(bm25, cran):
    assert isinstance(bm25, Retriever) and bm25.name == "bm25"
    assert bm25.num_docs == cran.corpus.height  # this slice has no empty documents
    hits = bm25.search("boundary layer transition", k=5)
    assert len(hits) == 5 and all(isinstance(h, Hit) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # the top document contains the query terms (Porter-stemmed match on the real text)
    top = cran.corpus.filter(cran.corpus["_id"] == hits[0].docid)["text"][0]
    assert "boundary" in top and "layer" in top


def test_batch_search_equals_search(bm25, cran):
    qs = dict(list(cran.split_queries("test").items())[:20])
    batch = bm25.batch_search(qs, k=10, threads=2)
    assert list(batch) == list(qs)
    for q, text in qs.items():
        assert [(h.docid, round(h.score, 4)) for h in batch[q]] == \
               [(h.docid, round(h.score, 4)) for h in bm25.search(text, k=10)]


def test_open_saved_index(bm25):
    again = BM25Retriever.open(bm25.path)
    assert again.config == bm25.config
    assert again.search("shock waves", 7) == bm25.search("shock waves", 7)
    again.close()
    with pytest.raises(FileNotFoundError):
        BM25Retriever.open(bm25.path.parent / "nope")


def test_multifield_differs_from_flat(cran, bm25, tmp_path):
    mf = BM25Retriever(BM25Config(fields="multifield"))
    mf.index(cran.corpus, tmp_path / "mf")
    assert mf.name == "bm25-multifield" and read_index_meta(tmp_path / "mf")["collection"] == "BeirMultifieldCollection"
    q = "heat transfer in hypersonic flow"
    assert mf.search(q, 10) != bm25.search(q, 10)


def test_failed_build_leaves_previous_index_intact(cran, tmp_path):
    path = tmp_path / "idx"
    r = BM25Retriever()
    r.index(cran.corpus.head(50), path)
    before = r.search("wing", 10)
    files = sorted(p.name for p in path.iterdir())
    r.close()

    def crash(tmp):  # the new index dir exists and the collection is written: die mid-build
        assert tmp.exists() and tmp != path
        raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        build_lucene_index(({"_id": i, "title": "", "text": t} for i, t in zip(cran.corpus["_id"], cran.corpus["text"])),
                           path, collection="BeirFlatCollection", _after_write=crash)
    # failure inside Anserini (an unknown indexer flag) also leaves it intact
    with pytest.raises(Exception, match="no-such-flag"):
        build_lucene_index([{"id": "x", "contents": "y"}], path, extra_args=("-no-such-flag",))
    # an indexer run that indexes nothing is refused
    with pytest.raises(IndexBuildError):
        build_lucene_index([{"id": "x", "contents": ""}], path)
    assert sorted(p.name for p in path.iterdir()) == files
    assert leftovers(tmp_path) == []
    assert BM25Retriever.open(path).search("wing", 10) == before


def test_rebuild_replaces_and_reuse_checks_corpus_and_config(cran, tmp_path):
    from recsparse.data.beir import corpus_fingerprint

    path = tmp_path / "idx"
    r = BM25Retriever()
    r.index(cran.corpus.head(30), path)
    r.index(cran.corpus, path)  # rebuild over an open index
    assert r.num_docs == cran.corpus.height and leftovers(tmp_path) == []
    sha = corpus_fingerprint(cran.corpus)
    assert BM25Retriever().reuse(path, sha)
    assert not BM25Retriever().reuse(path, corpus_fingerprint(cran.corpus.head(30)))
    assert not BM25Retriever(BM25Config(k1=1.2)).reuse(path, sha)


def test_impact_index_through_the_general_builder(cran, tmp_path):
    """The builder takes any collection: JsonVectorCollection with integer impacts (what learned sparse uses)."""
    from recsparse.retrieval.jvm import pyserini_module

    docs = [{"id": d, "vector": {w: 1 + len(w) % 3 for w in set(t.split()[:30]) if w.isalpha()}}
            for d, t in zip(cran.corpus["_id"].to_list()[:40], cran.corpus["text"].to_list()[:40])]
    counters = build_lucene_index(docs, tmp_path / "imp", collection="JsonVectorCollection",
                                  extra_args=("-impact", "-pretokenized"))
    assert counters["indexed"] == 40 and counters["errors"] == 0
    s = pyserini_module("pyserini.search.lucene").LuceneImpactSearcher(str(tmp_path / "imp"), None)
    w = next(iter(docs[3]["vector"]))
    hits = s.search(w, 40)  # no query encoder: the query string's whitespace tokens, weight 1 each
    assert docs[3]["id"] in [h.docid for h in hits]


def test_isolated_build_in_a_child_jvm(cran, tmp_path):
    """The same index built by a child process (own JVM) searches like the in-process one."""
    docs = list(zip(cran.corpus["_id"].to_list()[:80], cran.corpus["text"].to_list()[:80]))
    for iso in (False, True):
        c = build_lucene_index(({"id": d, "contents": t} for d, t in docs), tmp_path / f"i{iso}", isolate=iso)
        assert c["indexed"] == 80
    a, b = (BM25Retriever.open(tmp_path / f"i{iso}") for iso in (False, True))
    assert a.search("supersonic wing", 10) == b.search("supersonic wing", 10)
    with pytest.raises(IndexBuildError, match="exited"):  # a failing child is reported, nothing renamed into place
        build_lucene_index([{"id": "x", "contents": "y"}], tmp_path / "iTrue", isolate=True,
                           extra_args=("-no-such-flag",))
    assert b.search("supersonic wing", 10) == a.search("supersonic wing", 10)


def _long_query(n_terms: int) -> str:
    """``n_terms`` distinct real words of the full Cranfield corpus (they stay distinct after stemming often
    enough: the test asserts the analysed clause count exceeds Lucene's default 1,024)."""
    from tests.conftest import dataset_path

    full = load(dataset_path("cranfield"))
    words = sorted({w for t in full.corpus["text"].to_list() for w in t.split() if w.isalpha() and len(w) > 3})
    return " ".join(words[:n_terms])


def test_query_with_more_than_1024_terms_is_searched(bm25, cran):
    """Before: Lucene's TooManyClauses (default limit 1,024) failed the query, and Anserini's batch_search lost every
    query of the batch with it. Now the JVM-wide limit is raised when recsparse starts the JVM."""
    from recsparse.retrieval.jvm import autoclass, pyserini_module

    q = _long_query(5000)
    analyzed = set(pyserini_module("pyserini.analysis").Analyzer(
        pyserini_module("pyserini.analysis").get_lucene_analyzer()).analyze(q))
    assert len(analyzed) > 1024
    assert autoclass("org.apache.lucene.search.IndexSearcher").getMaxClauseCount() > len(analyzed)
    run = bm25.batch_search({"short": "boundary layer", "long": q, "other": "shock wave"}, k=10, threads=2)
    assert all(len(v) == 10 for v in run.values())
    assert [h.docid for h in bm25.search(q, 10)] == [h.docid for h in run["long"]]


def test_killed_build_leaves_nothing_after_the_next_build(cran, tmp_path, monkeypatch):
    """A build killed with SIGKILL (no finally, no atexit) leaves its temp index dir beside the target and its full
    corpus copy in the temp dir. Before, they stayed forever; now the next build of that index sweeps them (their
    owner process is dead), and a normal build leaves neither."""
    import subprocess
    import sys
    import tempfile

    tmpdir = tmp_path / "systmp"
    tmpdir.mkdir()
    child = ("import os, sys\n"
             "from recsparse.retrieval.lucene import build_lucene_index\n"
             "build_lucene_index([{'id': 'a', 'contents': 'wing'}], sys.argv[1],"
             " _after_write=lambda tmp: os.kill(os.getpid(), 9))\n")
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path / "idx")], capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "TMPDIR": str(tmpdir)})
    assert out.returncode == -9, out.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx.")] and \
        [p.name for p in tmpdir.iterdir() if p.name.startswith("recsparse-coll-")]
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    r = BM25Retriever()
    r.index(cran.corpus.head(20), tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "systmp"]
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("recsparse-")] == []  # (torch may cache there)
    r.close()
