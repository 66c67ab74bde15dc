"""Fusion of runs: reciprocal rank fusion and normalised score interpolation, plus a fused :class:`Retriever`.

* RRF (Cormack, Clarke & Büttcher, SIGIR 2009): ``score(d) = Σ_r w_r / (k + rank_r(d))``, ranks 1-based, a document
  absent from a run contributes nothing; k = 60.
* Interpolation (the hybrid of e.g. Ma et al. 2021, "A replication study of dense passage retriever"):
  each run's scores are min-max normalised per query to [0, 1]; ``score(d) = α·a(d) + (1 − α)·b(d)``, a document
  absent from a run gets that run's normalised minimum, 0.

Ties in a fused run are broken by doc id (ascending) so fusion is deterministic.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from recsparse.data.beir import corpus_fingerprint
from recsparse.retrieval.base import IndexMeta, Retriever, open_index, safe_name
from recsparse.types import Hit, Run, check_choice, check_positive

if TYPE_CHECKING:
    import polars as pl

FUSION_METHODS = ("rrf", "interpolation")


def _ranked(scores: Mapping[str, float], k: int | None) -> list[Hit]:
    hits = sorted(scores.items(), key=lambda t: (-t[1], t[0]))
    return [Hit(d, s) for d, s in (hits if k is None else hits[:k])]


def rrf(runs: Sequence[Run], k: int = 60, depth: int | None = None, weights: Sequence[float] | None = None,
        top: int | None = None) -> Run:
    """Reciprocal rank fusion of ``runs``; ``depth`` caps the ranks read from each run, ``top`` the hits kept."""
    check_positive("k", k)
    if not runs:
        raise ValueError("rrf needs at least one run")
    weights = list(weights) if weights is not None else [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"weights has {len(weights)} entries for {len(runs)} runs")
    out: Run = {}
    for q in dict.fromkeys(q for r in runs for q in r):
        acc: dict[str, float] = {}
        for run, w in zip(runs, weights):
            for rank, h in enumerate(run.get(q, [])[:depth] if depth else run.get(q, []), 1):
                acc[h.docid] = acc.get(h.docid, 0.0) + w / (k + rank)
        out[q] = _ranked(acc, top)
    return out


def minmax(hits: Sequence[Hit]) -> dict[str, float]:
    """Scores min-max normalised to [0, 1] (all equal -> all 1.0)."""
    if not hits:
        return {}
    lo, hi = min(h.score for h in hits), max(h.score for h in hits)
    if hi == lo:
        return {h.docid: 1.0 for h in hits}
    return {h.docid: (h.score - lo) / (hi - lo) for h in hits}


def interpolate(run_a: Run, run_b: Run, alpha: float = 0.5, top: int | None = None) -> Run:
    """``α · minmax(a) + (1 − α) · minmax(b)`` per query; a document missing from one run scores 0 there."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    out: Run = {}
    for q in dict.fromkeys([*run_a, *run_b]):
        a, b = minmax(run_a.get(q, [])), minmax(run_b.get(q, []))
        out[q] = _ranked({d: alpha * a.get(d, 0.0) + (1 - alpha) * b.get(d, 0.0) for d in {*a, *b}}, top)
    return out


def fuse(runs: Sequence[Run], method: str = "rrf", *, k_rrf: int = 60, alpha: float = 0.5,
         top: int | None = None) -> Run:
    """Dispatch to :func:`rrf` (any number of runs) or :func:`interpolate` (exactly two; α weighs the first)."""
    check_choice("method", method, FUSION_METHODS)
    if method == "rrf":
        return rrf(runs, k=k_rrf, top=top)
    if len(runs) != 2:
        raise ValueError(f"interpolation fuses exactly two runs, got {len(runs)}")
    return interpolate(runs[0], runs[1], alpha=alpha, top=top)


class FusionRetriever(Retriever):
    """A :class:`Retriever` over other retrievers: each is indexed under ``path/<safe_name(name)>``, searched to
    ``depth`` and the runs fused (``method`` "rrf" or "interpolation"). ``path/recsparse.json`` names the parts, so
    ``FusionRetriever.open(path)`` re-opens the whole thing."""

    def __init__(self, retrievers: Sequence[Retriever], method: str = "rrf", *, k_rrf: int = 60, alpha: float = 0.5,
                 depth: int = 1000, name: str | None = None) -> None:
        check_choice("method", method, FUSION_METHODS)
        check_positive("depth", depth)
        if len(retrievers) < 2:
            raise ValueError("FusionRetriever needs at least two retrievers")
        names = [r.name for r in retrievers]
        if len(set(names)) != len(names):
            raise ValueError(f"FusionRetriever parts need distinct names (index folders), got {names}")
        self.retrievers = list(retrievers)
        self.method, self.k_rrf, self.alpha, self.depth = method, k_rrf, alpha, depth
        self.name = name or f"{method}({'+'.join(names)})"
        self.path: Path | None = None
        self._meta: IndexMeta | None = None
        fuse([{}] * len(self.retrievers), method, k_rrf=k_rrf, alpha=alpha)  # validates arity / alpha now

    def _config(self) -> dict:
        return {"method": self.method, "k_rrf": self.k_rrf, "alpha": self.alpha, "depth": self.depth,
                "parts": [r.name for r in self.retrievers]}

    def prepare(self) -> None:
        for r in self.retrievers:
            r.prepare()

    def index(self, corpus: "pl.DataFrame", path: str | Path, threads: int = 1) -> None:
        path = Path(path)
        t0 = time.perf_counter()
        for r in self.retrievers:
            r.index(corpus, path / safe_name(r.name), threads=threads)
        self._write_meta(path, corpus_fingerprint(corpus), corpus.height, time.perf_counter() - t0)

    def _write_meta(self, path: Path, sha: str, num_docs: int, build_s: float) -> None:
        meta = IndexMeta(kind="fusion", corpus_sha=sha, num_docs=num_docs, build_s=round(build_s, 3),
                         config=self._config())
        path.mkdir(parents=True, exist_ok=True)
        meta.save(path)
        self.path, self._meta = path, meta

    def reuse(self, path: str | Path, corpus_sha: str) -> bool:
        path = Path(path)
        meta = IndexMeta.read(path)
        if meta is None or not meta.matches("fusion", corpus_sha, self._config()):
            return False
        if not all(r.reuse(path / safe_name(r.name), corpus_sha) for r in self.retrievers):
            return False
        self.path, self._meta = path, meta
        return True

    @classmethod
    def open(cls, path: str | Path, name: str | None = None) -> "FusionRetriever":
        path = Path(path)
        meta = IndexMeta.require(path, kind="fusion")
        c = meta.config
        parts = [open_index(path / safe_name(part), name=part) for part in c["parts"]]
        r = cls(parts, c["method"], k_rrf=c["k_rrf"], alpha=c["alpha"], depth=c["depth"], name=name)
        r.path, r._meta = path, meta
        return r

    @property
    def index_meta(self) -> IndexMeta | None:
        return self._meta

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.batch_search({"q": query}, k)["q"]

    def batch_search(self, queries: Mapping[str, str], k: int = 10, threads: int = 1) -> Run:
        check_positive("k", k)
        runs = [r.batch_search(queries, max(k, self.depth), threads=threads) for r in self.retrievers]
        return fuse(runs, self.method, k_rrf=self.k_rrf, alpha=self.alpha, top=k)

    def close(self) -> None:
        for r in self.retrievers:
            r.close()
        self._meta = None
