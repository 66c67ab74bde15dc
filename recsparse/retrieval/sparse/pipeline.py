"""train -> encode -> impact index -> evaluate, the one loop behind ``recsparse sparse run`` and the benchmark."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from recsparse.data import load
from recsparse.data.beir import BeirDataset
from recsparse.retrieval.sparse.impact import ImpactRetriever, flops_estimate
from recsparse.retrieval.sparse.encoders import SparseModel
from recsparse.retrieval.sparse.training import TrainConfig, TrainResult, train


def sparse_stats(retriever: ImpactRetriever, queries: Mapping[str, str]) -> dict[str, Any]:
    """Index size, postings, average document / query non-zeros and FLOPS (Paria et al.) over ``queries``."""
    from recsparse.retrieval.sparse.impact import read_json_vector_collection

    assert retriever.path is not None
    _, docs = read_json_vector_collection(retriever.path / "collection")
    qv = retriever.query_vectors(list(queries.values()))
    m = retriever.meta
    return {"index_bytes": m["index_bytes"], "postings": m["postings"], "terms": m["terms"],
            "avg_doc_nnz": round(m["avg_doc_nnz"], 2),
            "avg_query_nnz": round(sum(len(v) for v in qv) / max(1, len(qv)), 2),
            "flops": round(flops_estimate(qv, docs), 4),
            **({"encode_docs_per_s": round(m["encode_docs_per_s"], 2)} if "encode_docs_per_s" in m else {})}


# encoder settings that only change how documents are indexed, not what is trained
INDEX_ONLY = ("doc_windows", "doc_stride")


def _same_config(path: Path, cfg: TrainConfig) -> bool:
    """Was ``path``'s training run made with ``cfg`` (indexing-only settings aside)?"""
    def training_part(c: dict) -> dict:
        c = dict(c)
        c["encoder"] = {k: v for k, v in (c.get("encoder") or {}).items() if k not in INDEX_ONLY}
        return c

    prev = training_part(json.loads(path.read_text()))
    return all(prev.get(k) == v for k, v in training_part(json.loads(json.dumps(asdict(cfg)))).items())


def with_index_settings(model: SparseModel, cfg: TrainConfig) -> SparseModel:
    """``model`` set to index documents as ``cfg.encoder`` says (windows), whatever it was trained with."""
    model.config = replace(model.config, **{k: getattr(cfg.encoder, k) for k in INDEX_ONLY})
    return model


def model_name(cfg: TrainConfig) -> str:
    return f"sparse-{cfg.variant}-{cfg.reg}"


def _prebuild_bm25(dataset: BeirDataset, path: Path) -> None:
    """Build (or keep) the BM25 index the harness will reuse, with Anserini in a child process: Lucene indexing
    threads in a process that already trained/ran torch models were seen to die of SIGSEGV (see
    lucene.run_index_collection_isolated)."""
    from recsparse.retrieval.lucene import BM25Retriever

    r = BM25Retriever()
    if not (path.is_dir() and r.reuse(path, dataset.fingerprint)):
        r.index(dataset.corpus, path, isolate=True)
    r.close()


def evaluate_model(model: SparseModel, dataset: BeirDataset, out_dir: str | Path, name: str, *, split: str = "test",
                   k: int = 100, with_bm25: bool = True, threads: int = 1) -> list[dict[str, Any]]:
    """Index ``dataset`` with ``model`` and evaluate (BM25 beside it) through the BEIR harness; adds sparse stats."""
    from recsparse.retrieval.harness import evaluate_retrievers
    from recsparse.retrieval.lucene import BM25Retriever

    out_dir = Path(out_dir)
    retrievers: dict[str, Any] = {name: ImpactRetriever(model, name=name)}
    if with_bm25:
        _prebuild_bm25(dataset, out_dir / "indexes" / "bm25")
        retrievers["bm25"] = BM25Retriever()
    records = evaluate_retrievers(dataset, retrievers, split=split, k=k, out_dir=out_dir, threads=threads)
    stats = sparse_stats(retrievers[name], dataset.split_queries(split))
    for r in records:
        if r["retriever"] == name:
            r.update(stats)
    (out_dir / "sparse_stats.json").write_text(json.dumps({name: stats}, indent=2) + "\n")
    retrievers[name].close()
    return records


def run(dataset: str, cfg: TrainConfig, out: str | Path, *, eval_datasets: Sequence[str] = (), k: int = 100,
        with_bm25: bool = True, threads: int = 1, progress: bool = True) -> dict[str, Any]:
    """Train on ``dataset`` (train split), then evaluate on its test split and each of ``eval_datasets`` (zero-shot).

    Layout: ``out/train`` (model, checkpoints, config), ``out/<eval dataset>/`` (metrics.json, report.md, runs/,
    indexes/<name>/ — the impact index, re-openable with ``open_retriever``).
    """
    out = Path(out)
    ds = load(dataset)
    if not isinstance(ds, BeirDataset):
        raise ValueError(f"{dataset!r} is not a BEIR-format collection")
    done = out / "train" / "train_config.json"
    if done.is_file() and (out / "train" / "model" / "model.pt").is_file() and _same_config(done, cfg):
        # resume: the training part of an earlier invocation with the same config finished; evaluate its model
        prev = json.loads(done.read_text())
        res = TrainResult(SparseModel.load(out / "train" / "model"), prev["wall_s"], prev["steps"], prev["examples"],
                          out / "train" / "model")
    else:
        res = train(ds, cfg, out / "train", progress=progress)
    name = model_name(cfg)
    summary: dict[str, Any] = {"train": {"dataset": ds.name, "wall_s": round(res.wall_s, 2), "steps": res.steps,
                                         "examples": res.examples, "config": asdict(cfg)}, "eval": {}}
    for ev in [dataset, *[e for e in eval_datasets if e != dataset]]:
        eds = ds if ev == dataset else load(ev)
        # fresh copy: indexing refits the inference-free IDF per corpus
        model = with_index_settings(SparseModel.load(res.model_dir), cfg)
        recs = evaluate_model(model, eds, out / eds.name, name, k=k, with_bm25=with_bm25, threads=threads)
        summary["eval"][eds.name] = recs
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
