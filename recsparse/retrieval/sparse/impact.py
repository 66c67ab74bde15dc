"""Learned sparse vectors in a Lucene impact index (Anserini ``JsonVectorCollection`` via Pyserini).

Layout of a saved sparse retriever (``ImpactRetriever.index(corpus, path)``, built atomically):

    path/model/        the encoder, a sentence-transformers SparseEncoder folder (``SparseEncoder(path/'model')``)
    path/collection/   the quantised document vectors, Anserini JsonVectorCollection:
                       one JSON object per line: {"id": docid, "contents": "", "vector": {word piece: impact}}
    path/index/        the Lucene impact index (IndexCollection -impact -pretokenized)
    path/recsparse.json  scale, statistics (documents, postings, terms, avg document non-zeros, index bytes)

Search builds the query's ``{word piece: integer weight}`` map and runs Anserini's
``SimpleImpactSearcher`` (what Pyserini's ``LuceneImpactSearcher`` wraps): score = sum over shared terms of
query weight x document impact.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import torch

from recsparse.data.beir import corpus_fingerprint
from recsparse.io import atomic_dir, atomic_write
from recsparse.retrieval.base import IndexMeta, Retriever
from recsparse.retrieval.jvm import autoclass, ensure_jvm
from recsparse.retrieval.sparse.models import (corpus_idf, document_pipeline, encode_documents,
                                              load_model, max_logits, query_table, set_query_idf, special_token_mask, text_of,
                                              tokenizer_of, variant_of, vocab_size)
from recsparse.retrieval.sparse.quantize import DEFAULT_SCALE, fold_query_weights, to_term_dicts
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


def special_free_tokens(model) -> list[str | None]:  # noqa: ANN001
    """Word piece of each vocabulary id, ``None`` for ids that never carry weight (special / unused tokens): the
    document side of a SPLADE model puts a little weight on [CLS]/[SEP]/[unusedN], which no query ever matches."""
    tok = tokenizer_of(model)
    v = vocab_size(model)
    names: list[str | None] = list(tok.convert_ids_to_tokens(list(range(v))))
    for i in special_token_mask(tok, v).nonzero().flatten().tolist():
        names[i] = None
    return names


class _FastDocumentEncoder:
    """Inference-only evaluation of ``[Transformer(BertForMaskedLM), SpladePooling(max, relu)]`` that never holds the
    ``(B, L, V)`` logits: trunk -> MLM transform -> max over positions of the vocabulary logits
    (:func:`models.max_logits`, cache-blocked), then ``log1p(relu(.))`` (monotone, so equal to SpladePooling's
    relu -> log1p -> max; tested equal). Padding rows take the [CLS] row, whose logits are already in the max. Other
    document pipelines use their own forward."""

    def __init__(self, model, chunk: int = 8) -> None:  # noqa: ANN001
        from sentence_transformers.sparse_encoder.models import SpladePooling

        mods = list(document_pipeline(model))
        mlm = mods[0].auto_model if len(mods) == 2 else None
        ok = (mlm is not None and isinstance(mods[1], SpladePooling) and mods[1].pooling_strategy == "max"
              and mods[1].activation_function == "relu" and hasattr(mlm, "bert") and hasattr(mlm, "cls"))
        self.mlm = mlm if ok else None
        self.chunk = chunk

    def __call__(self, feats: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.mlm is None:
            return None
        mask = feats["attention_mask"].bool()
        h = self.mlm.bert(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"]).last_hidden_state
        z = self.mlm.cls.predictions.transform(h)
        z = torch.where(mask.unsqueeze(-1), z, z[:, :1])
        dec = self.mlm.cls.predictions.decoder
        bias = dec.bias if dec.bias is not None else self.mlm.cls.predictions.bias
        out, _ = max_logits(z, dec.weight, bias, rows=self.chunk)
        return torch.log1p(torch.relu(out))


@torch.inference_mode()
def encode_corpus(model, texts: Sequence[str], *, windows: int = 1, stride: int = 16,  # noqa: ANN001
                  batch_size: int = 32, scale: float = DEFAULT_SCALE,
                  progress: bool = True) -> tuple[list[dict[str, int]], float]:
    """Documents -> quantised ``{word piece: impact}`` dicts (in input order) and encoding throughput (docs/s).

    Documents go in order of length (little padding); the progress bar shows docs/s. See
    :func:`models.encode_documents` for ``windows`` / ``stride``.
    """
    model.eval()
    tokens = special_free_tokens(model)
    fast = _FastDocumentEncoder(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[dict[str, int] | None] = [None] * len(texts)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), desc="encode docs", unit="doc", dynamic_ncols=True)
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        w = encode_documents(model, [texts[i] for i in idx], windows=windows, stride=stride, pipeline=fast)
        for i, d in zip(idx, to_term_dicts(w, tokens, scale)):
            out[i] = d
        if bar is not None:
            bar.update(len(idx))
    dt = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return [d or {} for d in out], len(texts) / max(dt, 1e-9)


class ImpactRetriever(Retriever):
    """A :class:`recsparse.retrieval.base.Retriever` over a Lucene impact index of a sentence-transformers ``SparseEncoder``'s document vectors.

    ``windows`` / ``stride``: long documents are indexed as max-pooled windows (:func:`models.encode_documents`).
    ``refit_idf``: an inference-free model with a frozen IDF query table gets the IDF of the corpus it indexes (a
    corpus statistic, like BM25's); a learned table (``frozen=False``) is kept.

    ``fold_idf`` (inference-free only, off by default): the query side is a fixed table, so each document impact can
    be stored already multiplied by its term's query weight, ``d'_t = round(q_t d_t / scale)``
    (:func:`quantize.fold_query_weights`); a query is then just its distinct word pieces, searched as one string by
    Anserini (whitespace analysis, weight 1 per term) -- one call into Java per query instead of building a Java map.
    Scores are ``sum_t q_t d_t / scale`` up to one rounding per term (not bit-identical to the unfolded index: the
    exact product would be a term frequency of up to ~10^5, which Anserini indexes by repeating the term).
    """

    def __init__(self, model, name: str | None = None, scale: float = DEFAULT_SCALE, batch_size: int = 32,  # noqa: ANN001
                 refit_idf: bool = True, windows: int = 1, stride: int = 16, progress: bool = True,
                 fold_idf: bool = False) -> None:
        if windows < 1:
            raise ValueError(f"windows must be >= 1, got {windows}")
        self.model = model.eval()
        self.variant = variant_of(model)
        self.refit_idf = refit_idf
        self.name = name or f"sparse-{self.variant}"
        self.scale = scale
        self.batch_size = batch_size
        self.windows, self.stride, self.progress = windows, stride, progress
        self.path: Path | None = None
        self.meta: dict = {}
        self._meta: IndexMeta | None = None
        self._info: dict = {}
        self._searcher = None
        self._jclasses = None
        self._jints: dict[int, object] = {}
        self._tokens = special_free_tokens(model)
        self._table: list[float] | None = None
        self._qterms: tuple | None = None
        self.fold_idf = fold_idf
        self.folded = False  # whether the attached index holds query-weight-folded impacts

    # ---- building ----
    def index(self, corpus, path: str | Path, threads: int = 1) -> None:  # noqa: ANN001 - polars frame
        """Encode ``corpus`` (``_id``, ``title``, ``text``), quantise, and build ``path`` atomically."""
        docids = corpus["_id"].to_list()
        texts = [text_of(a, b) for a, b in zip(corpus["title"].to_list(), corpus["text"].to_list())]
        table = query_table(self.model)
        if self.refit_idf and table is not None and table.frozen:
            set_query_idf(self.model, corpus_idf(tokenizer_of(self.model), texts, vocab_size(self.model))[0])
            self._table = self._qterms = None
        t0 = time.perf_counter()
        vecs, docs_per_s = encode_corpus(self.model, texts, windows=self.windows, stride=self.stride,
                                         batch_size=self.batch_size, scale=self.scale, progress=self.progress)
        self.folded = self.fold_idf and self.variant == "inference-free"
        if self.folded:
            vecs = fold_query_weights(vecs, self._query_ints(), self.scale)
        self._info = {"encode_docs_per_s": round(docs_per_s, 2), "encode_s": round(time.perf_counter() - t0, 3)}
        self.write(path, docids, vecs, extra=self._info, threads=threads, corpus_sha=corpus_fingerprint(corpus))

    def index_info(self) -> dict:
        """Encoding figures of the last ``index`` call (the harness's ``index_s`` covers encoding + Lucene build)."""
        return dict(self._info)

    def write(self, path: str | Path, docids: Sequence[str], vectors: Sequence[Mapping[str, int]],
              extra: dict | None = None, threads: int = 1, corpus_sha: str | None = None) -> None:
        """Build ``path`` (model, collection, index, meta) from already-quantised document vectors; ``corpus_sha``:
        fingerprint of the corpus they encode (``None``: unknown, the harness then cannot check the corpus)."""
        path = Path(path)
        t0 = time.perf_counter()
        with atomic_dir(path) as tmp:
            self.model.save(str(tmp / "model"))
            write_json_vector_collection(tmp / "collection", docids, vectors)
            counters = build_impact_index(tmp / "collection", tmp / "index", threads=threads)
            meta = IndexMeta(kind="sparse-impact", corpus_sha=corpus_sha, num_docs=len(docids),
                             config={"scale": self.scale, "doc_windows": self.windows, "doc_stride": self.stride,
                                     "query_weights_folded": self.folded},
                             info={"name": self.name, "variant": self.variant, "scale": self.scale,
                                   "doc_windows": self.windows, "doc_stride": self.stride,
                                   "query_weights_folded": self.folded, **collection_stats(vectors),
                                   "index_bytes": dir_bytes(tmp / "index"), "counters": counters, **(extra or {})})
            meta.build_s = round(time.perf_counter() - t0, 3)
            meta.save(tmp)
        self._attach(path, meta)

    # ---- opening ----
    @classmethod
    def open(cls, path: str | Path, name: str | None = None) -> "ImpactRetriever":
        path = Path(path)
        meta = IndexMeta.require(path, kind="sparse-impact")
        r = cls(load_model(path / "model"), name=name or meta.info.get("name"), scale=meta.info["scale"],
                windows=meta.info.get("doc_windows", 1), stride=meta.info.get("doc_stride", 16))
        r._attach(path, meta)
        return r

    def _attach(self, path: Path, meta: IndexMeta) -> None:
        ensure_jvm()
        self.path = path
        self._meta = meta
        self.meta = meta.to_dict()  # flat view: index_bytes, postings, ... (what sparse_stats reads)
        self.folded = bool(self.meta.get("query_weights_folded", False))
        self._searcher = autoclass("io.anserini.search.SimpleImpactSearcher")(str(path / "index"))

    @property
    def index_meta(self) -> IndexMeta | None:
        return self._meta if self._searcher is not None else None

    def close(self) -> None:
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None

    # ---- querying ----
    def _query_weights(self) -> tuple[list[float], object, int]:
        """Inference-free query side as plain Python: (per-id weight list, Rust tokenizer, max word pieces)."""
        table = query_table(self.model)
        assert table is not None
        if self._table is None:  # python lists: per-token tensor indexing costs ~us each
            w = torch.relu(table.weight.detach()).tolist()
            self._table = [0.0 if t is None else x for x, t in zip(w, self._tokens)]
            bt = table.tokenizer.backend_tokenizer
            self._rust = (bt, int(table.tokenizer.model_max_length))
        return self._table, *self._rust

    def _query_ints(self) -> dict[str, int]:
        """Inference-free: word piece -> integer query weight ``round(table_t * scale)`` (> 0 only)."""
        table, _, _ = self._query_weights()
        return {t: v for t, x in zip(self._tokens, table) if t is not None and (v := round(x * self.scale)) > 0}

    def _query_string(self, query: str) -> str:
        """A folded index's query: its distinct weighted word pieces, space-separated (Anserini's pretokenized
        analysis splits on whitespace). Per query: one Rust tokenizer call and a list look-up per word piece."""
        if self._qterms is None:  # id -> word piece if its integer query weight is > 0, else None
            table, bt, max_len = self._query_weights()
            self._qterms = ([t if t is not None and round(x * self.scale) > 0 else None
                             for t, x in zip(self._tokens, table)], bt, max_len)
        qterms, bt, max_len = self._qterms
        if bt.truncation is not None or bt.padding is not None:
            bt.no_truncation()
            bt.no_padding()
        ids = bt.encode(query, add_special_tokens=False).ids[:max_len]
        return " ".join(t for t in dict.fromkeys([qterms[i] for i in ids]) if t)

    def query_vectors(self, queries: Sequence[str]) -> list[dict[str, int]]:
        """Queries -> ``{word piece: integer weight}``: an IDF table look-up for inference-free models (the word
        pieces the model's ``SparseStaticEmbedding`` sees, through the Rust tokenizer directly: no tensor work per
        query), the model's query encoder for siamese ones."""
        if self.variant == "inference-free":
            table, bt, max_len = self._query_weights()
            if bt.truncation is not None or bt.padding is not None:  # state left by an earlier batched HF call
                bt.no_truncation()
                bt.no_padding()
            tokens, scale = self._tokens, self.scale
            return [{tokens[i]: v for i in dict.fromkeys(e.ids[:max_len]) if (v := round(table[i] * scale)) > 0}
                    for e in bt.encode_batch(list(queries), add_special_tokens=False)]
        res: list[dict[str, int]] = []
        with torch.inference_mode():
            for s in range(0, len(queries), self.batch_size):
                w = self.model.encode_query(list(queries[s:s + self.batch_size]), convert_to_tensor=True,
                                            convert_to_sparse_tensor=False)
                res.extend(to_term_dicts(w, self._tokens, self.scale))
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
        """Search a ``{word piece: weight}`` query (on a folded index the weights are already in the documents: each
        term counts once)."""
        if self._searcher is None:
            raise RuntimeError("no index: call index(corpus, path) or ImpactRetriever.open(path) first")
        if not vec:
            return []
        if self.folded:
            vec = dict.fromkeys(vec, 1)
        ensure_jvm()  # re-installs the JVM's signal handlers if a library (e.g. Lightning) replaced them
        return [Hit(h.docid, float(h.score)) for h in self._searcher.search(self._jquery(vec), int(k))]

    def search(self, query: str, k: int = 10) -> list[Hit]:
        if not self.folded:
            return self.search_vector(self.query_vectors([query])[0], k)
        if self._searcher is None:
            raise RuntimeError("no index: call index(corpus, path) or ImpactRetriever.open(path) first")
        q = self._query_string(query)
        if not q:
            return []
        ensure_jvm()
        return [Hit(h.docid, float(h.score)) for h in self._searcher.search(q, int(k))]

    def batch_search(self, queries: Mapping[str, str], k: int = 10, threads: int = 1) -> Run:
        if self._searcher is None:
            raise RuntimeError("no index: call index(corpus, path) or ImpactRetriever.open(path) first")
        qids = list(queries)
        JArrayList = autoclass("java.util.ArrayList")
        ql, il = JArrayList(), JArrayList()
        run: Run = {}
        if self.folded:
            for qid in qids:
                if s := self._query_string(queries[qid]):
                    ql.add(s)
                    il.add(qid)
        else:
            for qid, v in zip(qids, self.query_vectors([queries[q] for q in qids])):
                if v:
                    ql.add(self._jquery(v))
                    il.add(qid)
        if ql.size():
            ensure_jvm()
            batch = self._searcher.batch_search_queries if self.folded else self._searcher.batch_search
            res = batch(ql, il, int(k), int(threads))
            for e in res.entrySet().toArray():
                run[e.getKey()] = [Hit(h.docid, float(h.score)) for h in e.getValue()]
        return {q: run.get(q, []) for q in qids}


def open_retriever(path: str | Path) -> ImpactRetriever:
    """Re-open a saved sparse retriever (what ``recsparse beir --retriever sparse:PATH`` calls)."""
    return ImpactRetriever.open(path)


def threads_default() -> int:
    return max(1, min(2, os.cpu_count() or 1))

