"""BEIR retrieval benchmarks -> benchmarks/results/beir.json (+ .md), printed as tables.

Sections (``--sections``, default all):

* ``eval`` — every retriever on every shared BEIR-format collection (SciFact, Cranfield, NFCorpus; test split,
  top 100; ``--retrievers`` picks a subset):
  BM25 flat and multifield (Lucene/Anserini via Pyserini), all-MiniLM-L6-v2 with FAISS Flat / HNSW32 / IVF-PQ,
  hybrid = RRF (k=60) of BM25 flat + dense Flat, and min-max interpolation (α = 0.5) of the same two runs.
  Records: ndcg@10, recall@100, mrr@10, map@100 (ir_measures), index_s (index build; dense: FAISS build from
  the cached corpus embeddings, with ``encode_docs_per_s`` measured separately), search_qps (end to end, single
  thread, query encoding included for dense), and the reference figure with the difference where one exists
  (``reference_source`` says whether it is published — SciFact, NFCorpus — or our own measurement — Cranfield).
  Collections with graded qrels (Cranfield) also get ``ndcg@10_binary`` (every grade > 0 counted as 1).
* ``overhead`` — recsparse ``BM25Retriever.batch_search`` (and batch search + evaluation) vs raw Pyserini
  ``LuceneSearcher.batch_search`` on the same SciFact index and queries, 1 and 2 threads: all three measured side
  by side in one run (interleaved rounds, median), and the hits checked identical. ``overhead_ratio`` =
  recsparse / raw from those same rounds. The two things recsparse adds — converting Pyserini's hits to ``Hit``
  objects (``convert_s``) and evaluating the run (``evaluate_s``) — are reported as timings of their own, not
  folded into a ratio.
* ``faiss`` — on the largest shared corpus (SciFact, 5,183 docs) with all its 1,109 queries pre-encoded: QPS
  (FAISS search only, 1 thread) and recall@10 relative to exact ``IndexFlatIP`` (the Flat top 10 taken as the
  judged set, scored by ir_measures) for HNSW32 at several efSearch and IVF-PQ at several nprobe.

Corpus embeddings are cached (~/.cache/recsparse/embeddings). Fill the cache first (slow, no timing), then run the
timed sections alone::

    RECSPARSE_DATA=/work/shared/data nice -n 10 python benchmarks/beir_bench.py --warm
    RECSPARSE_DATA=/work/shared/data flock /tmp/recsparse-timing.lock python benchmarks/beir_bench.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from recsparse.results import print_table, provenance, save_results

AREA = "beir"
KEY = ["bench", "dataset", "retriever"]
DATASETS = ("scifact", "cranfield", "nfcorpus")
RETRIEVERS = ("bm25", "bm25-multifield", "dense", "dense-hnsw", "dense-ivfpq")
COLUMNS = {
    "eval": ["dataset", "retriever", "ndcg@10", "recall@100", "mrr@10", "map@100", "index_s", "search_qps",
             "reference_ndcg@10", "delta_ndcg@10", "reference_recall@100", "delta_recall@100", "ndcg@10_binary"],
    "overhead": ["dataset", "retriever", "threads", "rounds", "raw_pyserini_s", "recsparse_s", "overhead_ratio",
                 "recsparse_eval_s", "eval_overhead_ratio", "convert_s", "evaluate_s", "identical_hits"],
    "faiss": ["dataset", "retriever", "factory", "param", "build_s", "search_qps", "recall@10_vs_flat",
              "speedup_vs_flat"],
}


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` (robust to neighbours' noise)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _interleaved(fns: list[Callable[[], Any]], repeats: int, warmup: int = 2) -> list[float]:
    """Median seconds of each of ``fns``, run in turn within every round (no order or JIT-warm-up bias between
    them; neighbours' noise hits all alike)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    ts: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            ts[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def warm(datasets: tuple[str, ...]) -> None:
    from recsparse.data import load
    from recsparse.retrieval.dense import Encoder, embed_corpus

    enc = Encoder()
    for name in datasets:
        t0 = time.perf_counter()
        emb = embed_corpus(enc, load(name).corpus)
        print(f"{name}: embeddings {emb.shape} ready in {time.perf_counter() - t0:.1f} s (cache)")


def encode_rate(dataset: Any, n: int = 256) -> float:
    """Documents/s of MiniLM encoding (batch 64, 2 torch threads) on the first ``n`` documents."""
    from recsparse.retrieval.dense import Encoder, doc_texts

    enc = Encoder()
    texts = doc_texts(dataset.corpus.head(n))
    enc.encode(texts[:64])  # warm-up
    t0 = time.perf_counter()
    enc.encode(texts)
    return n / (time.perf_counter() - t0)


def bench_eval(work: Path, datasets: tuple[str, ...], retrievers: tuple[str, ...] = RETRIEVERS
               ) -> list[dict[str, Any]]:
    from recsparse.data import load
    from recsparse.retrieval.cli import make_retriever
    from recsparse.retrieval.evaluation import evaluate
    from recsparse.retrieval.harness import evaluate_retrievers, reference_figures, reference_source

    records = []
    for name in datasets:
        ds = load(name)
        refs = reference_figures(ds)
        rate = encode_rate(ds) if any(r.startswith("dense") for r in retrievers) else None
        t0 = time.perf_counter()
        runs: dict[str, Any] = {}
        fusions = [{"name": "hybrid", "parts": ["bm25", "dense"], "method": "rrf", "k_rrf": 60},
                   {"name": "hybrid-interp", "parts": ["bm25", "dense"], "method": "interpolation", "alpha": 0.5}]
        recs = evaluate_retrievers(
            ds, {r: make_retriever(r) for r in retrievers}, split="test", k=100, out_dir=work / name, threads=1,
            keep_runs=runs, fusions=fusions if {"bm25", "dense"} <= set(retrievers) else [])
        wall = time.perf_counter() - t0
        for r in recs:
            base = {"hybrid-interp": "hybrid"}.get(r["retriever"], r["retriever"])
            rec = {"bench": "eval", **{k: v for k, v in r.items() if k not in ("reused_index",)}}
            for m in ("ndcg@10", "recall@100"):
                ref = refs.get(f"{base}:{m}")
                if ref is not None:
                    rec[f"reference_{m}"] = ref
                    rec[f"delta_{m}"] = round(r[m] - ref, 4)
                    rec["reference_source"] = reference_source(ds)
            if (ds.qrels_for("test")["score"] > 1).any():  # graded qrels: also nDCG with every grade > 0 as 1
                rec["ndcg@10_binary"] = round(evaluate(runs[r["retriever"]], ds.qrels_dict("test"), ["ndcg@10"],
                                                       binary_relevance=True)["ndcg@10"], 4)
            if r["retriever"].startswith("dense") and rate is not None:
                rec["encode_docs_per_s"] = round(rate, 1)
            records.append({**rec, **provenance(wall)})
    return records


def bench_overhead(work: Path, repeats: int = 9) -> list[dict[str, Any]]:
    from recsparse.data import load
    from recsparse.retrieval.evaluation import evaluate
    from recsparse.retrieval.jvm import pyserini_module
    from recsparse.retrieval.lucene import BM25Retriever
    from recsparse.types import Hit

    ds = load("scifact")
    r = BM25Retriever()
    r.index(ds.corpus, work / "overhead-bm25")
    raw = pyserini_module("pyserini.search.lucene").LuceneSearcher(str(work / "overhead-bm25"))
    raw.set_bm25(0.9, 0.4)
    queries = ds.split_queries("test")
    qids, texts = list(queries), list(queries.values())
    qrels = ds.qrels_dict("test")
    records = []
    for threads in (1, 2):
        t0 = time.perf_counter()
        raw_res = raw.batch_search(texts, qids, 100, threads)
        ours = r.batch_search(queries, 100, threads)
        same = all([h.docid for h in raw_res[q]] == [h.docid for h in ours[q]] for q in qids)
        t_raw, t_ours, t_eval = _interleaved([lambda: raw.batch_search(texts, qids, 100, threads),
                                              lambda: r.batch_search(queries, 100, threads),
                                              lambda: evaluate(r.batch_search(queries, 100, threads), qrels)],
                                             repeats)
        # what recsparse adds to Pyserini's call, timed alone: Java hits -> Hit objects; and evaluation of the run
        run = r.batch_search(queries, 100, threads)
        t_conv, t_evalonly = _interleaved([lambda: {q: [Hit(h.docid, float(h.score)) for h in raw_res[q]]
                                                    for q in qids},
                                           lambda: evaluate(run, qrels)], repeats)
        records.append({"bench": "overhead", "dataset": "scifact", "retriever": f"bm25 threads={threads}",
                        "threads": threads, "queries": len(qids), "rounds": repeats,
                        "raw_pyserini_s": round(t_raw, 4), "recsparse_s": round(t_ours, 4),
                        "overhead_ratio": round(t_ours / t_raw, 3), "recsparse_eval_s": round(t_eval, 4),
                        "eval_overhead_ratio": round(t_eval / t_raw, 3), "convert_s": round(t_conv, 4),
                        "evaluate_s": round(t_evalonly, 4), "identical_hits": same,
                        **provenance(time.perf_counter() - t0)})
    return records


def bench_faiss(work: Path, repeats: int = 5) -> list[dict[str, Any]]:
    import faiss

    from recsparse.data import load
    from recsparse.retrieval.dense import DenseConfig, DenseRetriever, Encoder, embed_corpus
    from recsparse.retrieval.evaluation import evaluate
    from recsparse.types import Hit

    ds = load("scifact")  # the largest shared BEIR-format corpus
    enc = Encoder()
    emb = embed_corpus(enc, ds.corpus)
    qv = enc.encode(ds.queries["text"].to_list())
    qids = ds.queries["_id"].to_list()
    faiss.omp_set_num_threads(1)

    def run_of(r: DenseRetriever, k: int = 10) -> dict[str, list[Hit]]:
        scores, rows = r.search_vectors(qv, k, threads=1)
        return {q: [Hit(r._docids[j], float(s)) for s, j in zip(scores[i], rows[i]) if j >= 0]
                for i, q in enumerate(qids)}

    def build(cfg: DenseConfig, tag: str) -> tuple[DenseRetriever, float]:
        r = DenseRetriever(cfg, encoder=enc)
        t0 = time.perf_counter()
        r.index(ds.corpus, work / f"faiss-{tag}", embeddings=emb)
        return r, time.perf_counter() - t0

    flat, flat_build = build(DenseConfig(index="flat"), "flat")
    exact = run_of(flat)
    truth = {q: {h.docid: 1 for h in hits} for q, hits in exact.items()}
    t_flat = _median_time(lambda: flat.search_vectors(qv, 10, 1), repeats)
    records = [{"bench": "faiss", "dataset": "scifact", "retriever": "dense-flat", "factory": "Flat", "param": "",
                "build_s": round(flat_build, 3), "search_qps": round(len(qids) / t_flat, 1),
                "recall@10_vs_flat": 1.0, "speedup_vs_flat": 1.0, "queries": len(qids), **provenance()}]
    variants = [("hnsw", {"ef_search": ef}, f"efSearch={ef}") for ef in (16, 64, 128)]
    variants += [("ivfpq", {"nprobe": p}, f"nprobe={p}") for p in (1, 8, 32)]
    variants += [("ivfpq", {"nprobe": p, "pq_m": 96}, f"pq_m=96 nprobe={p}") for p in (8, 32)]
    built: dict[tuple[str, int], tuple[DenseRetriever, float]] = {}
    for kind, kw, param in variants:
        pq_m = kw.get("pq_m", 48)
        if (kind, pq_m) not in built:
            built[kind, pq_m] = build(DenseConfig(index=kind, pq_m=pq_m), f"{kind}{pq_m}")
        r, b = built[kind, pq_m]
        r.config = DenseConfig(index=kind, **kw)
        r._tune(r._index, build=False)
        t = _median_time(lambda: r.search_vectors(qv, 10, 1), repeats)
        rec10 = evaluate(run_of(r), truth, ["recall@10"])["recall@10"]
        factory = json.loads((r.path / "recsparse.json").read_text())["factory"]
        records.append({"bench": "faiss", "dataset": "scifact", "retriever": f"dense-{kind} {param}",
                        "factory": factory, "param": param, "build_s": round(b, 3),
                        "search_qps": round(len(qids) / t, 1), "recall@10_vs_flat": round(rec10, 4),
                        "speedup_vs_flat": round(t_flat / t, 2), "queries": len(qids), **provenance()})
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", default="eval,overhead,faiss")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--retrievers", default=",".join(RETRIEVERS), help="eval section: which retrievers (hybrid "
                                                                       "rows need bm25 and dense)")
    ap.add_argument("--repeats", type=int, default=9, help="overhead section: interleaved rounds")
    ap.add_argument("--warm", action="store_true", help="only fill the embedding cache (no timing), then exit")
    ap.add_argument("--work", default=None, help="folder for indexes and runs (default: a temp dir)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    datasets = tuple(d for d in args.datasets.split(",") if d)
    if args.warm:
        warm(datasets)
        return
    with tempfile.TemporaryDirectory(prefix="beir-bench-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        for section in args.sections.split(","):
            if section == "eval":
                recs = bench_eval(work, datasets, tuple(r for r in args.retrievers.split(",") if r))
            elif section == "overhead":
                recs = bench_overhead(work, args.repeats)
            elif section == "faiss":
                recs = bench_faiss(work)
            else:
                raise SystemExit(f"unknown section {section!r}; choose from eval, overhead, faiss")
            save_results(AREA, recs, KEY)
            print_table(recs, COLUMNS[section], title=f"beir: {section}")


if __name__ == "__main__":
    main()
