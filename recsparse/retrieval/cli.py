"""``recsparse beir``: evaluate retrievers on a BEIR-format collection (registered name or folder).

Example::

    recsparse beir --dataset scifact --retriever bm25 --retriever dense --retriever hybrid --out runs/scifact

Writes ``runs/<retriever>.trec``, ``metrics.json`` and ``report.md`` under ``--out`` and prints the metrics table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from recsparse.errors import ConfigError, UserError
from recsparse.retrieval.base import IndexNotFoundError, Retriever

RETRIEVERS = ("bm25", "bm25-multifield", "dense", "dense-hnsw", "dense-ivfpq", "hybrid", "sparse:PATH")
COLUMNS = ["retriever", "ndcg@10", "recall@100", "mrr@10", "map@100", "index_s", "search_qps"]


_ENCODERS: dict[str, Any] = {}


def make_retriever(spec: str, *, model: str = "all-MiniLM-L6-v2", cache_dir: Optional[Path] = None) -> Retriever:
    """A retriever from its CLI name (``bm25``, ``bm25-multifield``, ``dense``, ``dense-hnsw``, ``dense-ivfpq``,
    ``sparse:PATH``)."""
    if spec == "bm25":
        from recsparse.retrieval.lucene import BM25Config, BM25Retriever

        return BM25Retriever(BM25Config(fields="flat"))
    if spec == "bm25-multifield":
        from recsparse.retrieval.lucene import BM25Config, BM25Retriever

        return BM25Retriever(BM25Config(fields="multifield"))
    if spec in ("dense", "dense-flat", "dense-hnsw", "dense-ivfpq"):
        from recsparse.retrieval.dense import DenseConfig, DenseRetriever, Encoder

        kind = "flat" if spec in ("dense", "dense-flat") else spec.split("-", 1)[1]
        if model not in _ENCODERS:  # one loaded model shared by every dense variant
            _ENCODERS[model] = Encoder(model)
        return DenseRetriever(DenseConfig(model=model, index=kind), name=spec, cache_dir=cache_dir,
                              encoder=_ENCODERS[model])
    if spec.startswith("sparse:"):
        path = spec.split(":", 1)[1]
        if not path:
            raise ConfigError("--retriever sparse:PATH needs a path, e.g. sparse:runs/splade/index")
        if not Path(path).is_dir():
            raise IndexNotFoundError(f"--retriever {spec}: no saved sparse retriever at {path}")
        from recsparse.retrieval.sparse import open_retriever

        r = open_retriever(path)
        if not r.name or r.name == "sparse":
            r.name = spec
        return r
    raise ConfigError(f"--retriever: unknown retriever {spec!r}; choose from {', '.join(RETRIEVERS)}")


def plan(specs: List[str], fusion: str, alpha: float, parts: tuple[str, str] = ("bm25", "dense"),
         k_rrf: int = 60) -> tuple[list[str], list[dict[str, Any]]]:
    """Split requested names into base retrievers (deduplicated, in order) and fusion specs (``hybrid`` = fusion of
    ``parts``, which are added to the base retrievers when not requested)."""
    if len(parts) != 2 or "hybrid" in parts or parts[0] == parts[1]:
        raise ConfigError(f"--hybrid-of: need two different retrievers (not hybrid), got {','.join(parts)!r}")
    base: list[str] = []
    fusions: list[dict[str, Any]] = []
    for s in specs:
        if s == "hybrid":
            for part in parts:
                if part not in base:
                    base.append(part)
            fusions.append({"name": "hybrid", "parts": list(parts), "method": fusion, "alpha": alpha,
                            "k_rrf": k_rrf})
        elif s not in base:
            base.append(s)
    return base, fusions


def command(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Registered BEIR dataset name (scifact, cranfield) "
                                                            "or a BEIR-format folder."),
    retriever: List[str] = typer.Option(["bm25"], "--retriever", "-r",
                                        help="bm25 | bm25-multifield | dense | dense-hnsw | dense-ivfpq | hybrid | "
                                             "sparse:PATH (repeatable)."),
    split: str = typer.Option("test", "--split", help="qrels split (qrels/<split>.tsv)."),
    k: int = typer.Option(100, "--k", min=1, help="hits retrieved per query."),
    out: Path = typer.Option(Path("runs/beir"), "--out", "-o", help="output folder (runs, metrics.json, report.md)."),
    threads: int = typer.Option(1, "--threads", min=1, help="search threads."),
    drop_self_hits: bool = typer.Option(False, "--drop-self-hits", help="drop hits whose doc id equals the query id "
                                                                         "(ArguAna/Quora-style) before evaluation."),
    binary_relevance: bool = typer.Option(False, "--binary-relevance", help="count every qrels grade > 0 as 1 "
                                                                            "(nDCG without the grade scale)."),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help="where indexes live (default OUT/indexes); "
                                                                        "a matching saved index is reused."),
    fusion: str = typer.Option("rrf", "--fusion", help="hybrid fusion: rrf (k=60) | interpolation."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="interpolation weight of the first "
                                                                       "hybrid part."),
    hybrid_of: str = typer.Option("bm25,dense", "--hybrid-of", help="the two retrievers 'hybrid' fuses, e.g. "
                                                                      "bm25,sparse:PATH."),
    k_rrf: int = typer.Option(60, "--k-rrf", min=1, help="RRF constant k."),
    model: str = typer.Option("all-MiniLM-L6-v2", "--model", help="dense encoder: all-MiniLM-L6-v2 (offline "
                                                                  "package) or a sentence-transformers folder."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="embedding cache (default "
                                                                       "~/.cache/recsparse/embeddings)."),
) -> None:
    """Evaluate retrievers on a BEIR-format collection: TREC runs, metrics.json, report.md and a metrics table."""
    from recsparse.data import BeirDataset, load
    from recsparse.results import print_table
    from recsparse.retrieval.fusion import FUSION_METHODS
    from recsparse.retrieval.harness import evaluate_retrievers

    if fusion not in FUSION_METHODS:
        raise ConfigError(f"--fusion: unknown method {fusion!r}; choose from {', '.join(FUSION_METHODS)}")
    ds = load(dataset)  # DataError (a UserError) names the dataset / file:line
    if not isinstance(ds, BeirDataset):
        raise UserError(f"--dataset {dataset!r} is not a BEIR-format collection (corpus.jsonl, queries.jsonl, "
                        f"qrels/)")
    if split not in ds.qrels:
        raise UserError(f"{ds.folder}: no qrels/{split}.tsv (splits: {', '.join(sorted(ds.qrels)) or 'none'})")
    base, fusions = plan(list(retriever), fusion, alpha, tuple(p.strip() for p in hybrid_of.split(",")), k_rrf)
    retrievers = {name: make_retriever(name, model=model, cache_dir=cache_dir) for name in base}
    # a sparse retriever reports under its own name (from its saved metadata)
    key = {name: (r.name if name.startswith("sparse:") else name) for name, r in retrievers.items()}
    for f in fusions:
        f["parts"] = [key[p] for p in f["parts"]]
    records = evaluate_retrievers(ds, {key[name]: r for name, r in retrievers.items()},
                                  split=split, k=k, out_dir=out, threads=threads, drop_self_hits=drop_self_hits,
                                  index_dir=index_dir, fusions=fusions, binary_relevance=binary_relevance)
    print_table(records, COLUMNS, title=f"{ds.name} / {split}: {len(ds.split_queries(split))} queries, "
                                        f"{ds.corpus.height} documents")
    typer.echo(f"wrote {out / 'metrics.json'}, {out / 'report.md'}, {out / 'runs'}/")
