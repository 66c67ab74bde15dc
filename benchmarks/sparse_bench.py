"""Learned sparse retrieval benchmark -> benchmarks/results/sparse.json (+ .md).

Two parts (run the timing part under the machine's timing lock):

    # quality: train each variant x regulariser on SciFact train (reuses OUT/<variant>_<reg>/summary.json if present),
    # evaluate SciFact test + Cranfield (zero-shot) beside BM25, add FLOPS-vs-IDF-FLOPS at matched document sparsity
    python benchmarks/sparse_bench.py quality --out runs/sparse-bench

    # latency: single-thread per-query search, impact index vs BM25 on the same Lucene, p50 / p99
    flock /tmp/recsparse-timing.lock python benchmarks/sparse_bench.py latency --out runs/sparse-bench

Records: ``dataset``, ``retriever``, ``measure`` ("quality" | "latency" | "mean"), metrics and statistics, provenance.
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
CONFIGS = ("inference-free:idf-flops", "inference-free:flops", "splade:idf-flops", "splade:flops")
RUN_TIMINGS = ("index_s", "reused_index", "search_s", "threads")  # per-invocation harness fields, not results


def _without_timings(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in RUN_TIMINGS}


def _save(rows: list[dict[str, Any]]) -> None:
    """Stamp ``rows`` with this invocation's command, commit and machine, and merge them into sparse.json."""
    prov = {k: v for k, v in provenance().items() if k != "wall_s"}
    for r in rows:
        r.update(prov)
    save_results("sparse", rows, KEY)


def _load(name: str):  # noqa: ANN202
    from recsparse.data import load

    return load(name)


def _run_dir(out: Path, variant: str, reg: str) -> Path:
    return out / f"{variant}_{reg}"


def _summary(d: Path) -> dict[str, Any]:
    """What a run folder holds so far: training info and every dataset whose evaluation finished (metrics.json with
    the sparse model, and sparse_stats.json), so a run still evaluating its last dataset is usable."""
    tc = json.loads((d / "train" / "train_config.json").read_text())
    out: dict[str, Any] = {"train": {"dataset": tc.get("dataset", "scifact"), "wall_s": tc["wall_s"],
                                     "steps": tc["steps"], "config": tc}, "eval": {}}
    if (d / "summary.json").is_file():
        out["train"]["dataset"] = json.loads((d / "summary.json").read_text())["train"]["dataset"]
    for m in sorted(d.glob("*/metrics.json")):
        st = m.parent / "sparse_stats.json"
        if not st.is_file():
            continue
        stats = json.loads(st.read_text())
        recs = []
        for name, e in json.loads(m.read_text())["retrievers"].items():
            recs.append({**e["record"], **stats.get(name, {})})
        out["eval"][m.parent.name] = recs
    return out


@app.command()
def quality(out: Path = typer.Option(Path("runs/sparse-bench")), configs: list[str] = typer.Option(list(CONFIGS)),
            dataset: str = typer.Option("scifact"), eval_: list[str] = typer.Option(["cranfield"], "--eval"),
            max_steps: int = typer.Option(150), train_missing: bool = typer.Option(True),
            matched: bool = typer.Option(True), fuse: bool = typer.Option(True)) -> None:
    """Train (or reuse) each config, collect test metrics and sparse statistics, add matched-sparsity rows."""
    from recsparse.retrieval.sparse.pipeline import run
    from recsparse.retrieval.sparse.training import TrainConfig

    records: list[dict[str, Any]] = []
    summaries: dict[tuple[str, str], dict[str, Any]] = {}
    for c in configs:
        variant, reg = c.split(":")
        d = _run_dir(out, variant, reg)
        if not (d / "train" / "train_config.json").is_file():
            if not train_missing:
                typer.echo(f"skip {c}: not trained in {d}")
                continue
            run(dataset, TrainConfig(variant=variant, reg=reg, max_steps=max_steps), d, eval_datasets=eval_)
        s = _summary(d)  # a run still evaluating contributes the datasets it finished
        if not s["eval"]:
            typer.echo(f"skip {c}: nothing evaluated yet in {d}")
            continue
        summaries[(variant, reg)] = s
        tr = s["train"]
        for ds, recs in s["eval"].items():
            for r in recs:
                rec = _without_timings(r)
                rec["measure"] = "quality"
                if r["retriever"] != "bm25":
                    rec.update(variant=variant, reg=reg, train_dataset=tr["dataset"], train_steps=tr["steps"],
                               train_wall_s=tr["wall_s"], backbone=tr["config"]["encoder"]["backbone"],
                               doc_max_length=tr["config"]["encoder"]["max_length"], run_dir=str(d))
                records.append(rec)
    # one BM25 row per dataset (every run evaluated it on the same index settings; keep the first)
    seen: set[tuple[str, str]] = set()
    records = [r for r in records if not (r["retriever"] == "bm25" and ((r["dataset"], "bm25") in seen
                                                                        or seen.add((r["dataset"], "bm25"))))]
    if fuse:
        records += fusion_rows(summaries, out)
    if matched:
        records += matched_sparsity(summaries, out)
    records += means(records)
    _save(records)
    print_table([r for r in records if r["measure"] != "latency"],
                columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "avg_query_nnz", "flops",
                         "index_bytes", "train_wall_s", "encode_docs_per_s"])


def fusion_rows(summaries: dict[tuple[str, str], dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """RRF hybrid of BM25 and each sparse model (the harness's fusion, from the saved TREC runs)."""
    from recsparse.retrieval.evaluation import read_trec_run
    from recsparse.retrieval.harness import fuse_record

    recs: list[dict[str, Any]] = []
    bm25_file: dict[str, Path] = {}  # one BM25 run per dataset, from whichever run folder evaluated it
    for (variant, reg), s in summaries.items():
        for ds in s["eval"]:
            folder = _run_dir(out, variant, reg) / ds
            m = json.loads((folder / "metrics.json").read_text())
            if "bm25" in m["retrievers"]:
                bm25_file.setdefault(ds, folder / m["retrievers"]["bm25"]["run_file"])
    for (variant, reg), s in summaries.items():
        for ds in s["eval"]:
            folder = _run_dir(out, variant, reg) / ds
            m = json.loads((folder / "metrics.json").read_text())
            runs = {n: read_trec_run(folder / e["run_file"]) for n, e in m["retrievers"].items() if n != "bm25"}
            if ds not in bm25_file:
                continue
            runs["bm25"] = read_trec_run(bm25_file[ds])
            name = next(n for n in runs if n != "bm25")
            dataset = _load(ds)
            rec, _, _ = fuse_record(dataset, runs, dataset.qrels_dict("test"), name=f"rrf(bm25+{name})",
                                    parts=["bm25", name], method="rrf", k=100)
            recs.append({k: v for k, v in rec.items() if k not in ("index_s", "search_qps", "search_s")}
                        | {"measure": "quality", "variant": variant, "reg": reg})
    return recs


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
                extra={"pruned_min_impact": thr, "source": str(src)})
        rows = evaluate_retrievers(dataset, {name: r}, split="test", k=100, out_dir=dest / tag)
        st = sparse_stats(r, dataset.split_queries("test"))
        r.close()
        rec = _without_timings(rows[0])
        rec.update(st, measure="quality", pruned_min_impact=thr, run_dir=str(dest / tag))
        recs.append(rec)
    return recs


def matched_sparsity(summaries: dict[tuple[str, str], dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """For each variant trained with both FLOPS and IDF-FLOPS: prune the model with more document non-zeros down to
    the other's average document non-zeros and FLOPS (:func:`prune_and_evaluate`): a comparison at equal sparsity."""
    recs: list[dict[str, Any]] = []
    for variant in ("inference-free", "splade"):
        a, b = summaries.get((variant, "flops")), summaries.get((variant, "idf-flops"))
        if a is None or b is None:
            continue
        for ds in sorted(set(a["eval"]) & set(b["eval"])):
            ra = next(r for r in a["eval"][ds] if r["retriever"] != "bm25")
            rb = next(r for r in b["eval"][ds] if r["retriever"] != "bm25")
            dense_reg, sparse_rec = ("flops", rb) if ra["avg_doc_nnz"] >= rb["avg_doc_nnz"] else ("idf-flops", ra)
            dense_rec = ra if dense_reg == "flops" else rb
            src = _run_dir(out, variant, dense_reg) / ds / "indexes" / dense_rec["retriever"]
            for rec in prune_and_evaluate(src, ds, sparse_rec["avg_doc_nnz"], sparse_rec["flops"],
                                          _run_dir(out, variant, dense_reg) / ds):
                rec.update(variant=variant, reg=dense_reg, matched_to=sparse_rec["retriever"])
                recs.append(rec)
    return recs


@app.command()
def prune(index: Path = typer.Argument(..., help="Impact index folder to prune."),
          like: Path = typer.Argument(..., help="Impact index whose document nnz / FLOPS to match."),
          dataset: str = typer.Option(...), out: Path = typer.Option(...)) -> None:
    """Prune INDEX to LIKE's average document non-zeros and FLOPS on DATASET's test queries, and evaluate: e.g. the
    untrained model cut to a trained model's sparsity, to see what training bought at equal cost."""
    from recsparse.retrieval.sparse import open_retriever
    from recsparse.retrieval.sparse.pipeline import sparse_stats

    ref = open_retriever(like)
    st = sparse_stats(ref, _load(dataset).split_queries("test"))
    ref.close()
    rows = prune_and_evaluate(index, dataset, st["avg_doc_nnz"], st["flops"], out)
    for r in rows:
        r.update(matched_to=str(like), matched_nnz=st["avg_doc_nnz"], matched_flops=st["flops"])
    rows += means(rows) if len({r["dataset"] for r in rows}) > 1 else []
    _save(rows)
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "flops"])


def means(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean nDCG@10 / Recall@100 over the datasets each retriever was evaluated on (rows with measure="mean")."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["measure"] == "quality":
            by.setdefault(r["retriever"], []).append(r)
    out = []
    for name, rs in by.items():
        dss = sorted(r["dataset"] for r in rs)
        out.append({"dataset": "mean(" + "+".join(dss) + ")", "retriever": name, "measure": "mean",
                    "ndcg@10": round(statistics.fmean(r["ndcg@10"] for r in rs), 4),
                    "recall@100": round(statistics.fmean(r["recall@100"] for r in rs), 4)})
    return out


def _percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]  # noqa: E731
    return {"p50_ms": round(q(0.50) * 1e3, 3), "p99_ms": round(q(0.99) * 1e3, 3),
            "mean_ms": round(statistics.fmean(xs) * 1e3, 3)}


@app.command()
def latency(out: Path = typer.Option(Path("runs/sparse-bench")), dataset: str = typer.Option("scifact"),
            configs: list[str] = typer.Option(["inference-free:idf-flops", "splade:idf-flops"]),
            k: int = typer.Option(10), repeats: int = typer.Option(3), bm25_index: Optional[Path] = None) -> None:
    """Per-query single-thread latency of impact search vs BM25 over the same test queries (run under flock)."""
    import torch

    from recsparse.retrieval.lucene import BM25Retriever
    from recsparse.retrieval.sparse import open_retriever

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = _load(dataset)
    queries = list(ds.split_queries("test").values())
    first = _run_dir(out, *configs[0].split(":")) / ds.name / "indexes"
    bm25 = BM25Retriever.open(bm25_index or first / "bm25")

    systems: dict[str, Any] = {"bm25": lambda q: bm25.search(q, k)}
    opened = []
    for c in configs:
        variant, reg = c.split(":")
        d = _run_dir(out, variant, reg) / ds.name / "indexes"
        name = f"sparse-{variant}-{reg}"
        if not (d / name).is_dir():
            typer.echo(f"skip {c}: no index at {d / name}")
            continue
        r = open_retriever(d / name)
        opened.append(r)
        vecs = dict(zip(queries, r.query_vectors(queries)))
        systems[name] = (lambda r: lambda q: r.search(q, k))(r)
        systems[name + "|lucene-only"] = (lambda r, vecs: lambda q: r.search_vector(vecs[q], k))(r, vecs)
        systems[name + "|nnz"] = statistics.fmean(len(v) for v in vecs.values())
    fns = {n: f for n, f in systems.items() if callable(f)}
    for q in queries:  # warm-up pass (JIT, caches)
        for f in fns.values():
            f(q)
    times: dict[str, list[float]] = {n: [] for n in fns}
    # interleaved: each query runs on every system back to back, so load on the shared machine hits all alike
    for _ in range(repeats):
        for q in queries:
            for n, f in fns.items():
                s = time.perf_counter()
                f(q)
                times[n].append(time.perf_counter() - s)
    base = _percentiles(times["bm25"])
    rows = [{"dataset": ds.name, "retriever": "bm25", "measure": "latency", **base}]
    for n in fns:
        if n == "bm25" or n.endswith("|lucene-only"):
            continue
        full, lucene = _percentiles(times[n]), _percentiles(times[n + "|lucene-only"])
        rows.append({"dataset": ds.name, "retriever": n, "measure": "latency", **full,
                     "p50_vs_bm25": round(full["p50_ms"] / base["p50_ms"], 3),
                     "p99_vs_bm25": round(full["p99_ms"] / base["p99_ms"], 3),
                     "lucene_only_p50_ms": lucene["p50_ms"], "lucene_only_p99_ms": lucene["p99_ms"],
                     "lucene_only_p50_vs_bm25": round(lucene["p50_ms"] / base["p50_ms"], 3),
                     "lucene_only_p99_vs_bm25": round(lucene["p99_ms"] / base["p99_ms"], 3),
                     "avg_query_nnz": round(systems[n + "|nnz"], 2)})
    for r in opened:
        r.close()
    prov = provenance(time.perf_counter() - t0)
    for row in rows:
        row.update(k=k, threads=1, queries=len(queries), repeats=repeats, **prov)
    save_results("sparse", rows, KEY)
    print_table(rows, columns=["dataset", "retriever", "p50_ms", "p99_ms", "p50_vs_bm25", "p99_vs_bm25",
                               "lucene_only_p50_ms", "lucene_only_p50_vs_bm25", "avg_query_nnz"])


@app.command()
def baseline(out: Path = typer.Option(Path("runs/sparse-bench")), datasets: list[str] = typer.Option(["cranfield"]),
             variant: str = typer.Option("inference-free"), doc_windows: int = typer.Option(1)) -> None:
    """The untrained starting checkpoint (splade-tiny as shipped), to show what training on SciFact changed."""
    from recsparse.retrieval.sparse.encoders import EncoderConfig, SparseModel
    from recsparse.retrieval.sparse.pipeline import evaluate_model

    name = f"sparse-{variant}-untrained" + (f"-w{doc_windows}" if doc_windows > 1 else "")
    rows = []
    for ds in datasets:
        model = SparseModel(variant, EncoderConfig(doc_windows=doc_windows)).eval()
        recs = evaluate_model(model, _load(ds), out / name / ds, name, with_bm25=False)
        rows += [_without_timings(r)
                 | {"measure": "quality", "variant": variant, "train_steps": 0, "backbone": "splade-tiny",
                    "doc_windows": doc_windows} for r in recs]
    rows += means(rows) if len(datasets) > 1 else []
    _save(rows)
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "flops"])


@app.command("means")
def means_command() -> None:
    """Recompute the mean rows of every retriever in sparse.json from its recorded quality rows."""
    from recsparse.results import RESULTS_DIR

    recs = json.loads((RESULTS_DIR / "sparse.json").read_text())
    rows = [r for r in means([r for r in recs if r.get("measure") == "quality"]) if "+" in r["dataset"]]
    _save(rows)
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100"])


@app.command()
def collect(run_dir: Path = typer.Argument(..., help="A `recsparse sparse run --out` folder."),
            label: str = typer.Option(..., help="Suffix for the retriever name, e.g. 'lowlam-w4'.")) -> None:
    """Record a finished `recsparse sparse run` (any settings) as labelled quality rows, with its command line."""
    s = _summary(run_dir)
    if not s["eval"]:
        raise typer.BadParameter(f"{run_dir}: no finished evaluation (no */metrics.json with sparse_stats.json)")
    tr, cfg = s["train"], s["train"]["config"]
    if (run_dir / "summary.json").is_file():  # the settings of the last evaluation (indexing options included)
        cfg = json.loads((run_dir / "summary.json").read_text())["train"]["config"]
    rows = []
    for recs in s["eval"].values():
        for r in recs:
            if r["retriever"] == "bm25":
                continue
            rows.append(_without_timings(r)
                        | {"retriever": f"{r['retriever']}|{label}", "measure": "quality", "variant": cfg["variant"],
                           "reg": cfg["reg"], "train_dataset": tr["dataset"], "train_steps": tr["steps"],
                           "train_wall_s": tr["wall_s"], "backbone": cfg["encoder"]["backbone"],
                           "doc_max_length": cfg["encoder"]["max_length"], "lambda_doc": cfg["lambda_doc"],
                           "doc_windows": cfg["encoder"].get("doc_windows", 1),
                           "lr": cfg["lr"], "distill": cfg["distill"], "run_dir": str(run_dir),
                           "run_command": (run_dir / "command.txt").read_text().strip()
                           if (run_dir / "command.txt").is_file() else None})
    rows += means(rows)
    _save(rows)
    print_table(rows, columns=["dataset", "retriever", "ndcg@10", "recall@100", "avg_doc_nnz", "flops"])


@app.command()
def throughput(out: Path = typer.Option(Path("runs/sparse-bench")), dataset: str = typer.Option("scifact"),
               config: str = typer.Option("inference-free:idf-flops"), docs: int = typer.Option(512),
               steps: int = typer.Option(8)) -> None:
    """Document encoding docs/s and training s/step of a trained model, 2 threads (run under flock)."""
    import torch

    from recsparse.retrieval.sparse.encoders import SparseModel, text_of
    from recsparse.retrieval.sparse.impact import encode_corpus
    from recsparse.retrieval.sparse.losses import InfoNCELoss

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ds = _load(dataset)
    variant, reg = config.split(":")
    model = SparseModel.load(_run_dir(out, variant, reg) / "train" / "model")
    texts = [text_of(a, b) for a, b in zip(ds.corpus["title"].to_list()[:docs], ds.corpus["text"].to_list()[:docs])]
    _, dps = encode_corpus(model, ds.corpus["_id"].to_list()[:docs], texts, batch_size=32, progress=False)
    # training step cost at the default shape: 16 queries x (1 positive + 1 negative) documents, 128 word pieces
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    qs = list(ds.queries["text"].to_list()[:16])
    times = []
    for i in range(steps + 1):
        s = time.perf_counter()
        q = model.encode_queries(qs)
        d = model.encode_docs(texts[32 * i % (len(texts) - 32):][:32])
        InfoNCELoss()(q, d[:16].repeat(2, 1)[:32]).backward()
        opt.step()
        opt.zero_grad()
        if i:  # first step warms up
            times.append(time.perf_counter() - s)
    row = {"dataset": ds.name, "retriever": f"sparse-{variant}-{reg}", "measure": "throughput",
           "encode_docs_per_s": round(dps, 2), "encoded_docs": len(texts), "doc_max_length": model.config.max_length,
           "train_step_s": round(statistics.median(times), 3), "train_steps_timed": steps, "threads": 2,
           **provenance(time.perf_counter() - t0)}
    save_results("sparse", [row], KEY)
    print_table([row], columns=["dataset", "retriever", "encode_docs_per_s", "train_step_s", "doc_max_length"])


if __name__ == "__main__":
    app()
