"""Retrieval: encoder -> index -> searcher -> evaluation, one search vocabulary across Lucene and FAISS.

* :mod:`.base` — the :class:`~recsparse.retrieval.base.Retriever` contract every backend implements and the one
  index-metadata schema (:class:`~recsparse.retrieval.base.IndexMeta`, with the corpus fingerprint).
* :mod:`.lucene` — BM25 (BEIR flat / multifield) and the atomic Lucene index builder (``build_lucene_index``).
* :mod:`.dense` — sentence-transformers encoder (all-MiniLM-L6-v2 offline) + FAISS Flat / HNSW / IVF-PQ.
* :mod:`.fusion` — reciprocal rank fusion and min-max score interpolation; ``FusionRetriever``.
* :mod:`.evaluation` — ir_measures metrics under our keys, self-hit option, TREC run files.
* :mod:`.harness` — index/reuse -> batch search -> evaluate -> runs, metrics.json, report.md.
* :mod:`.cli` — ``recsparse beir``.

Submodules import their engines (JVM, FAISS, torch) lazily; ``import recsparse.retrieval`` is cheap.
"""
