"""Evaluation of runs against qrels with ``ir_measures`` (trec_eval / pytrec_eval underneath), and TREC run files.

No metric is computed here by hand: every number comes from ``ir_measures``. What this module adds is the naming
(our keys ``ndcg@10``, ``recall@100``, ``mrr@10``, ``map@100`` ↔ ``nDCG@10``, ``R@100``, ``RR@10``, ``AP@100``),
the choice of which queries are averaged (every judged query; a query the run lacks scores 0, like ``trec_eval -c``),
the optional removal of self hits (a hit whose doc id equals the query id, as in ArguAna / Quora — BEIR's
``ignore_identical_ids``), and reading / writing TREC run files.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from recsparse.data.errors import DataFormatError
from recsparse.io import atomic_write
from recsparse.types import Hit, Run

DEFAULT_MEASURES: tuple[str, ...] = ("ndcg@10", "recall@100", "mrr@10", "map@100")

# our key prefix -> ir_measures measure name
_NAMES = {"ndcg": "nDCG", "recall": "R", "r": "R", "mrr": "RR", "rr": "RR", "map": "AP", "ap": "AP", "p": "P",
          "precision": "P", "success": "Success"}
_KEY = re.compile(r"^([a-z_]+)(?:@(\d+))?$")


def to_ir_measure(key: str) -> Any:
    """``"ndcg@10"`` -> ``ir_measures`` measure ``nDCG@10`` (raises ``ValueError`` naming the key if unknown)."""
    import ir_measures

    m = _KEY.match(key.lower())
    if not m or m.group(1) not in _NAMES:
        raise ValueError(f"measure {key!r} is not one of {sorted(set(_NAMES))} (optionally @k), e.g. 'ndcg@10'")
    name = _NAMES[m.group(1)] + (f"@{m.group(2)}" if m.group(2) else "")
    return ir_measures.parse_measure(name)


def drop_self(run: Run) -> Run:
    """The run without hits whose doc id equals their query id (ranks close up; nothing is re-scored)."""
    return {q: [h for h in hits if h.docid != q] for q, hits in run.items()}


def _ir_run(run: Run) -> dict[str, dict[str, float]]:
    # ir_measures ranks by score (ties: doc id, descending — trec_eval's rule); Lucene's own tie order is lost,
    # exactly as when a run file goes through trec_eval.
    return {q: {h.docid: float(h.score) for h in hits} for q, hits in run.items() if hits}


def evaluate(run: Run, qrels: Mapping[str, Mapping[str, int]], measures: Sequence[str] = DEFAULT_MEASURES,
             per_query: bool = False, drop_self_hits: bool = False, binary_relevance: bool = False
             ) -> dict[str, float] | tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score ``run`` against ``qrels`` (query id -> doc id -> graded relevance; > 0 counts as relevant).

    Returns ``{measure_key: mean}`` over every query in ``qrels``; with ``per_query=True`` also
    ``{query_id: {measure_key: value}}``. Queries absent from the run (or left empty) score 0 for every measure.
    ``binary_relevance`` maps every grade > 0 to 1 first (nDCG then ignores the grade scale — for collections
    such as Cranfield whose codes rank the other way round); the other measures are binary anyway.
    """
    import ir_measures

    if not qrels:
        raise ValueError("qrels is empty: nothing to evaluate against")
    keys = list(measures)
    ims = [to_ir_measure(k) for k in keys]
    by_measure = {str(m): k for m, k in zip(ims, keys)}
    if drop_self_hits:
        run = drop_self(run)
    qrels_d = {q: {d: (int(s > 0) if binary_relevance else int(s)) for d, s in docs.items()}
               for q, docs in qrels.items()}
    pq: dict[str, dict[str, float]] = {q: {k: 0.0 for k in keys} for q in qrels_d}
    judged_run = {q: v for q, v in _ir_run(run).items() if q in qrels_d}
    if judged_run:
        for metric in ir_measures.iter_calc(ims, qrels_d, judged_run):
            pq[metric.query_id][by_measure[str(metric.measure)]] = float(metric.value)
    agg = {k: math.fsum(v[k] for v in pq.values()) / len(pq) for k in keys}
    return (agg, pq) if per_query else agg


def write_trec_run(run: Run, path: str | Path, tag: str = "recsparse") -> Path:
    """Write ``run`` as a TREC run file (``qid Q0 docid rank score tag``), atomically; hits keep their order."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"tag must be a non-empty string without whitespace, got {tag!r}")
    path = Path(path)
    with atomic_write(path) as f:
        for q, hits in run.items():
            for rank, h in enumerate(hits, 1):
                if not h.docid or any(c.isspace() for c in h.docid) or any(c.isspace() for c in q):
                    raise ValueError(f"query {q!r} / doc {h.docid!r}: ids in a TREC run must not contain whitespace")
                f.write(f"{q} Q0 {h.docid} {rank} {h.score:.10g} {tag}\n")  # enough digits to keep RRF ties apart
    return path


def read_trec_run(path: str | Path) -> Run:
    """Read a TREC run file into a :data:`Run` ordered by rank. Malformed lines raise ``DataFormatError`` (file:line)."""
    path = Path(path)
    rows: dict[str, list[tuple[int, Hit]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise DataFormatError(path, n, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}")
            q, _, d, rank, score, _ = parts
            try:
                r, s = int(rank), float(score)
            except ValueError:
                raise DataFormatError(path, n, f"rank {rank!r} / score {score!r} not numeric") from None
            rows.setdefault(q, []).append((r, Hit(d, s)))
    return {q: [h for _, h in sorted(v, key=lambda t: t[0])] for q, v in rows.items()}
