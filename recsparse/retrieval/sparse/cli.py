"""``recsparse sparse``: learned sparse retrieval on sentence-transformers ``SparseEncoder`` models.

Examples::

    # index any BEIR collection (registered name or folder) with a shipped, saved or named sparse model
    recsparse sparse index --model splade-tiny --dataset scifact --out runs/splade-tiny-scifact --doc-windows 4

    # train on train splits (SciFact + NFCorpus), evaluate their test splits and Cranfield zero-shot
    recsparse sparse run --dataset scifact --dataset nfcorpus --eval cranfield --out runs/sparse

Outputs follow ``recsparse beir`` (metrics.json, report.md, runs/); every impact index works with
``recsparse beir --retriever sparse:PATH``; a trained model is a sentence-transformers folder
(``SparseEncoder("OUT/train/model")``).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Learned sparse retrieval: index, train, encode, impact-index, evaluate.",
                  no_args_is_help=True)


def _record_command(out: Path) -> None:
    from recsparse.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "command.txt", "w") as f:  # how to reproduce this folder
        f.write(shlex.join(["recsparse", *sys.argv[1:]]) + "\n")


@app.command("index")
def index_command(
    model: str = typer.Option(..., help="splade-tiny | minilm (shipped backbones, untrained), a saved "
                                        "sentence-transformers sparse model folder, or a hub id (cached; offline)."),
    dataset: str = typer.Option(..., help="Registered BEIR name or a BEIR-format folder."),
    out: Path = typer.Option(..., help="Output folder."),
    variant: str = typer.Option("inference-free", help="For a shipped backbone: inference-free | splade."),
    doc_windows: int = typer.Option(1, min=1, help="Index up to this many max_length windows per document "
                                                   "(max-pooled)."),
    split: str = typer.Option("test", help="Evaluate this split when the collection judges it ('' = no evaluation)."),
    bm25: bool = typer.Option(False, help="Evaluate BM25 beside the sparse model."),
    refit_idf: bool = typer.Option(True, help="Inference-free with a frozen IDF table: use this corpus' IDF."),
    fold_idf: bool = typer.Option(False, help="Inference-free: fold the IDF query weights into the document impacts "
                                              "(a query is one string call into Anserini; scores rounded per term)."),
    k: int = typer.Option(100, min=1, help="Retrieval depth."),
    progress: bool = typer.Option(True, help="Progress bar while encoding."),
) -> None:
    """Encode a BEIR collection, quantise, build the Lucene impact index (and evaluate if judged)."""
    from recsparse.results import print_table
    from recsparse.retrieval.sparse.pipeline import index_dataset

    _record_command(out)
    res = index_dataset(model, dataset, out, variant=variant, windows=doc_windows, refit_idf=refit_idf,
                        split=split or None, k=k, with_bm25=bm25, progress=progress, fold_idf=fold_idf)
    m = res["meta"]
    if res["records"]:
        print_table(res["records"], columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz",
                                             "avg_query_nnz", "flops", "index_s", "encode_docs_per_s"])
    else:
        typer.echo(f"{m['documents']} documents, {m['postings']} postings, avg doc nnz {m['avg_doc_nnz']:.1f}, "
                   f"index_s {m['index_s']:.1f} (encode {m['encode_docs_per_s']:.1f} docs/s)")
    typer.echo(f"impact index: {res['index']}  (recsparse beir --retriever sparse:{res['index']})")


@app.command("run")
def run_command(
    overrides: Optional[List[str]] = typer.Argument(None, help="Training config overrides KEY=VALUE (e.g. lr=2e-5 "
                                                               "reg_schedule=linear); win over the options and "
                                                               "--config."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with training config keys (see "
                                                                 "recsparse.retrieval.sparse.training.SparseTrainConfig); "
                                                                 "its values win over the options."),
    dataset: List[str] = typer.Option(["scifact"], help="BEIR collection(s) to train on (train split; repeatable) "
                                                        "and test on."),
    variant: str = typer.Option("inference-free", help="inference-free | splade"),
    reg: str = typer.Option("idf-flops", help="idf-flops | flops | none"),
    loss: str = typer.Option("mnrl", help="mnrl (InfoNCE + BM25 negatives) | kl | margin-mse (distillation)"),
    teacher: str = typer.Option("dense+bm25", help="Distillation teacher: dense+bm25 | dense | bm25"),
    backbone: str = typer.Option("splade-tiny", help="splade-tiny | minilm | a saved sparse model folder"),
    eval_: List[str] = typer.Option([], "--eval", help="Extra BEIR collections to evaluate zero-shot (repeatable)."),
    test_train_sets: bool = typer.Option(True, help="Also evaluate the test split of each --dataset."),
    out: Path = typer.Option(Path("runs/sparse"), help="Output folder."),
    max_steps: int = typer.Option(150, help="Optimiser steps."),
    batch_size: int = typer.Option(16, help="Queries per step (each with 1 positive + --negatives BM25 negatives)."),
    negatives: int = typer.Option(1, help="BM25 hard negatives per query."),
    positives_per_query: int = typer.Option(0, help="Cap on judged positives per training query (0 = all; NFCorpus "
                                                    "judges ~43 per query and would otherwise drown SciFact)."),
    max_length: int = typer.Option(128, help="Document word pieces (per window)."),
    doc_windows: int = typer.Option(1, help="Index up to this many max_length windows per document (max-pooled)."),
    lambda_doc: float = typer.Option(5e-3, help="Document regulariser weight (after the ramp)."),
    lambda_query: float = typer.Option(5e-3, help="Query FLOPS weight (siamese only)."),
    reg_schedule: str = typer.Option("quadratic", help="Regulariser ramp: quadratic | linear"),
    reg_warmup_ratio: float = typer.Option(1 / 3, help="Fraction of the steps over which the regulariser ramps up."),
    lr: float = typer.Option(5e-5, help="AdamW learning rate."),
    learn_idf: bool = typer.Option(False, help="Inference-free: learn the query IDF table."),
    k: int = typer.Option(100, help="Retrieval depth."),
    bm25: bool = typer.Option(True, help="Evaluate BM25 beside the sparse model."),
    progress: bool = typer.Option(True, help="Progress bars (off: one log line per 10 steps)."),
    seed: int = typer.Option(13),
) -> None:
    """Train (train splits only), encode, quantise, build the Lucene impact index and evaluate."""
    from recsparse.results import print_table
    from recsparse.retrieval.sparse.pipeline import run
    from recsparse.retrieval.sparse.training import SparseTrainConfig

    from recsparse.config import load

    options = dict(variant=variant, reg=reg, loss=loss, teacher=teacher, backbone=backbone, max_length=max_length,
                   doc_windows=doc_windows, max_steps=max_steps, batch_size=batch_size, negatives=negatives,
                   positives_per_query=positives_per_query,
                   lambda_doc=lambda_doc, lambda_query=lambda_query, reg_schedule=reg_schedule,
                   reg_warmup_ratio=reg_warmup_ratio, lr=lr, learn_idf=learn_idf, seed=seed)
    cfg = load(SparseTrainConfig, config, overrides or (), defaults=options)  # typed: one ConfigError line per bad value
    _record_command(out)
    summary = run(dataset, cfg, out, eval_datasets=eval_, k=k, with_bm25=bm25, progress=progress,
                  test_train_sets=test_train_sets)
    rows = [r for recs in summary["eval"].values() for r in recs]
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "avg_query_nnz",
                               "flops", "index_s", "search_qps"],
                title=f"trained {summary['train']['steps']} steps in {summary['train']['wall_s']:.0f} s")
    typer.echo(f"outputs under {out}; model: {out / 'train' / 'model'}")


@app.command("stats")
def stats_command(path: Path = typer.Argument(..., help="A saved impact retriever folder."),
                  dataset: Optional[str] = typer.Option(None, help="Also FLOPS / query nnz over this test split.")) -> None:
    """Print a saved impact index's statistics."""
    import json

    from recsparse.retrieval.sparse import open_retriever

    r = open_retriever(path)
    out = dict(r.meta)
    if dataset:
        from recsparse.retrieval.sparse.pipeline import load_beir, sparse_stats

        out.update(sparse_stats(r, load_beir(dataset).split_queries("test")))
    typer.echo(json.dumps(out, indent=2, default=str))
