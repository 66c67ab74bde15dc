"""Learned sparse retrieval benchmark -> benchmarks/results/sparse.json (+ .md).

    # untrained shipped model (splade-tiny as shipped), indexed with 4 windows, per dataset
    python benchmarks/sparse_bench.py baseline --out runs/sparse-bench --datasets scifact --datasets cranfield --doc-windows 4
    # a finished `recsparse sparse run` folder (any settings) as labelled quality rows, + RRF hybrid with BM25
    python benchmarks/sparse_bench.py collect runs/sparse/if-idf-flops --label idf-flops
    # an index pruned to another's document nnz / FLOPS (equal-sparsity comparisons)
    python benchmarks/sparse_bench.py prune INDEX LIKE --dataset scifact --out DIR
    # timing (under the machine's timing lock): per-query latency vs BM25; encoding docs/s and training s/step
    flock /tmp/recsparse-timing.lock python benchmarks/sparse_bench.py latency --dataset scifact --index PATH --bm25-index PATH
    flock /tmp/recsparse-timing.lock python benchmarks/sparse_bench.py throughput

Records: ``dataset``, ``retriever``, ``measure`` ("quality" | "latency" | "mean" | "throughput"), metrics and
statistics, provenance.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import typer

from recsparse.results import print_table, provenance, save_results

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)
KEY = ("dataset", "retriever", "measure")
RUN_TIMINGS = ("reused_index", "search_s", "threads")  # per-invocation harness fields, not results


def _without_timings(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in RUN_TIMINGS}


def _save(rows: list[dict[str, Any]]) -> None:
    """Stamp ``rows`` with this invocation's command, commit and machine, and merge them into sparse.json."""
    prov = {k: v for k, v in provenance().items() if k != "wall_s"}
    for r in rows:
        r.update(prov)
    save_results("sparse", rows, KEY)


def _load(name: str):  # noqa: ANN202
    from recsparse.retrieval.sparse.pipeline import load_beir

    return load_beir(name)


def _summary(d: Path) -> dict[str, Any]:
    """What a `recsparse sparse run` folder holds so far: training info and every dataset whose evaluation finished
    (metrics.json with the sparse model, and sparse_stats.json), so a run still evaluating is usable."""
    tc = json.loads((d / "train" / "train_config.json").read_text())
    out: dict[str, Any] = {"train": tc, "eval": {}}
    for m in sorted(d.glob("*/metrics.json")):
        st = m.parent / "sparse_stats.json"
        if not st.is_file():
            continue
        stats = json.loads(st.read_text())
        out["eval"][m.parent.name] = [{**e["record"], **stats.get(name, {})}
                                      for name, e in json.loads(m.read_text())["retrievers"].items()]
    return out


def fusion_row(folder: Path, ds: str, name: str) -> dict[str, Any] | None:
    """RRF hybrid of BM25 and the sparse model ``name`` from an evaluation folder's saved TREC runs."""
    from recsparse.retrieval.evaluation import read_trec_run
    from recsparse.retrieval.harness import fuse_record

    m = json.loads((folder / "metrics.json").read_text())["retrievers"]
    if "bm25" not in m or name not in m:
        return None
    runs = {n: read_trec_run(folder / m[n]["run_file"]) for n in ("bm25", name)}
    dataset = _load(ds)
    rec, _, _ = fuse_record(dataset, runs, dataset.qrels_dict("test"), name=f"rrf(bm25+{name})",
                            parts=["bm25", name], method="rrf", k=100)
    return {k: v for k, v in rec.items() if k not in ("index_s", "search_qps", "search_s")} | {"measure": "quality"}


def prune_and_evaluate(src: Path, ds: str, nnz: float, flops: float, dest: Path,
                       tags: tuple[str, ...] = ("matched-nnz", "matched-flops")) -> list[dict[str, Any]]:
    """Prune the impact index ``src`` (one global impact threshold) down to ``nnz`` average document non-zeros
    ("matched-nnz") and to ``flops`` over ``ds``'s test queries ("matched-flops"), re-index, re-evaluate."""
    from recsparse.retrieval.harness import evaluate_retrievers
    from recsparse.retrieval.sparse.impact import ImpactRetriever, flops_estimate, read_json_vector_collection
    from recsparse.retrieval.sparse.pipeline import sparse_stats
    from recsparse.retrieval.sparse.quantize import prune_threshold, threshold_for_nnz

    ids, vecs = read_json_vector_collection(src / "collection")
    dataset = _load(ds)
    probe = ImpactRetriever.open(src)
    base, qv = probe.name, probe.query_vectors(list(dataset.split_queries("test").values()))
    probe.close()
    thr_nnz = threshold_for_nnz(vecs, nnz)
    thr_flops = thr_nnz
    while flops_estimate(qv, prune_threshold(vecs, thr_flops)) > flops and thr_flops < 10**5:
        thr_flops += 1
    recs = []
    for tag, thr in (("matched-nnz", thr_nnz), ("matched-flops", thr_flops)):
        if tag not in tags:
            continue
        name = f"{base}@{tag}"
        r = ImpactRetriever.open(src, name=name)
        r.refit_idf = False
        r.write(dest / tag / "indexes" / "pruned", ids, prune_threshold(vecs, thr),
                extra={"pruned_min_impact": thr, "source": str(src)},
                corpus_sha=r.meta["corpus_sha"])  # same documents: the harness can still check the corpus
        rows = evaluate_retrievers(dataset, {name: r}, split="test", k=100, out_dir=dest / tag)
        st = sparse_stats(r, dataset.split_queries("test"))
        r.close()
        rec = _without_timings(rows[0])
        rec.pop("index_s", None)
        rec.update(st, measure="quality", pruned_min_impact=thr, run_dir=str(dest / tag))
        recs.append(rec)
    return recs


@app.command()
def prune(index: Path = typer.Argument(..., help="Impact index folder to prune."),
          like: Path = typer.Argument(..., help="Impact index whose document nnz / FLOPS to match."),
          dataset: str = typer.Option(...), out: Path = typer.Option(...),
          label: str = typer.Option("", help="Suffix for the pruned retriever's name.")) -> None:
    """Prune INDEX to LIKE's average document non-zeros and FLOPS on DATASET's test queries, and evaluate: e.g. the
    FLOPS-trained model cut to the IDF-FLOPS one's sparsity, for a comparison at equal cost."""
    from recsparse.retrieval.sparse import open_retriever
    from recsparse.retrieval.sparse.pipeline import sparse_stats

    ref = open_retriever(like)
    st = sparse_stats(ref, _load(dataset).split_queries("test"))
    ref.close()
    rows = prune_and_evaluate(index, dataset, st["avg_doc_nnz"], st["flops"], out)
    for r in rows:
        if label:
            r["retriever"] = f"{r['retriever']}|{label}"
        r.update(matched_to=str(like), matched_nnz=st["avg_doc_nnz"], matched_flops=st["flops"])
    _save(rows)
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "flops"])


@app.command()
def fold(index: Path = typer.Argument(..., help="An inference-free impact index (not folded)."),
         dataset: str = typer.Option(...), out: Path = typer.Option(...)) -> None:
    """Fold INDEX's integer IDF query weights into its document impacts (no re-encoding), build and evaluate the
    folded index: its quality beside the unfolded one, and the index the latency command times."""
    from recsparse.retrieval.harness import evaluate_retrievers
    from recsparse.retrieval.sparse.impact import ImpactRetriever, read_json_vector_collection
    from recsparse.retrieval.sparse.pipeline import sparse_stats
    from recsparse.retrieval.sparse.quantize import fold_query_weights

    src = ImpactRetriever.open(index)
    if src.folded or src.variant != "inference-free":
        raise typer.BadParameter(f"{index}: needs an unfolded inference-free index")
    name = f"{src.name}|folded"
    ids, vecs = read_json_vector_collection(index / "collection")
    src.name, src.folded = name, True
    src.write(out / "indexes" / "folded", ids, fold_query_weights(vecs, src._query_ints(), src.scale),
              extra={"source": str(index), **{k: src.meta[k] for k in ("encode_docs_per_s", "encode_s")
                                              if k in src.meta}}, corpus_sha=src.meta["corpus_sha"])
    ds = _load(dataset)
    rows = evaluate_retrievers(ds, {name: src}, split="test", k=100, out_dir=out)
    st = sparse_stats(src, ds.split_queries("test"))
    src.close()
    rec = _without_timings(rows[0])
    rec.pop("index_s", None)
    rec.update(st, measure="quality", folded_from=str(index), run_dir=str(out))
    _save([rec])
    print_table([rec], columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "flops"])


def means(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean nDCG@10 / Recall@100 over the datasets each retriever was evaluated on (rows with measure="mean"); a mean
    of superseded rows says so."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["measure"] == "quality":
            by.setdefault(r["retriever"], []).append(r)
    out = []
    for name, rs in by.items():
        dss = sorted(r["dataset"] for r in rs)
        if len(dss) < 2:
            continue
        row = {"dataset": "mean(" + "+".join(dss) + ")", "retriever": name, "measure": "mean",
               "ndcg@10": round(statistics.fmean(r["ndcg@10"] for r in rs), 4),
               "recall@100": round(statistics.fmean(r["recall@100"] for r in rs), 4)}
        if all(r.get("superseded") for r in rs):
            row["superseded"] = rs[0]["superseded"]
        out.append(row)
    return out


def _percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]  # noqa: E731
    return {"p50_ms": round(q(0.50) * 1e3, 3), "p99_ms": round(q(0.99) * 1e3, 3),
            "mean_ms": round(statistics.fmean(xs) * 1e3, 3)}


@app.command()
def latency(dataset: str = typer.Option("scifact"), index: list[Path] = typer.Option(..., help="Impact index(es)."),
            bm25_index: Path = typer.Option(..., help="A BM25 index of the same corpus (harness indexes/bm25)."),
            k: int = typer.Option(10), repeats: int = typer.Option(3),
            warmup: int = typer.Option(1, min=1, help="Untimed passes over the queries first (JIT, caches); > 1: "
                                                      "rows get measure '...-warmupN'."),
            clock: str = typer.Option("wall", help="wall: elapsed time (run under /work/bin/heavy --timing); "
                                                   "thread-cpu: CPU time of the searching thread (Python and the "
                                                   "in-process JVM call run on it), which a loaded machine does not "
                                                   "inflate; rows get measure 'latency-cpu'."),
            python_gc: bool = typer.Option(True, "--python-gc/--no-python-gc",
                                           help="--no-python-gc: Python's cyclic collector off during the timed "
                                                "loop (a diagnosis of the tail; rows get measure '...-nogc')."),
            ) -> None:
    """Per-query single-thread latency of impact search vs BM25 over the same test queries.

    Besides p50/p99 over all timed calls, each row has the p99 over per-query MEDIANS (a tail made by costly queries
    stays there; one made by pauses -- collection, compilation, scheduling -- does not) and the p99 of each repeat
    (a tail that shrinks after the first repeat is warm-up)."""
    import gc

    import torch

    from recsparse.retrieval.lucene import BM25Retriever
    from recsparse.retrieval.sparse import open_retriever

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = _load(dataset)
    queries = list(ds.split_queries("test").values())
    bm25 = BM25Retriever.open(bm25_index)
    systems: dict[str, Any] = {"bm25": lambda q: bm25.search(q, k)}
    nnz: dict[str, float] = {}
    opened = []
    for path in index:
        r = open_retriever(path)
        opened.append(r)
        vecs = dict(zip(queries, r.query_vectors(queries)))
        systems[r.name] = (lambda r: lambda q: r.search(q, k))(r)
        systems[r.name + "|lucene-only"] = (lambda r, vecs: lambda q: r.search_vector(vecs[q], k))(r, vecs)
        nnz[r.name] = statistics.fmean(len(v) for v in vecs.values())
    if clock not in ("wall", "thread-cpu"):
        raise typer.BadParameter(f"--clock must be wall or thread-cpu, got {clock!r}")
    for _ in range(warmup):
        for q in queries:
            for f in systems.values():
                f(q)
    times: dict[str, list[float]] = {n: [] for n in systems}  # repeat-major: times[n][r * len(queries) + i]
    now = time.perf_counter if clock == "wall" else time.thread_time
    measure = (("latency" if clock == "wall" else "latency-cpu") + ("" if python_gc else "-nogc")
               + (f"-warmup{warmup}" if warmup > 1 else ""))
    gc.collect()
    if not python_gc:
        gc.disable()
    try:
        # interleaved: each query runs on every system back to back, so load on the shared machine hits all alike
        for _ in range(repeats):
            for q in queries:
                for n, f in systems.items():
                    s = now()
                    f(q)
                    times[n].append(now() - s)
    finally:
        gc.enable()

    def tail(xs: list[float]) -> dict[str, Any]:
        nq = len(queries)
        per_query = [statistics.median(xs[i::nq]) for i in range(nq)]
        return {**_percentiles(xs), "p99_query_median_ms": _percentiles(per_query)["p99_ms"],
                "p99_by_repeat_ms": [_percentiles(xs[r * nq:(r + 1) * nq])["p99_ms"] for r in range(repeats)]}

    base = tail(times["bm25"])
    rows = [{"dataset": ds.name, "retriever": "bm25", "measure": measure, **base}]
    for n in nnz:
        full, lucene = tail(times[n]), _percentiles(times[n + "|lucene-only"])
        rows.append({"dataset": ds.name, "retriever": n, "measure": measure, **full,
                     "p50_vs_bm25": round(full["p50_ms"] / base["p50_ms"], 3),
                     "p99_vs_bm25": round(full["p99_ms"] / base["p99_ms"], 3),
                     "p99_query_median_vs_bm25": round(full["p99_query_median_ms"] / base["p99_query_median_ms"], 3),
                     "lucene_only_p50_ms": lucene["p50_ms"], "lucene_only_p99_ms": lucene["p99_ms"],
                     "lucene_only_p50_vs_bm25": round(lucene["p50_ms"] / base["p50_ms"], 3),
                     "lucene_only_p99_vs_bm25": round(lucene["p99_ms"] / base["p99_ms"], 3),
                     "avg_query_nnz": round(nnz[n], 2)})
    for r in opened:
        r.close()
    prov = provenance(time.perf_counter() - t0)
    for row in rows:
        row.update(k=k, threads=1, queries=len(queries), repeats=repeats, warmup=warmup, clock=clock,
                   python_gc=python_gc, **prov)
    save_results("sparse", rows, KEY)
    print_table(rows, columns=["dataset", "retriever", "p50_ms", "p99_ms", "p50_vs_bm25", "p99_vs_bm25",
                               "p99_query_median_ms", "p99_query_median_vs_bm25", "p99_by_repeat_ms",
                               "lucene_only_p50_ms", "lucene_only_p50_vs_bm25", "avg_query_nnz"])


@app.command()
def baseline(out: Path = typer.Option(Path("runs/sparse-bench")), datasets: list[str] = typer.Option(["cranfield"]),
             model: str = typer.Option("splade-tiny", help="Shipped backbone or saved model (untrained reference)."),
             variant: str = typer.Option("inference-free"), doc_windows: int = typer.Option(1),
             bm25: bool = typer.Option(False, help="Also record BM25 rows (same harness run).")) -> None:
    """An untrained model (splade-tiny as shipped by default) through `recsparse sparse index`'s path."""
    from recsparse.retrieval.sparse.pipeline import index_dataset

    name = f"sparse-{variant}-untrained" + (f"-w{doc_windows}" if doc_windows > 1 else "")
    rows = []
    for ds in datasets:
        res = index_dataset(model, ds, out / name / ds, variant=variant, windows=doc_windows, with_bm25=bm25,
                            name=name, progress=False)
        rows += [_without_timings(r) | {"measure": "quality"} for r in res["records"]]
        for r in rows:
            if r["retriever"] == name:
                r.update(variant=variant, train_steps=0, backbone=model, doc_windows=doc_windows)
    rows += means(rows)
    _save(rows)
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "flops", "index_s"])


@app.command("means")
def means_command() -> None:
    """Recompute every retriever's mean row from its recorded quality rows (a mean over fewer datasets that a newer
    row set extends is replaced, not kept beside it)."""
    from recsparse.results import RESULTS_DIR, write_results

    recs = json.loads((RESULTS_DIR / "sparse.json").read_text())
    rows = means([r for r in recs if r.get("measure") == "quality"])
    prov = {k: v for k, v in provenance().items() if k != "wall_s"}
    for r in rows:
        r.update(prov)
    write_results("sparse", [r for r in recs if r.get("measure") != "mean"] + rows)
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100"])


@app.command()
def fuse(folder: Path = typer.Argument(..., help="An evaluation folder with BM25 and NAME runs (metrics.json)."),
         dataset: str = typer.Option(...), name: str = typer.Option(..., help="The sparse retriever's name.")) -> None:
    """RRF(BM25 + NAME) from an evaluation folder's saved runs (no re-encoding): the hybrid row."""
    row = fusion_row(folder, dataset, name)
    if row is None:
        raise typer.BadParameter(f"{folder}: metrics.json lacks bm25 or {name}")
    row["run_dir"] = str(folder)
    _save([row])
    print_table([row], columns=["dataset", "retriever", "ndcg@10", "recall@100"])


@app.command()
def collect(run_dir: Path = typer.Argument(..., help="A `recsparse sparse run --out` folder."),
            label: str = typer.Option(..., help="Suffix for the retriever name, e.g. 'idf-flops-100'."),
            bm25: bool = typer.Option(True, help="Also record the BM25 rows of the same harness runs."),
            fuse: bool = typer.Option(True, help="Also record RRF(BM25 + sparse) rows.")) -> None:
    """Record a finished `recsparse sparse run` (any settings) as labelled quality rows, with its command line."""
    s = _summary(run_dir)
    if not s["eval"]:
        raise typer.BadParameter(f"{run_dir}: no finished evaluation (no */metrics.json with sparse_stats.json)")
    cfg = s["train"]
    cmd = (run_dir / "command.txt").read_text().strip() if (run_dir / "command.txt").is_file() else None
    rows = []
    for ds, recs in s["eval"].items():
        for r in recs:
            if r["retriever"] == "bm25":
                if bm25:
                    rows.append(_without_timings(r) | {"measure": "quality"})
                continue
            name = r["retriever"]
            rows.append(_without_timings(r)
                        | {"retriever": f"{name}|{label}", "measure": "quality", "variant": cfg["variant"],
                           "reg": cfg["reg"], "loss": cfg["loss"], "train_datasets": "+".join(cfg["train_datasets"]),
                           "train_steps": cfg["steps"], "train_wall_s": cfg["wall_s"], "backbone": cfg["backbone"],
                           "doc_max_length": cfg["max_length"], "lambda_doc": cfg["lambda_doc"], "lr": cfg["lr"],
                           **{k: cfg[k] for k in ("scale", "freeze_vocabulary", "learn_idf", "freeze_document")
                              if k in cfg},
                           "run_dir": str(run_dir), "run_command": cmd})
            if fuse:
                f = fusion_row(run_dir / ds, ds, name)
                if f:
                    rows.append(f | {"retriever": f"rrf(bm25+{name}|{label})", "run_dir": str(run_dir)})
    rows += means(rows)
    _save(rows)
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "flops"])


@app.command()
def throughput(dataset: str = typer.Option("scifact"), model: str = typer.Option("splade-tiny"),
               docs: int = typer.Option(256), steps: int = typer.Option(4), threads: int = typer.Option(2),
               batch_size: int = typer.Option(16)) -> None:
    """Document encoding docs/s (fast inference path vs the model's own forward) and one training step's seconds
    (SpladeLoss forward + backward, 16 queries x (positive + negative), 128 word pieces) with the stack's
    SpladePooling vs our max-logit pooling. Run under flock."""
    import torch
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    from recsparse.retrieval.sparse import models as M
    from recsparse.retrieval.sparse.impact import encode_corpus
    from recsparse.retrieval.sparse.losses import IdfFlopsLoss

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ds = _load(dataset)
    m = M.build_model(model, "inference-free") if model in M.BACKBONES else M.load_model(model)
    texts = [M.text_of(a, b) for a, b in zip(ds.corpus["title"].to_list()[:docs], ds.corpus["text"].to_list()[:docs])]
    _, fast_dps = encode_corpus(m, texts, progress=False)
    with torch.inference_mode():
        s = time.perf_counter()
        for i in range(0, len(texts), 32):
            M.document_pipeline(m)(dict(M.tokenizer_of(m)(texts[i:i + 32], padding=True, truncation=True,
                                                          max_length=128, return_tensors="pt")))
        st_dps = len(texts) / (time.perf_counter() - s)
    m.train()
    loss = SpladeLoss(m, loss=SparseMultipleNegativesRankingLoss(m), document_regularizer_weight=1e-3,
                      document_regularizer=IdfFlopsLoss(m, torch.ones(M.vocab_size(m))))
    qs = ds.queries["text"].to_list()[:batch_size]
    tr, table = M.document_transformer(m), M.query_table(m)

    def step(i: int) -> float:
        q = table.preprocess(qs) | {"task": "query"}
        pos = tr.preprocess(texts[i * batch_size:(i + 1) * batch_size], task="document") | {"task": "document"}
        neg = tr.preprocess(texts[(i + 1) * batch_size:(i + 2) * batch_size], task="document") | {"task": "document"}
        s = time.perf_counter()
        sum(loss([q, pos, neg], None).values()).backward()
        m.zero_grad()
        return time.perf_counter() - s

    timed: dict[str, float] = {}
    for mode in ("splade_pooling", "max_logit_pooling", "splade_pooling_again"):
        if mode == "max_logit_pooling":
            with M.max_logit_pooling(m):
                ts = [step(i) for i in range(steps + 1)][1:]
        else:
            ts = [step(i) for i in range(steps + 1)][1:]
        timed[mode] = statistics.median(ts)
    ref = min(timed["splade_pooling"], timed["splade_pooling_again"])
    row = {"dataset": ds.name, "retriever": f"sparse-inference-free|{model}", "measure": "throughput",
           "encode_docs_per_s": round(fast_dps, 2), "encode_docs_per_s_st_forward": round(st_dps, 2),
           "encoded_docs": len(texts), "doc_max_length": 128,
           "train_step_s_splade_pooling": round(ref, 3), "train_step_s_max_logit": round(timed["max_logit_pooling"], 3),
           "train_step_speedup": round(ref / timed["max_logit_pooling"], 2), "train_steps_timed": steps,
           "threads": threads, **provenance(time.perf_counter() - t0)}
    save_results("sparse", [row], KEY)
    print_table([row], columns=["dataset", "encode_docs_per_s", "encode_docs_per_s_st_forward",
                                "train_step_s_splade_pooling", "train_step_s_max_logit", "train_step_speedup"])


if __name__ == "__main__":
    app()
