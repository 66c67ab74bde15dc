"""The retriever contract and the one index-metadata schema every backend writes.

Every backend (Lucene BM25, Lucene impact / learned sparse, FAISS dense, fusion) is a :class:`Retriever`:

* ``index(corpus, path, threads=1)`` builds a saved index at ``path`` atomically and opens it;
* ``Retriever.open(path)`` re-opens a saved index; ``reuse(path, corpus_sha)`` re-opens it only when this very
  configuration built it from that corpus;
* ``search(query, k)`` / ``batch_search(queries, k, threads)`` return :class:`~recsparse.types.Hit` lists / a
  :data:`~recsparse.types.Run`;
* ``index_meta`` is the :class:`IndexMeta` of the open index (``None`` while none is open); ``index_info()`` what
  the last ``index`` call did besides the engine's build (e.g. encoding seconds), for the report.

The harness (:mod:`recsparse.retrieval.harness`) calls exactly these methods, nothing else.

Every index folder carries ``recsparse.json`` (:data:`recsparse.io.INDEX_META`): an :class:`IndexMeta` whose
``corpus_sha`` is the :func:`recsparse.data.beir.corpus_fingerprint` of the corpus it was built from. An index is
never searched for another corpus: :func:`check_corpus` raises :class:`CorpusMismatchError`.
"""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from recsparse.errors import UserError
from recsparse.io import INDEX_META, read_index_meta, write_index_meta
from recsparse.types import Hit, Run

if TYPE_CHECKING:
    import polars as pl

META_SCHEMA = 1


def safe_name(name: str) -> str:
    """A retriever name as a file name (``sparse:/a/b`` -> ``sparse_a_b``)."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_.")
    return s or "retriever"


class IndexMetaError(UserError):
    """An index folder's ``recsparse.json`` is missing, unreadable or not of the expected kind."""


class IndexNotFoundError(IndexMetaError, FileNotFoundError):
    """No index folder (or no ``recsparse.json`` in it) where one is expected."""


class CorpusMismatchError(UserError):
    """A saved index was built from another corpus than the one it is asked to search."""


@dataclass
class IndexMeta:
    """What every index folder records about itself (``recsparse.json``).

    ``kind``: the backend ("bm25", "dense", "sparse-impact", "fusion"); ``corpus_sha``: fingerprint of the corpus it
    was built from (``None`` only in indexes written before fingerprints existed); ``num_docs``: documents indexed;
    ``build_s``: wall seconds of the build; ``config``: the backend's configuration (what ``reuse`` compares);
    ``info``: backend-specific figures (Anserini counters, postings, FAISS factory ...). On disk the file is flat
    JSON: the named fields plus ``info``'s keys at the top level.
    """

    kind: str
    corpus_sha: str | None
    num_docs: int | None = None
    build_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    schema: int = META_SCHEMA

    _FIELDS: ClassVar[tuple[str, ...]] = ("schema", "kind", "corpus_sha", "num_docs", "build_s", "config")

    def to_dict(self) -> dict[str, Any]:
        clash = set(self.info) & set(self._FIELDS)
        if clash:
            raise ValueError(f"IndexMeta.info must not redefine {sorted(clash)}")
        return {"schema": self.schema, "kind": self.kind, "corpus_sha": self.corpus_sha, "num_docs": self.num_docs,
                "build_s": self.build_s, "config": self.config, **self.info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str | Path = "index metadata") -> "IndexMeta":
        if not isinstance(d.get("kind"), str):
            raise IndexMetaError(f"{where}: no 'kind' field (not an index written by recsparse)")
        info = {k: v for k, v in d.items() if k not in cls._FIELDS}
        num_docs = d.get("num_docs", info.get("documents"))  # "documents": impact indexes before schema 1
        return cls(kind=d["kind"], corpus_sha=d.get("corpus_sha"), num_docs=num_docs, build_s=d.get("build_s"),
                   config=dict(d.get("config") or {}), info=info, schema=int(d.get("schema", 0)))

    def save(self, path: str | Path) -> None:
        """Write ``path/recsparse.json`` (atomically)."""
        write_index_meta(path, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> "IndexMeta | None":
        """The metadata of index folder ``path``; ``None`` when it has no ``recsparse.json``."""
        try:
            d = read_index_meta(path)
        except (OSError, ValueError) as e:
            raise IndexMetaError(f"{Path(path) / INDEX_META}: unreadable index metadata ({e})") from None
        return cls.from_dict(d, Path(path) / INDEX_META) if d else None

    @classmethod
    def require(cls, path: str | Path, kind: str | None = None) -> "IndexMeta":
        """Like :meth:`read`, but a folder without metadata (or of another ``kind``) is an :class:`IndexMetaError`."""
        if not Path(path).is_dir():
            raise IndexNotFoundError(f"no index folder at {path}")
        meta = cls.read(path)
        if meta is None:
            raise IndexNotFoundError(f"{path}: no {INDEX_META} (not an index folder written by recsparse)")
        if kind is not None and meta.kind != kind:
            raise IndexMetaError(f"{path}: a {meta.kind!r} index, not {kind!r}")
        return meta

    def matches(self, kind: str, corpus_sha: str, config: Mapping[str, Any]) -> bool:
        """Was this index built by ``kind`` with ``config`` from the corpus ``corpus_sha``?"""
        return self.kind == kind and self.corpus_sha == corpus_sha and self.config == dict(config)


def check_corpus(name: str, meta: IndexMeta, corpus_sha: str, corpus_where: str | Path, index_path: Any) -> None:
    """Refuse to search an index built from another corpus (:class:`CorpusMismatchError`); warn when the index is
    too old to carry a fingerprint."""
    if meta.corpus_sha is None:
        warnings.warn(f"retriever {name!r}: index {index_path} records no corpus fingerprint (written by an older "
                      f"recsparse); cannot check that it indexes {corpus_where} — rebuild it to be sure",
                      stacklevel=3)
    elif meta.corpus_sha != corpus_sha:
        raise CorpusMismatchError(
            f"retriever {name!r}: index {index_path} was built from another corpus (fingerprint {meta.corpus_sha}) "
            f"than {corpus_where} (fingerprint {corpus_sha}); rebuild the index for this collection")


class Retriever(ABC):
    """The one search vocabulary of every backend. Subclasses set ``name`` and ``path`` (the open index folder)."""

    name: str
    path: Path | None = None

    def prepare(self) -> None:
        """One-off start-up (JVM, model load), kept out of index and search timings. Default: nothing."""

    @abstractmethod
    def index(self, corpus: "pl.DataFrame", path: str | Path, threads: int = 1) -> None:
        """Index ``corpus`` (``_id``, ``title``, ``text``) at ``path`` atomically and open it for search."""

    @classmethod
    @abstractmethod
    def open(cls, path: str | Path, name: str | None = None) -> "Retriever":
        """Re-open the saved index at ``path`` (its configuration comes from its metadata)."""

    def reuse(self, path: str | Path, corpus_sha: str) -> bool:
        """Open the index at ``path`` if this configuration built it from the corpus ``corpus_sha``; else False."""
        return False

    @property
    @abstractmethod
    def index_meta(self) -> IndexMeta | None:
        """Metadata of the open index; ``None`` while no index is open."""

    def index_info(self) -> dict[str, Any]:
        """Extra figures of the last ``index`` call for the report (e.g. encoding seconds). Default: none."""
        return {}

    @abstractmethod
    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The top-``k`` hits of one query, best first."""

    @abstractmethod
    def batch_search(self, queries: Mapping[str, str], k: int = 10, threads: int = 1) -> Run:
        """Top-``k`` hits of every query (query id -> text); every query id is a key of the result."""

    def close(self) -> None:
        """Release the engine's resources (searchers, GPU copies). Default: nothing."""


# index kind (``IndexMeta.kind``) -> the class that opens it, imported only when needed (torch, FAISS, the JVM)
KINDS: dict[str, str] = {
    "bm25": "recsparse.retrieval.lucene:BM25Retriever",
    "lucene": "recsparse.retrieval.lucene:BM25Retriever",
    "dense": "recsparse.retrieval.dense:DenseRetriever",
    "sparse-impact": "recsparse.retrieval.sparse.impact:ImpactRetriever",
    "fusion": "recsparse.retrieval.fusion:FusionRetriever",
}


def open_index(path: str | Path, name: str | None = None) -> Retriever:
    """Open any saved index folder with the retriever class its metadata names."""
    import importlib

    meta = IndexMeta.require(path)
    if meta.kind not in KINDS:
        raise IndexMetaError(f"{Path(path) / INDEX_META}: unknown index kind {meta.kind!r} (known: {sorted(KINDS)})")
    module, cls = KINDS[meta.kind].split(":")
    return getattr(importlib.import_module(module), cls).open(path, name=name)
