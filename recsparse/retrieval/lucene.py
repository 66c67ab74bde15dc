"""BM25 over Lucene (Anserini through Pyserini), and the general Lucene index builder other backends reuse.

* :func:`build_lucene_index` — write any documents as a collection (``JsonCollection``, ``BeirFlatCollection``,
  ``JsonVectorCollection`` for impact vectors ...) to a temp folder and run Anserini's ``IndexCollection`` into a temp
  index dir that is renamed over ``path`` only when the build succeeded; the previous index survives any failure.
* :class:`BM25Retriever` — BEIR "flat" (title + text in one ``contents`` field, Anserini's ``BeirFlatCollection``) or
  "multifield" (``title`` and ``contents`` fields, ``BeirMultifieldCollection``, each field weight 1.0), Lucene BM25
  with k1 = 0.9, b = 0.4 (Robertson & Zaragoza 2009; BEIR baselines: Thakur et al., NeurIPS 2021 Datasets track).

The JVM is reached only through :mod:`recsparse.retrieval.jvm`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from recsparse.data.beir import corpus_fingerprint
from recsparse.io import atomic_dir, release_build_dir, temp_build_dir
from recsparse.retrieval.base import IndexMeta, IndexMetaError, Retriever
from recsparse.retrieval.jvm import autoclass, ensure_jvm, pyserini_module
from recsparse.types import Hit, Run, check_choice, check_positive

if TYPE_CHECKING:
    import polars as pl

DEFAULT_INDEX_ARGS: tuple[str, ...] = ("-storePositions", "-storeDocvectors", "-storeRaw")


class IndexBuildError(RuntimeError):
    """Anserini's indexer reported errors or indexed nothing; the previous index (if any) is untouched."""


def write_jsonl(docs: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write ``docs`` (one JSON object each) to ``path``; returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def run_index_collection(input_dir: str | Path, index_dir: str | Path, *, collection: str = "JsonCollection",
                         generator: str = "DefaultLuceneDocumentGenerator", threads: int = 1,
                         extra_args: Sequence[str] = DEFAULT_INDEX_ARGS) -> dict[str, int]:
    """Run Anserini ``IndexCollection`` in-process; returns its counters (indexed, empty, unindexable, skipped, errors).

    ``extra_args`` are IndexCollection flags, e.g. ``("-impact", "-pretokenized")`` for impact vectors with
    ``JsonVectorCollection``, or ``("-fields", "title")`` for a multifield collection.
    """
    check_positive("threads", threads)
    argv = ["-input", str(input_dir), "-index", str(index_dir), "-collection", collection, "-generator", generator,
            "-threads", str(int(threads)), "-quiet", *extra_args]
    JArgs = autoclass("io.anserini.index.IndexCollection$Args")
    JParser = autoclass("org.kohsuke.args4j.CmdLineParser")
    JIndexCollection = autoclass("io.anserini.index.IndexCollection")
    jargv = autoclass("java.util.ArrayList")()
    for a in argv:
        jargv.add(a)
    args = JArgs()
    JParser(args).parseArgument(jargv)  # raises (CmdLineException) on an unknown flag, never System.exit
    indexer = JIndexCollection(args)
    indexer.run()
    c = indexer.getCounters()
    return {k: int(getattr(c, k).get()) for k in ("indexed", "empty", "unindexable", "skipped", "errors")}


def run_index_collection_isolated(input_dir: str | Path, index_dir: str | Path, *, collection: str = "JsonCollection",
                                  generator: str = "DefaultLuceneDocumentGenerator", threads: int = 1,
                                  extra_args: Sequence[str] = DEFAULT_INDEX_ARGS) -> dict[str, int]:
    """:func:`run_index_collection` in a child Python process with its own JVM (``python -m
    recsparse.retrieval.lucene``): for processes whose signal handlers may no longer suit the JVM (heavy torch
    training was seen to make in-process Anserini indexing threads die of SIGSEGV)."""
    cmd = [sys.executable, "-m", "recsparse.retrieval.lucene", json.dumps(
        {"input_dir": str(input_dir), "index_dir": str(index_dir), "collection": collection, "generator": generator,
         "threads": int(threads), "extra_args": list(extra_args)})]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise IndexBuildError(f"indexer child process for {input_dir} exited {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_lucene_index(docs: Iterable[Mapping[str, Any]], path: str | Path, *, collection: str = "JsonCollection",
                       generator: str = "DefaultLuceneDocumentGenerator", threads: int = 1,
                       extra_args: Sequence[str] = DEFAULT_INDEX_ARGS, meta: IndexMeta | None = None,
                       file_name: str = "docs.jsonl", isolate: bool = False,
                       _after_write: Callable[[Path], None] | None = None) -> dict[str, int]:
    """Build a Lucene index at ``path`` from ``docs`` atomically; returns Anserini's counters.

    ``docs`` are the JSON objects of ``collection``: ``{"id", "contents"}`` for ``JsonCollection``,
    ``{"_id", "title", "text"}`` for ``BeirFlatCollection`` / ``BeirMultifieldCollection``,
    ``{"id", "vector": {term: int weight}}`` for ``JsonVectorCollection`` (with ``extra_args=("-impact",
    "-pretokenized")``). The collection file is written to a temp folder; the index is built in a temp dir beside
    ``path`` and renamed over it only after Anserini reports no errors, so an interrupted or failed build leaves the
    previous index intact. ``meta`` is stored as ``recsparse.json`` inside the index (default: kind "lucene", no
    corpus fingerprint), with Anserini's settings and counters added to its ``info``. ``isolate`` runs Anserini in a
    child process (see :func:`run_index_collection_isolated`).
    """
    path = Path(path)
    t0 = time.perf_counter()
    # the collection is a full copy of the corpus: in the system temp dir, swept after a killed build (see io)
    coll = temp_build_dir("recsparse-coll-", suffix="")
    try:
        with atomic_dir(path) as tmp:
            n = write_jsonl(docs, coll / file_name)
            if _after_write is not None:  # test hook: fail between writing the collection and indexing
                _after_write(tmp)
            runner = run_index_collection_isolated if isolate else run_index_collection
            counters = runner(coll, tmp, collection=collection, generator=generator, threads=threads,
                              extra_args=extra_args)
            if counters["errors"] or counters["indexed"] == 0 and n > 0:
                raise IndexBuildError(f"Anserini IndexCollection({collection}) into {path}: {counters} for {n} "
                                      f"documents")
            meta = meta or IndexMeta(kind="lucene", corpus_sha=None, num_docs=n)
            meta.info.update(collection=collection, generator=generator, index_args=list(extra_args),
                             documents_written=n, counters=counters)
            meta.build_s = round(time.perf_counter() - t0, 3)
            meta.save(tmp)
    finally:
        release_build_dir(coll)
    return counters


def beir_docs(corpus: "pl.DataFrame") -> Iterable[dict[str, str]]:
    """Corpus rows as BEIR jsonl objects (``_id``, ``title``, ``text``)."""
    has_title = "title" in corpus.columns
    for row in corpus.select(["_id", "title", "text"] if has_title else ["_id", "text"]).iter_rows():
        yield {"_id": row[0], "title": row[1] or "" if has_title else "", "text": row[-1] or ""}


@dataclass
class BM25Config:
    """BM25 parameters and the BEIR field setting ("flat": title + text in ``contents``; "multifield")."""

    k1: float = 0.9
    b: float = 0.4
    fields: str = "flat"
    title_weight: float = 1.0
    contents_weight: float = 1.0

    def __post_init__(self) -> None:
        check_positive("k1", self.k1)
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {self.b!r}")
        check_choice("fields", self.fields, ("flat", "multifield"))
        check_positive("title_weight", self.title_weight)
        check_positive("contents_weight", self.contents_weight)


_COLLECTION = {"flat": "BeirFlatCollection", "multifield": "BeirMultifieldCollection"}


class BM25Retriever(Retriever):
    """Lucene BM25 with the :class:`~recsparse.retrieval.base.Retriever` vocabulary.

    ``index(corpus, path)`` builds (atomically) and opens the index; ``BM25Retriever.open(path)`` reopens one.
    ``batch_search`` uses Anserini's multi-threaded batch search.
    """

    def __init__(self, config: BM25Config | None = None, name: str | None = None) -> None:
        self.config = config or BM25Config()
        self.name = name or ("bm25" if self.config.fields == "flat" else "bm25-multifield")
        self.path: Path | None = None
        self._searcher: Any = None
        self._meta: IndexMeta | None = None

    def prepare(self) -> None:
        """Start the JVM and import Pyserini's searcher (one-off cost kept out of index/search timings)."""
        pyserini_module("pyserini.search.lucene")

    # --- index ---------------------------------------------------------------------------------------------------
    def index(self, corpus: "pl.DataFrame", path: str | Path, threads: int = 1, isolate: bool = False) -> None:
        """Index ``corpus`` (``_id``, ``title``, ``text``) at ``path`` and open it for search (``isolate``: run
        Anserini's indexer in a child process, see :func:`run_index_collection_isolated`)."""
        extra = list(DEFAULT_INDEX_ARGS)
        if self.config.fields == "multifield":
            extra += ["-fields", "title"]
        self.close()
        build_lucene_index(beir_docs(corpus), path, collection=_COLLECTION[self.config.fields], threads=threads,
                           extra_args=extra, file_name="corpus.jsonl", isolate=isolate,
                           meta=IndexMeta(kind="bm25", corpus_sha=corpus_fingerprint(corpus), num_docs=corpus.height,
                                          config=asdict(self.config)))
        self._open(path)

    def reuse(self, path: str | Path, corpus_sha: str) -> bool:
        """Open the index at ``path`` if it was built by this configuration from the corpus ``corpus_sha``."""
        meta = IndexMeta.read(path)
        if meta is None or not meta.matches("bm25", corpus_sha, asdict(self.config)):
            return False
        self.close()
        self._open(path, meta)
        return True

    @classmethod
    def open(cls, path: str | Path, name: str | None = None, config: BM25Config | None = None) -> "BM25Retriever":
        """Open a saved Lucene index (built by :meth:`index` or :func:`build_lucene_index`); the field setting is read
        from its metadata unless ``config`` overrides it."""
        meta = IndexMeta.require(path)
        if meta.kind not in ("bm25", "lucene"):
            raise IndexMetaError(f"{path}: a {meta.kind!r} index, not a Lucene text index for BM25")
        if config is None:
            config = BM25Config(**meta.config) if meta.kind == "bm25" else BM25Config()
        r = cls(config, name=name)
        r._open(path, meta)
        return r

    def _open(self, path: str | Path, meta: IndexMeta | None = None) -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no Lucene index at {path}")
        searcher = pyserini_module("pyserini.search.lucene").LuceneSearcher(str(path))
        searcher.set_bm25(float(self.config.k1), float(self.config.b))
        self._searcher, self.path = searcher, path
        self._meta = meta if meta is not None else IndexMeta.read(path)

    @property
    def index_meta(self) -> IndexMeta | None:
        return self._meta if self._searcher is not None else None

    @property
    def searcher(self) -> Any:
        """The underlying Pyserini ``LuceneSearcher`` (for comparisons with raw Pyserini)."""
        if self._searcher is None:
            raise RuntimeError(f"{self.name}: no index open; call index(corpus, path) or {type(self).__name__}.open")
        return self._searcher

    @property
    def num_docs(self) -> int:
        return int(self.searcher.num_docs)

    def close(self) -> None:
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None
        self._meta = None

    # --- search --------------------------------------------------------------------------------------------------
    def _fields(self) -> dict[str, float]:
        if self.config.fields == "flat":
            return {}
        return {"contents": self.config.contents_weight, "title": self.config.title_weight}

    def search(self, query: str, k: int = 10) -> list[Hit]:
        check_positive("k", k)
        ensure_jvm()  # re-installs the JVM's signal handlers if a library (e.g. Lightning) replaced them
        hits = self.searcher.search(query, int(k), fields=self._fields())
        return [Hit(h.docid, float(h.score)) for h in hits]

    def batch_search(self, queries: Mapping[str, str], k: int = 10, threads: int = 1) -> Run:
        check_positive("k", k)
        check_positive("threads", threads)
        ensure_jvm()
        qids = list(queries)
        res = self.searcher.batch_search([queries[q] for q in qids], qids, int(k), int(threads),
                                         fields=self._fields())
        return {q: [Hit(h.docid, float(h.score)) for h in res.get(q, [])] for q in qids}


if __name__ == "__main__":  # child of run_index_collection_isolated: one JSON argument, prints the counters as JSON
    _a = json.loads(sys.argv[1])
    print(json.dumps(run_index_collection(_a["input_dir"], _a["index_dir"], collection=_a["collection"],
                                          generator=_a["generator"], threads=_a["threads"],
                                          extra_args=_a["extra_args"])))
