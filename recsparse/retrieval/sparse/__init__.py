"""Learned sparse retrieval: SPLADE-style and inference-free encoders, FLOPS / IDF-aware FLOPS, Lucene impact index.

``open_retriever(path)`` re-opens a saved impact retriever (used by ``recsparse beir --retriever sparse:PATH``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsparse.retrieval.sparse.impact import ImpactRetriever


def open_retriever(path: Any) -> "ImpactRetriever":
    from recsparse.retrieval.sparse.impact import open_retriever as _open

    return _open(path)


__all__ = ["open_retriever"]
