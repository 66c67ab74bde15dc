"""index / train -> encode -> impact index -> evaluate: the loops behind ``recsparse sparse`` and the benchmark."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from recsparse.data import load
from recsparse.data.beir import BeirDataset
from recsparse.errors import UserError
from recsparse.retrieval.sparse.impact import ImpactRetriever, flops_estimate, read_json_vector_collection
from recsparse.retrieval.sparse.models import load_model
from recsparse.retrieval.sparse.training import SparseTrainConfig, TrainResult, train


def load_beir(name_or_folder: str) -> BeirDataset:
    """A registered BEIR name or a BEIR-format folder, as a user error (one line) when it is neither."""
    ds = load(name_or_folder)
    if not isinstance(ds, BeirDataset):
        raise UserError(f"{name_or_folder!r} is not a BEIR-format collection (corpus.jsonl, queries.jsonl, qrels/)")
    return ds


def sparse_stats(retriever: ImpactRetriever, queries: Mapping[str, str]) -> dict[str, Any]:
    """Index size, postings, average document / query non-zeros and FLOPS (Paria et al.) over ``queries``."""
    assert retriever.path is not None
    _, docs = read_json_vector_collection(retriever.path / "collection")
    qv = retriever.query_vectors(list(queries.values()))
    m = retriever.meta
    return {"index_bytes": m["index_bytes"], "postings": m["postings"], "terms": m["terms"],
            "avg_doc_nnz": round(m["avg_doc_nnz"], 2),
            "avg_query_nnz": round(sum(len(v) for v in qv) / max(1, len(qv)), 2),
            "flops": round(flops_estimate(qv, docs), 4), "doc_windows": m.get("doc_windows", 1),
            **{k: m[k] for k in ("encode_docs_per_s", "encode_s") if k in m}}


def model_name(cfg: SparseTrainConfig) -> str:
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


def evaluate_model(model, dataset: BeirDataset, out_dir: str | Path, name: str, *, split: str = "test",  # noqa: ANN001
                   k: int = 100, with_bm25: bool = True, threads: int = 1, windows: int = 1, stride: int = 16,
                   refit_idf: bool = True, progress: bool = True, fold_idf: bool = False) -> list[dict[str, Any]]:
    """Index ``dataset`` with ``model`` (a SparseEncoder) and evaluate ``split`` (BM25 beside it) through the BEIR
    harness; adds sparse stats. ``index_s`` covers encoding and the Lucene build."""
    from recsparse.retrieval.harness import evaluate_retrievers
    from recsparse.retrieval.lucene import BM25Retriever

    if split not in dataset.qrels:
        raise UserError(f"{dataset.folder}: no qrels/{split}.tsv to evaluate (splits: {', '.join(sorted(dataset.qrels))})")
    out_dir = Path(out_dir)
    retrievers: dict[str, Any] = {name: ImpactRetriever(model, name=name, windows=windows, stride=stride,
                                                        refit_idf=refit_idf, progress=progress, fold_idf=fold_idf)}
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


def index_dataset(model_name_or_path: str, dataset: str, out: str | Path, *, variant: str = "inference-free",
                  windows: int = 1, stride: int = 16, refit_idf: bool = True, split: str | None = "test",
                  k: int = 100, with_bm25: bool = False, threads: int = 1, name: str | None = None,
                  progress: bool = True, fold_idf: bool = False) -> dict[str, Any]:
    """``recsparse sparse index``: encode any BEIR collection with any shipped, saved or named sparse model and
    build its impact index at ``out/index``; evaluate ``split`` when the collection has judgments for it.

    Returns ``{"index": path, "meta": index metadata, "records": harness records or []}``.
    """
    from recsparse.retrieval.sparse.models import BACKBONES, build_model

    ds = load_beir(dataset)
    model = build_model(model_name_or_path, variant) if model_name_or_path in BACKBONES else load_model(
        model_name_or_path)
    out = Path(out)
    name = name or f"sparse-{Path(str(model_name_or_path)).name}"
    if split and split in ds.qrels:
        recs = evaluate_model(model, ds, out, name, split=split, k=k, with_bm25=with_bm25, threads=threads,
                              windows=windows, stride=stride, refit_idf=refit_idf, progress=progress,
                              fold_idf=fold_idf)
        from recsparse.retrieval.harness import safe_name

        path = out / "indexes" / safe_name(name)
        return {"index": path, "meta": json.loads((path / "recsparse.json").read_text()), "records": recs}
    import time

    r = ImpactRetriever(model, name=name, windows=windows, stride=stride, refit_idf=refit_idf, progress=progress,
                        fold_idf=fold_idf)
    t0 = time.perf_counter()
    r.index(ds.corpus, out / "index", threads=threads)
    r.meta["index_s"] = round(time.perf_counter() - t0, 3)
    r.close()
    return {"index": out / "index", "meta": r.meta, "records": []}


def run(datasets: Sequence[str], cfg: SparseTrainConfig, out: str | Path, *, eval_datasets: Sequence[str] = (),
        k: int = 100, with_bm25: bool = True, threads: int = 1, progress: bool = True,
        test_train_sets: bool = True) -> dict[str, Any]:
    """Train on the train split of every collection in ``datasets`` (pooled), then evaluate the test split of each of
    them (unless ``test_train_sets`` is False) and of each of ``eval_datasets`` (zero-shot).

    Layout: ``out/train`` (model -- a sentence-transformers folder --, train_config.json), ``out/<eval dataset>/``
    (metrics.json, report.md, runs/, indexes/<name>/ -- the impact index, re-openable with ``open_retriever``).
    """
    out = Path(out)
    train_sets = [load_beir(d) for d in datasets]
    for ds in train_sets:  # before any model is built: a collection without judged training queries
        if cfg.split not in ds.qrels:
            raise UserError(f"{ds.folder}: no qrels/{cfg.split}.tsv, so nothing to train on (splits: "
                            f"{', '.join(sorted(ds.qrels)) or 'none'}); to index it with a shipped or saved model "
                            f"use: recsparse sparse index --model splade-tiny --dataset {ds.folder} --out DIR")
    evals = [load_beir(e) for e in eval_datasets if e not in datasets]
    done = out / "train" / "train_config.json"
    if done.is_file() and (out / "train" / "model" / "modules.json").is_file() and _same_config(done, cfg, datasets):
        prev = json.loads(done.read_text())  # resume: this training already finished; evaluate its model
        res = TrainResult(None, prev["wall_s"], prev["steps"], prev["examples"], out / "train" / "model")
    else:
        res = train(train_sets, cfg, out / "train", progress=progress)
    name = model_name(cfg)
    summary: dict[str, Any] = {"train": {"datasets": [d.name for d in train_sets], "wall_s": round(res.wall_s, 2),
                                         "steps": res.steps, "examples": res.examples, "config": asdict(cfg)},
                               "eval": {}}
    for eds in [*(train_sets if test_train_sets else []), *evals]:
        model = load_model(res.model_dir)  # fresh copy: indexing refits the inference-free IDF per corpus
        summary["eval"][eds.name] = evaluate_model(model, eds, out / eds.name, name, k=k, with_bm25=with_bm25,
                                                   threads=threads, windows=cfg.doc_windows, stride=cfg.doc_stride,
                                                   progress=progress)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


INDEX_ONLY = ("doc_windows", "doc_stride")  # settings that change indexing, not training


def _same_config(path: Path, cfg: SparseTrainConfig, datasets: Sequence[str]) -> bool:
    prev = json.loads(path.read_text())
    now = json.loads(json.dumps(asdict(cfg)))
    return (all(prev.get(k) == v for k, v in now.items() if k not in INDEX_ONLY)
            and prev.get("train_datasets") == [load_beir(d).name for d in datasets])
