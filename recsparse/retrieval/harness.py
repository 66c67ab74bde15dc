"""The batch evaluation harness: index (or reuse) -> batch search -> evaluate -> run files, metrics.json, report.md.

Layout of ``out_dir``::

    runs/<retriever>.trec     TREC run of every evaluated (and fused) retriever
    metrics.json              {"dataset", "split", "k", "retrievers": {name: {aggregate, per_query, timings}}}
    report.md                 comparison table (with the registry's reference figures when the dataset is the
                              registered, checksum-identical collection)
    indexes/<retriever>/      indexes, unless ``index_dir`` points elsewhere

Re-running into the same ``out_dir`` replaces the entries of the retrievers run again and keeps the others.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from recsparse.data import BeirDataset
from recsparse.errors import UserError
from recsparse.io import atomic_write, write_json
from recsparse.retrieval.base import Retriever, check_corpus, safe_name
from recsparse.retrieval.evaluation import DEFAULT_MEASURES, evaluate, write_trec_run
from recsparse.retrieval.fusion import fuse
from recsparse.types import Run, check_positive


def reference_figures(dataset: BeirDataset) -> dict[str, float]:
    """The registry's reference numbers (``"bm25:ndcg@10"`` -> value) if ``dataset`` is the registered collection,
    byte-identical (sha256 of every registered file); else ``{}``."""
    from recsparse.data.registry import REGISTRY, sha256_file

    spec = REGISTRY.get(dataset.name)
    if spec is None or spec.format != "beir" or not spec.reference:
        return {}
    for rel, sha in spec.files.items():
        p = Path(dataset.folder) / rel
        if not p.is_file() or sha256_file(p) != sha:
            return {}
    return dict(spec.reference)


def reference_source(dataset: BeirDataset) -> str:
    """Where the registry's reference figures for ``dataset`` come from (published, or measured by us)."""
    from recsparse.data.registry import REGISTRY

    spec = REGISTRY.get(dataset.name)
    return spec.reference_source if spec is not None else ""


def index_or_reuse(retriever: Retriever, dataset: BeirDataset, path: Path, threads: int = 1) -> tuple[float, bool]:
    """Make ``retriever`` searchable over ``dataset.corpus``; returns (index seconds, reused?).

    A retriever already open on a saved index (e.g. ``sparse:PATH``) is used as is after checking that the index was
    built from this corpus (:class:`~recsparse.retrieval.base.CorpusMismatchError` otherwise); else a matching saved
    index at ``path`` is reopened (``reuse``); else the corpus is indexed at ``path``.
    """
    retriever.prepare()  # one-off start-up (JVM, model load) is not index time
    meta = retriever.index_meta
    if meta is not None:
        check_corpus(retriever.name, meta, dataset.fingerprint, dataset.folder, retriever.path)
    elif path.is_dir() and retriever.reuse(path, dataset.fingerprint):
        meta = retriever.index_meta
    if meta is not None:  # reported as the saved build's seconds
        return float("nan") if meta.build_s is None else float(meta.build_s), True
    t0 = time.perf_counter()
    retriever.index(dataset.corpus, path, threads=threads)
    return time.perf_counter() - t0, False


def search_all(retriever: Retriever, queries: Mapping[str, str], k: int, threads: int = 1
               ) -> tuple[Run, dict[str, str]]:
    """``retriever.batch_search``; if the batch fails, every query is searched alone so one bad query never loses
    the run. Returns (run, {query id: error}) — failed queries have no hits (they score 0) and each is warned about.
    """
    try:
        return retriever.batch_search(queries, k=k, threads=threads), {}
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - engine errors (Java exceptions included) are per query, see below
        warnings.warn(f"{retriever.name}: batch search failed ({_first_line(e)}); searching query by query",
                      stacklevel=2)
    run: Run = {}
    failed: dict[str, str] = {}
    for q, text in queries.items():
        try:
            run[q] = retriever.search(text, k=k)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as e:  # noqa: BLE001
            run[q], failed[q] = [], _first_line(e)
            warnings.warn(f"{retriever.name}: query {q!r} failed and scores 0: {failed[q]}", stacklevel=2)
    return run, failed


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _record(dataset: BeirDataset, name: str, agg: Mapping[str, float], **extra: Any) -> dict[str, Any]:
    return {"dataset": dataset.name, "retriever": name, **{m: round(v, 4) for m, v in agg.items()}, **extra}


class _Output:
    """metrics.json / runs / report.md of one out_dir, merged with what an earlier invocation left there."""

    def __init__(self, out_dir: Path, dataset: BeirDataset, split: str, k: int, drop_self_hits: bool,
                 binary_relevance: bool = False) -> None:
        self.dir = out_dir
        self.head = {"dataset": dataset.name, "folder": str(dataset.folder), "split": split, "k": k,
                     "drop_self_hits": drop_self_hits, "binary_relevance": binary_relevance}
        self.entries: dict[str, dict[str, Any]] = {}
        old = out_dir / "metrics.json"
        if old.is_file():
            try:
                prev = json.loads(old.read_text())
                if all(prev.get(f) == v for f, v in self.head.items()):
                    self.entries = dict(prev.get("retrievers", {}))
            except ValueError:
                pass
        # references were measured with the collection's own grades
        self.refs = {} if binary_relevance else reference_figures(dataset)
        self.ref_source = reference_source(dataset) if self.refs else ""

    def add(self, record: dict[str, Any], per_query: Mapping[str, Mapping[str, float]], run: Run) -> None:
        name = record["retriever"]
        path = write_trec_run(run, self.dir / "runs" / f"{safe_name(name)}.trec", tag=safe_name(name))
        self.entries[name] = {"record": record, "run_file": str(path.relative_to(self.dir)), "per_query": per_query}

    def write(self) -> None:
        write_json(self.dir / "metrics.json", {**self.head, "retrievers": self.entries})
        with atomic_write(self.dir / "report.md") as f:
            f.write(render_report(self.head, [e["record"] for e in self.entries.values()], self.refs,
                                  self.ref_source))


def render_report(head: Mapping[str, Any], records: Sequence[Mapping[str, Any]], refs: Mapping[str, float],
                  ref_source: str = "") -> str:
    measures = [m for m in ("ndcg@10", "recall@100", "mrr@10", "map@100") if any(m in r for r in records)]
    lines = [f"# Retrieval evaluation: {head['dataset']} ({head['split']})", "",
             f"Collection `{head['folder']}`; top-{head['k']} per query; metrics by ir_measures over every judged "
             f"query{'; self hits dropped' if head.get('drop_self_hits') else ''}"
             f"{'; binary relevance (grade > 0 = 1)' if head.get('binary_relevance') else ''}.", ""]
    cols = ["retriever", *measures, "index_s", "search_qps"]
    ref_cols = [m for m in measures if any(key.endswith(":" + m) for key in refs)]
    cols += [f"reference {m}" for m in ref_cols]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        cells = [str(r["retriever"])] + [f"{r[m]:.4f}" if m in r else "" for m in measures]
        note = " (reused)" if r.get("reused_index") else " (cached embeddings)" if r.get("embeddings_cached") else ""
        cells += [f"{r.get('index_s', float('nan')):.2f}" + note,
                  f"{r.get('search_qps', float('nan')):.1f}"]
        base = str(r["retriever"]).split("(")[0]
        cells += [f"{refs[f'{base}:{m}']:.4f}" if f"{base}:{m}" in refs else "" for m in ref_cols]
        lines.append("| " + " | ".join(cells) + " |")
    if refs:
        lines += ["", f"Reference figures for this exact (checksum-identical) collection, from "
                      f"`recsparse/data/registry.toml`: {ref_source or 'source not stated'}."]
    failed = [r for r in records if r.get("failed_queries")]
    if failed:
        lines += ["", "**Failed queries** (searched alone after the batch failed; no hits, scored 0; the errors are in "
                      "metrics.json): " + ", ".join(f"{r['retriever']}: {r['failed_queries']}" for r in failed)]
    return "\n".join(lines) + "\n"


def evaluate_retrievers(dataset: BeirDataset, retrievers: Mapping[str, Retriever], *, split: str = "test",
                        k: int = 100, out_dir: str | Path, threads: int = 1, drop_self_hits: bool = False,
                        index_dir: str | Path | None = None, measures: Sequence[str] = DEFAULT_MEASURES,
                        fusions: Sequence[Mapping[str, Any]] = (), keep_runs: dict[str, Run] | None = None,
                        binary_relevance: bool = False) -> list[dict[str, Any]]:
    """Index (or reuse), batch-search ``split``'s queries to depth ``k``, evaluate and write the outputs.

    ``fusions``: specs ``{"name": "hybrid", "parts": ["bm25", "dense"], "method": "rrf"|"interpolation",
    "k_rrf": 60, "alpha": 0.5}`` fused from the parts' runs after they are searched. ``keep_runs``, if given, receives
    every run by name. ``binary_relevance``: every grade > 0 counts as 1 (see :func:`evaluate`). Returns one record
    per retriever (and fusion): dataset, retriever, the measures, ``index_s``, ``search_qps``, ``num_queries``,
    ``reused_index``, ``search_s``, ``failed_queries`` (when some failed) ...
    """
    check_positive("k", k)
    check_positive("threads", threads)
    out_dir = Path(out_dir)
    index_root = Path(index_dir) if index_dir is not None else out_dir / "indexes"
    queries = dataset.split_queries(split)
    qrels = dataset.qrels_dict(split)
    if dataset.corpus.height == 0:
        raise UserError(f"{dataset.folder}: the corpus has no documents: nothing to retrieve")
    if not queries:
        raise UserError(f"{dataset.folder}: qrels/{split}.tsv judges no query (of queries.jsonl)")
    unknown = set(qrels) - set(queries)
    if unknown:  # load_beir refuses such files; a dataset built in code must not average them in as 0 either
        raise UserError(f"{dataset.folder}: {len(unknown)} queries judged in split {split!r} are not in the "
                        f"queries (e.g. {sorted(unknown)[0]!r})")
    out = _Output(out_dir, dataset, split, k, drop_self_hits, binary_relevance)
    runs: dict[str, Run] = {} if keep_runs is None else keep_runs
    records: list[dict[str, Any]] = []
    for name, retriever in retrievers.items():
        index_s, reused = index_or_reuse(retriever, dataset, index_root / safe_name(name), threads=threads)
        t0 = time.perf_counter()
        run, failed = search_all(retriever, queries, k, threads)
        search_s = time.perf_counter() - t0
        runs[name] = run
        agg, pq = evaluate(run, qrels, measures, per_query=True, drop_self_hits=drop_self_hits,
                           binary_relevance=binary_relevance)
        rec = _record(dataset, name, agg, index_s=round(index_s, 3), search_qps=round(len(queries) / search_s, 2),
                      search_s=round(search_s, 3), num_queries=len(queries), reused_index=reused, k=k, split=split,
                      threads=threads)
        if failed:
            rec["failed_queries"] = len(failed)
            for q, err in failed.items():
                pq[q] = {**pq[q], "error": err}
        if not reused:
            rec.update(retriever.index_info())
        out.add(rec, pq, run)
        records.append(rec)
        out.write()  # after each retriever: an interrupted evaluation keeps what it finished
    for spec in fusions:
        rec, run, pq = fuse_record(dataset, runs, qrels, measures=measures, drop_self_hits=drop_self_hits, k=k,
                                   split=split, records=records, binary_relevance=binary_relevance, **spec)
        runs[rec["retriever"]] = run
        out.add(rec, pq, run)
        records.append(rec)
    out.write()
    return records


def fuse_record(dataset: BeirDataset, runs: Mapping[str, Run], qrels: Mapping[str, Mapping[str, int]], *,
                name: str, parts: Sequence[str], method: str = "rrf", k_rrf: int = 60, alpha: float = 0.5,
                k: int = 100, split: str = "test", measures: Sequence[str] = DEFAULT_MEASURES,
                drop_self_hits: bool = False, records: Sequence[Mapping[str, Any]] = (),
                binary_relevance: bool = False) -> tuple[dict[str, Any], Run, dict[str, dict[str, float]]]:
    """Fuse the named ``parts`` of ``runs`` into a run called ``name`` and evaluate it.

    Returns (record, fused run, per-query metrics). The record's ``search_qps`` is that of the parts run one after
    the other plus the fusion itself, and ``index_s`` the parts' sum, when the parts' records are given.
    """
    missing = [p for p in parts if p not in runs]
    if missing:
        raise KeyError(f"fusion {name!r}: no run for {missing} (have {sorted(runs)})")
    t0 = time.perf_counter()
    run = fuse([runs[p] for p in parts], method, k_rrf=k_rrf, alpha=alpha, top=k)
    fuse_s = time.perf_counter() - t0
    parts_s = sum(float(r.get("search_s", 0.0)) for r in records if r.get("retriever") in parts)
    index_s = sum(float(r.get("index_s", 0.0)) for r in records if r.get("retriever") in parts)
    agg, pq = evaluate(run, qrels, measures, per_query=True, drop_self_hits=drop_self_hits,
                       binary_relevance=binary_relevance)
    nq = len(run) or 1
    rec = _record(dataset, name, agg, index_s=round(index_s, 3), search_qps=round(nq / (parts_s + fuse_s), 2),
                  search_s=round(parts_s + fuse_s, 3), num_queries=len(run), k=k, split=split,
                  fusion=method, parts="+".join(parts), **({"alpha": alpha} if method == "interpolation"
                                                            else {"k_rrf": k_rrf}))
    return rec, run, pq
