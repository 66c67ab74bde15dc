"""beir side of ``benchmarks/peers_bench.py``; runs with the PEERS venv's python (beir 2.2.0), not ours.

Modes (one JSON object to ``--out``):

* ``score`` — TREC run files (``--runs NAME=PATH ...``) scored by ``EvaluateRetrieval.evaluate`` against the
  folder's qrels as ``GenericDataLoader`` reads them, with ``ignore_identical_ids`` True (beir's default) and False.
* ``dense`` — a whole BEIR evaluation with beir's exact dense search: ``GenericDataLoader.load`` ->
  ``DenseRetrievalExactSearch`` (cos_sim, top 100) -> ``EvaluateRetrieval.evaluate``. Queries are encoded by beir's
  own ``models.SentenceBERT`` wrapper on the local all-MiniLM-L6-v2 folder; corpus vectors come from ``--corpus-emb``
  (the SAME cached MiniLM embeddings our harness uses, rows in corpus.jsonl order, ids in ``--corpus-ids``), so no
  side pays for corpus encoding. Writes the run to ``--run-out`` (TREC) for the cross-check, and the timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

K_VALUES = [10, 100]


def read_trec(path: str) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    with open(path) as f:
        for line in f:
            q, _, d, _, s, _ = line.split()
            run.setdefault(q, {})[d] = float(s)
    return run


def metrics(qrels, run, ignore_identical_ids: bool) -> dict[str, float]:
    from beir.retrieval.evaluation import EvaluateRetrieval

    run = {q: dict(h) for q, h in run.items()}  # evaluate() pops self hits in place
    ndcg, _map, recall, _p = EvaluateRetrieval.evaluate(qrels, run, K_VALUES, ignore_identical_ids=ignore_identical_ids)
    return {"ndcg@10": ndcg["NDCG@10"], "recall@100": recall["Recall@100"]}


def cmd_score(a: argparse.Namespace) -> dict:
    from beir.datasets.data_loader import GenericDataLoader

    _, _, qrels = GenericDataLoader(data_folder=a.folder).load(split=a.split)
    out = {}
    for spec in a.runs:
        name, path = spec.split("=", 1)
        run = read_trec(path)
        out[name] = {"beir_default": metrics(qrels, run, True), "keep_identical_ids": metrics(qrels, run, False),
                     "queries_in_run": len(run), "queries_in_qrels": len(qrels)}
    return out


def cmd_dense(a: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval import models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch as DRES

    torch.set_num_threads(a.threads)
    emb = np.load(a.corpus_emb)
    row = {d: i for i, d in enumerate(json.loads(Path(a.corpus_ids).read_text()))}

    class CachedCorpusSBERT(models.SentenceBERT):
        """beir's SentenceBERT for queries; corpus rows looked up in the shared embedding cache by ``_id``."""

        def encode_corpus(self, corpus, batch_size=8, **kwargs):
            return torch.from_numpy(emb[[row[d["_id"]] for d in corpus]])

    t_model = time.perf_counter()
    model = CachedCorpusSBERT(a.model)
    model_s = time.perf_counter() - t_model
    t0, c0 = time.perf_counter(), time.process_time()
    corpus, queries, qrels = GenericDataLoader(data_folder=a.folder).load(split=a.split)
    for d, doc in corpus.items():
        doc["_id"] = d
    t1 = time.perf_counter()
    retriever = EvaluateRetrieval(DRES(model, batch_size=a.batch_size, show_progress_bar=False), k_values=K_VALUES,
                                  score_function="cos_sim")
    results = retriever.retrieve(corpus, queries)
    t2 = time.perf_counter()
    m = metrics(qrels, results, True)
    t3, c3 = time.perf_counter(), time.process_time()
    with open(a.run_out, "w") as f:
        for q, hits in results.items():
            for rank, (d, s) in enumerate(sorted(hits.items(), key=lambda x: -x[1]), 1):
                f.write(f"{q} Q0 {d} {rank} {s:.6f} beir_dres\n")
    return {"load_s": round(t1 - t0, 3), "search_s": round(t2 - t1, 3), "evaluate_s": round(t3 - t2, 3),
            "end_to_end_s": round(t3 - t0, 3), "end_to_end_cpu_s": round(c3 - c0, 3), "model_load_s": round(model_s, 2), "num_queries": len(queries),
            "threads": a.threads, "batch_size": a.batch_size, **m,
            "keep_identical_ids": metrics(qrels, results, False)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["score", "dense"])
    p.add_argument("--folder", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default="test")
    p.add_argument("--runs", nargs="*", default=[])
    p.add_argument("--model", default=None, help="local sentence-transformers folder (dense)")
    p.add_argument("--corpus-emb", default=None)
    p.add_argument("--corpus-ids", default=None)
    p.add_argument("--run-out", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    logging.disable(logging.WARNING)
    res = {"score": cmd_score, "dense": cmd_dense}[a.mode](a)
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(a.out)


if __name__ == "__main__":
    main()
