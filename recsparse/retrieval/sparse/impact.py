"""Learned sparse vectors in a Lucene impact index (Anserini ``JsonVectorCollection`` via Pyserini).

Layout of a saved sparse retriever (``ImpactRetriever.index(corpus, path)``, built atomically):

    path/model/        the encoder (``SparseModel.save``: model.json + model.pt, weights_only-loadable)
    path/collection/   the quantised document vectors, Anserini JsonVectorCollection:
                       one JSON object per line: {"id": docid, "contents": "", "vector": {word piece: impact}}
    path/index/        the Lucene impact index (IndexCollection -impact -pretokenized)
    path/recsparse.json  scale, statistics (documents, postings, terms, avg document non-zeros, index bytes)

Search builds the query's ``{word piece: integer weight}`` map in Python and runs Anserini's
``SimpleImpactSearcher`` (what Pyserini's ``LuceneImpactSearcher`` wraps): score = sum over shared terms of
query weight x document impact.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from recsparse.data.beir import corpus_fingerprint
from recsparse.io import atomic_dir, atomic_write
from recsparse.retrieval.base import IndexMeta, Retriever
from recsparse.retrieval.jvm import autoclass, ensure_jvm
from recsparse.retrieval.sparse.encoders import SparseModel, corpus_idf, text_of
from recsparse.retrieval.sparse.quantize import DEFAULT_SCALE, quantize, to_term_dicts
from recsparse.types import Hit, Run

COLLECTION_FILE = "docs00.jsonl"


def write_json_vector_collection(folder: str | Path, docids: Sequence[str], vectors: Sequence[Mapping[str, int]]) -> Path:
    """Write Anserini's ``JsonVectorCollection`` (one jsonl file) into ``folder``; returns the file."""
    if len(docids) != len(vectors):
        raise ValueError(f"docids ({len(docids)}) and vectors ({len(vectors)}) differ in length")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / COLLECTION_FILE
    with atomic_write(path) as f:
        for i, v in zip(docids, vectors):
            bad = [t for t, x in v.items() if not isinstance(x, int) or x < 0]
            if bad:
                raise ValueError(f"document {i!r}: impacts must be non-negative ints, got {bad[:3]}")
            f.write(json.dumps({"id": i, "contents": "", "vector": dict(v)}, ensure_ascii=False) + "\n")
    return path


def read_json_vector_collection(folder: str | Path) -> tuple[list[str], list[dict[str, int]]]:
    ids: list[str] = []
    vecs: list[dict[str, int]] = []
    for p in sorted(Path(folder).glob("*.jsonl")):
        with open(p, encoding="utf-8") as f:
            for line in f:
                o = json.loads(line)
                ids.append(o["id"])
                vecs.append(o["vector"])
    return ids, vecs


def build_impact_index(collection: str | Path, index: str | Path, threads: int = 1,
                       isolate: bool = True) -> dict[str, int]:
    """Lucene impact index (``-impact -pretokenized``) from a JsonVectorCollection folder through Anserini's
    ``IndexCollection`` (the shared runner in :mod:`recsparse.retrieval.lucene`); built in a temp folder and renamed
    into place only when Anserini reports no errors. Returns Anserini's counters.

    ``isolate=True`` runs the indexer in a child process with its own JVM: in a process that has already trained or
    run torch models, Anserini's indexing threads were seen to die of SIGSEGV (the JVM's signal handling does not
    survive everything torch and its libraries install), taking the whole run down.
    """
    from recsparse.retrieval.lucene import IndexBuildError, run_index_collection, run_index_collection_isolated

    runner = run_index_collection_isolated if isolate else run_index_collection
    with atomic_dir(index) as tmp:
        counters = runner(collection, tmp, collection="JsonVectorCollection", threads=threads,
                          extra_args=("-impact", "-pretokenized"))
        if counters["errors"] or not any(Path(tmp).glob("segments_*")):
            raise IndexBuildError(f"Anserini IndexCollection(JsonVectorCollection) for {collection}: {counters}")
    return counters


def dir_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def collection_stats(vectors: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """Postings (= document-term pairs), distinct terms, average non-zeros per document."""
    postings = sum(len(v) for v in vectors)
    terms = len({t for v in vectors for t in v})
    return {"documents": len(vectors), "postings": postings, "terms": terms,
            "avg_doc_nnz": postings / max(1, len(vectors))}


def flops_estimate(query_vectors: Sequence[Mapping[str, object]], doc_vectors: Sequence[Mapping[str, int]]) -> float:
    """Expected multiplications per (query, document) pair, ``sum_t P(q_t != 0) P(d_t != 0)`` (Paria et al. 2020),
    with probabilities estimated over the given queries and the indexed documents."""
    dfq = Counter(t for q in query_vectors for t in q)
    dfd = Counter(t for d in doc_vectors for t in d)
    nq, nd = max(1, len(query_vectors)), max(1, len(doc_vectors))
    return sum((c / nq) * (dfd.get(t, 0) / nd) for t, c in dfq.items())


@torch.inference_mode()
def encode_corpus(model: SparseModel, docids: Sequence[str], texts: Sequence[str], batch_size: int = 32,
                  scale: float = DEFAULT_SCALE, progress: bool = True) -> tuple[list[dict[str, int]], float]:
    """Documents -> quantised ``{word piece: impact}`` dicts (in input order) and encoding throughput (docs/s).

    Documents are encoded in order of length so batches carry little padding.
    """
    model.eval()
    id_to_token = model.tokenizer.convert_ids_to_tokens(list(range(model.doc_encoder.vocab_size)))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[dict[str, int] | None] = [None] * len(texts)
    it: Iterable[int] = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="encode docs", unit="batch", total=math.ceil(len(order) / batch_size))
    t0 = time.perf_counter()
    for s in it:
        idx = order[s:s + batch_size]
        w = model.encode_docs([texts[i] for i in idx])
        for i, d in zip(idx, to_term_dicts(w, id_to_token, scale)):
            out[i] = d
    dt = time.perf_counter() - t0
    return [d or {} for d in out], len(texts) / max(dt, 1e-9)


class ImpactRetriever(Retriever):
    """A :class:`recsparse.retrieval.base.Retriever` over a Lucene impact index of a :class:`SparseModel`'s documents."""

    def __init__(self, model: SparseModel, name: str | None = None, scale: float = DEFAULT_SCALE,
                 batch_size: int = 32, refit_idf: bool = True) -> None:
        self.model = model.eval()
        self.refit_idf = refit_idf
        self.name = name or f"sparse-{model.variant}"
        self.scale = scale
        self.batch_size = batch_size
        self.path: Path | None = None
        self.meta: dict = {}
        self._meta: IndexMeta | None = None
        self._searcher = None
        self._jclasses = None
        self._jints: dict[int, object] = {}
        self._id_to_token = model.tokenizer.convert_ids_to_tokens(list(range(model.doc_encoder.vocab_size)))

    # ---- building ----
    def index(self, corpus, path: str | Path, threads: int = 1) -> None:  # noqa: ANN001 - polars frame
        """Encode ``corpus`` (``_id``, ``title``, ``text``), quantise, and build ``path`` atomically."""
        docids = corpus["_id"].to_list()
        texts = [text_of(a, b) for a, b in zip(corpus["title"].to_list(), corpus["text"].to_list())]
        if self.refit_idf and self.model.variant == "inference-free" and not self.model.train_idf:
            # Query weights are the IDF of the collection being searched (a corpus statistic, like BM25's).
            self.model.set_idf(corpus_idf(self.model.tokenizer, texts, self.model.doc_encoder.vocab_size)[0])
        vecs, docs_per_s = encode_corpus(self.model, docids, texts, self.batch_size, self.scale)
        self.write(path, docids, vecs, extra={"encode_docs_per_s": docs_per_s}, threads=threads,
                   corpus_sha=corpus_fingerprint(corpus))

    def write(self, path: str | Path, docids: Sequence[str], vectors: Sequence[Mapping[str, int]],
              extra: dict | None = None, threads: int = 1, corpus_sha: str | None = None) -> None:
        """Build ``path`` (model, collection, index, meta) from already-quantised document vectors; ``corpus_sha``:
        fingerprint of the corpus they encode (``None``: unknown, the harness then cannot check the corpus)."""
        path = Path(path)
        t0 = time.perf_counter()
        with atomic_dir(path) as tmp:
            self.model.save(tmp / "model")
            write_json_vector_collection(tmp / "collection", docids, vectors)
            counters = build_impact_index(tmp / "collection", tmp / "index", threads=threads)
            meta = IndexMeta(kind="sparse-impact", corpus_sha=corpus_sha, num_docs=len(docids),
                             info={"name": self.name, "variant": self.model.variant, "scale": self.scale,
                                   **collection_stats(vectors), "index_bytes": dir_bytes(tmp / "index"),
                                   "counters": counters, **(extra or {})})
            meta.build_s = round(time.perf_counter() - t0, 3)
            meta.save(tmp)
        self._attach(path, meta)

    # ---- opening ----
    @classmethod
    def open(cls, path: str | Path, name: str | None = None) -> "ImpactRetriever":
        path = Path(path)
        meta = IndexMeta.require(path, kind="sparse-impact")
        r = cls(SparseModel.load(path / "model"), name=name or meta.info.get("name"), scale=meta.info["scale"])
        r._attach(path, meta)
        return r

    def _attach(self, path: Path, meta: IndexMeta) -> None:
        ensure_jvm()
        self.path = path
        self._meta = meta
        self.meta = meta.to_dict()  # flat view: index_bytes, postings, ... (what sparse_stats reads)
        self._searcher = autoclass("io.anserini.search.SimpleImpactSearcher")(str(path / "index"))

    @property
    def index_meta(self) -> IndexMeta | None:
        return self._meta if self._searcher is not None else None

    def close(self) -> None:
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None

    # ---- querying ----
    def query_vectors(self, queries: Sequence[str]) -> list[dict[str, int]]:
        """Queries -> ``{word piece: integer weight}`` (IDF table look-up for inference-free, model for siamese)."""
        qe = self.model.query_encoder
        if self.model.variant == "inference-free":  # no tensor work: plain Python is the per-query latency here
            tokens, scale = self._id_to_token, self.scale
            return [{tokens[i]: v for i, w in qe.query_terms(q).items() if (v := round(w * scale)) > 0}
                    for q in queries]
        res: list[dict[str, int]] = []
        with torch.inference_mode():
            for s in range(0, len(queries), self.batch_size):
                w = self.model.encode_queries(list(queries[s:s + self.batch_size]))
                res.extend(to_term_dicts(w, self._id_to_token, self.scale))
        return res

    def _jquery(self, vec: Mapping[str, int]):  # noqa: ANN202
        if self._jclasses is None:  # autoclass is a reflective look-up: once, not per query
            self._jclasses = (autoclass("java.util.HashMap"), autoclass("java.lang.Integer"))
        JHashMap, JInt = self._jclasses
        m = JHashMap()
        cache = self._jints  # one java.lang.Integer wrapper per distinct weight (4x cheaper than one per term)
        for t, v in vec.items():
            j = cache.get(v)
            if j is None:
                j = cache[v] = JInt(int(v))
            m.put(t, j)
        return m

    def search_vector(self, vec: Mapping[str, int], k: int = 10) -> list[Hit]:
        if self._searcher is None:
            raise RuntimeError("no index: call index(corpus, path) or ImpactRetriever.open(path) first")
        if not vec:
            return []
        ensure_jvm()  # re-installs the JVM's signal handlers if a library (e.g. Lightning) replaced them
        return [Hit(h.docid, float(h.score)) for h in self._searcher.search(self._jquery(vec), int(k))]

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.search_vector(self.query_vectors([query])[0], k)

    def batch_search(self, queries: Mapping[str, str], k: int = 10, threads: int = 1) -> Run:
        if self._searcher is None:
            raise RuntimeError("no index: call index(corpus, path) or ImpactRetriever.open(path) first")
        qids = list(queries)
        vecs = self.query_vectors([queries[q] for q in qids])
        JArrayList = autoclass("java.util.ArrayList")
        ql, il = JArrayList(), JArrayList()
        run: Run = {}
        for qid, v in zip(qids, vecs):
            if v:
                ql.add(self._jquery(v))
                il.add(qid)
            else:
                run[qid] = []
        if ql.size():
            res = self._searcher.batch_search(ql, il, int(k), int(threads))
            for e in res.entrySet().toArray():
                run[e.getKey()] = [Hit(h.docid, float(h.score)) for h in e.getValue()]
        return {q: run.get(q, []) for q in qids}


def open_retriever(path: str | Path) -> ImpactRetriever:
    """Re-open a saved sparse retriever (what ``recsparse beir --retriever sparse:PATH`` calls)."""
    return ImpactRetriever.open(path)


def threads_default() -> int:
    return max(1, min(2, os.cpu_count() or 1))
