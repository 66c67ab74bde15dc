"""The evaluation harness and ``recsparse beir`` on real Cranfield: outputs, reuse, fusion, reference, bad input."""

from __future__ import annotations

import json
import re
import shutil

import polars as pl
import pytest
from typer.testing import CliRunner

from recsparse.cli import app
from recsparse.data import load
from recsparse.retrieval.evaluation import evaluate, read_trec_run
from recsparse.retrieval.fusion import rrf
from recsparse.retrieval.harness import evaluate_retrievers
from recsparse.retrieval.lucene import BM25Config, BM25Retriever
from tests.conftest import dataset_path

KEYS = {"dataset", "retriever", "ndcg@10", "recall@100", "mrr@10", "map@100", "index_s", "search_qps"}


def test_evaluate_retrievers_outputs_reuse_and_fusion(cranfield_small, tmp_path):
    ds = load(cranfield_small)
    out = tmp_path / "out"
    runs = {}
    recs = evaluate_retrievers(ds, {"bm25": BM25Retriever(), "bm25-mf": BM25Retriever(BM25Config(fields="multifield"))},
                               k=50, out_dir=out, threads=2, keep_runs=runs,
                               fusions=[{"name": "rrf", "parts": ["bm25", "bm25-mf"], "method": "rrf"}])
    assert [r["retriever"] for r in recs] == ["bm25", "bm25-mf", "rrf"]
    assert all(KEYS <= set(r) for r in recs)
    qrels = ds.qrels_dict("test")
    assert recs[0]["num_queries"] == len(qrels) and not recs[0]["reused_index"]
    # the run files on disk evaluate to the recorded numbers; the fused run is RRF of the parts
    for r in recs:
        agg = evaluate(read_trec_run(out / "runs" / f"{r['retriever']}.trec"), qrels)
        assert {m: round(v, 4) for m, v in agg.items()} == {m: r[m] for m in agg}
    assert runs["rrf"] == rrf([runs["bm25"], runs["bm25-mf"]], k=60, top=50)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["retrievers"]) == {"bm25", "bm25-mf", "rrf"}
    pq = metrics["retrievers"]["bm25"]["per_query"]
    assert set(pq) == set(qrels) and sum(v["ndcg@10"] for v in pq.values()) / len(pq) == pytest.approx(
        recs[0]["ndcg@10"], abs=1e-4)
    report = (out / "report.md").read_text()
    assert "| bm25-mf |" in report and "reference" not in report  # a slice is not the registered collection
    # second run, only bm25: index reused, same numbers, the other entries kept
    again = evaluate_retrievers(ds, {"bm25": BM25Retriever()}, k=50, out_dir=out, threads=1)
    assert again[0]["reused_index"] and again[0]["ndcg@10"] == recs[0]["ndcg@10"]
    assert set(json.loads((out / "metrics.json").read_text())["retrievers"]) == {"bm25", "bm25-mf", "rrf"}


def test_cli_bm25_on_full_cranfield_matches_reference(tmp_path):
    """BM25 flat on the full registered Cranfield reproduces Pyserini 1.6.0's .3220 / .7224 and the report shows it."""
    dataset_path("cranfield")
    res = CliRunner().invoke(app, ["beir", "--dataset", "cranfield", "--retriever", "bm25", "--out", str(tmp_path),
                                   "--threads", "2"])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "metrics.json").read_text())["retrievers"]["bm25"]["record"]
    assert rec["ndcg@10"] == pytest.approx(0.3220, abs=0.005) and rec["recall@100"] == pytest.approx(0.7224, abs=0.005)
    report = (tmp_path / "report.md").read_text()
    assert "reference ndcg@10" in report and "| 0.3220 | 0.7224 |" in report
    # Cranfield's reference is our own measurement, and the report says so (it said "published numbers" before)
    assert "measured by us with Pyserini 1.6.0" in report and "published numbers" not in report
    assert "bm25" in res.output and "0.32" in res.output


def beir_main(capsys, *args: str) -> tuple[int, str]:
    """``recsparse beir ARGS`` through ``recsparse.cli.main`` (what the console script runs): exit code and stderr."""
    from recsparse.cli import main

    with pytest.raises(SystemExit) as e:
        main(["beir", *args])
    return e.value.code, capsys.readouterr().err


def one_line_error(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("recsparse: error: "), err
    return lines[0]


@pytest.mark.parametrize("file,line,new,msg", [
    ("queries.jsonl", 7, '{"_id": "7", "text": 7}\n', "field 'text' must be a string"),
    ("corpus.jsonl", 12, '{"_id": "12", "title": "x", "text": "y"\n', "invalid JSON"),
    ("qrels/test.tsv", 5, "3\t5\n", "expected 3 tab-separated columns"),
    ("qrels/test.tsv", 4, "3\t5\t1.5\n", "score '1.5' is not an integer"),
    ("corpus.jsonl", 3, '{"_id": null, "title": "x", "text": "y"}\n', "_id must be a string, got null"),
])
def test_cli_rejects_malformed_collection_with_file_and_line(cranfield_small, tmp_path, capsys, file, line, new, msg):
    bad = tmp_path / "bad"
    shutil.copytree(cranfield_small, bad)
    lines = (bad / file).read_text(encoding="utf-8").splitlines(keepends=True)
    lines[line - 1] = new
    (bad / file).write_text("".join(lines), encoding="utf-8")
    err = one_line_error(*beir_main(capsys, "--dataset", str(bad), "--out", str(tmp_path / "o")))
    assert f"{bad / file}:{line}: {msg}" in err
    assert not (tmp_path / "o").exists()


def test_cli_usage_errors_are_one_line_naming_the_option(cranfield_small, tmp_path, capsys):
    """Before: typer usage boxes (several lines) or a traceback for a missing model; now one line, exit 2."""
    cases = [
        (["-r", "bm99"], "--retriever: unknown retriever 'bm99'"),
        (["--split", "train"], "no qrels/train.tsv"),
        (["-r", f"sparse:{tmp_path / 'nope'}"], "no saved sparse retriever at"),
        (["-r", "sparse:"], "sparse:PATH needs a path"),
        (["--fusion", "max"], "--fusion: unknown method 'max'"),
        (["-r", "hybrid", "--hybrid-of", "bm25"], "--hybrid-of: need two different retrievers"),
        (["-r", "dense", "--model", str(tmp_path / "no-model")], "--model"),
    ]
    for args, msg in cases:
        err = one_line_error(*beir_main(capsys, "--dataset", str(cranfield_small), "--out", str(tmp_path / "o"),
                                        *args))
        assert msg in err, (args, err)
    err = one_line_error(*beir_main(capsys, "--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path)))
    assert "neither a registered dataset" in err


def test_cli_hybrid_of_any_two(cranfield_small, tmp_path):
    res = CliRunner().invoke(app, ["beir", "--dataset", str(cranfield_small), "-r", "hybrid", "--hybrid-of",
                                   "bm25,bm25-multifield", "--fusion", "interpolation", "--alpha", "0.3",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "metrics.json").read_text())["retrievers"]
    assert list(m) == ["bm25", "bm25-multifield", "hybrid"]
    rec = m["hybrid"]["record"]
    assert rec["fusion"] == "interpolation" and rec["alpha"] == 0.3 and rec["parts"] == "bm25+bm25-multifield"


@pytest.mark.slow
def test_cli_hybrid_with_dense(cranfield_tiny, tmp_path):
    res = CliRunner().invoke(app, ["beir", "--dataset", str(cranfield_tiny), "-r", "hybrid", "-r", "dense-hnsw",
                                   "--k", "20", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())["retrievers"]
    assert list(m) == ["bm25", "dense", "dense-hnsw", "hybrid"]
    # dense encoded the corpus (fresh cache); dense-hnsw found it in the cache
    assert m["dense"]["record"]["embeddings_cached"] is False and m["dense-hnsw"]["record"]["embeddings_cached"]
    assert "(cached embeddings)" in (tmp_path / "o" / "report.md").read_text()
    runs = {n: read_trec_run(tmp_path / "o" / "runs" / f"{n}.trec") for n in m}
    fused = rrf([runs["bm25"], runs["dense"]], k=60, top=20)  # ranks in the files are exact: same order
    assert {q: [h.docid for h in v] for q, v in runs["hybrid"].items()} == \
           {q: [h.docid for h in v] for q, v in fused.items()}


def test_open_retriever_on_another_corpus_is_refused(cranfield_small, cranfield_tiny, tmp_path):
    from recsparse.retrieval.base import CorpusMismatchError

    r = BM25Retriever()
    r.index(load(cranfield_tiny).corpus, tmp_path / "tiny-idx")
    with pytest.raises(CorpusMismatchError, match="built from another corpus"):
        evaluate_retrievers(load(cranfield_small), {"bm25": r}, out_dir=tmp_path / "o")
    r.close()


def test_sparse_index_on_another_corpus_is_one_line_exit_2(cranfield_small, cranfield_tiny, tmp_path):
    """``recsparse beir -r sparse:PATH`` with an impact index of another corpus fails (exit 2, one line naming both)
    instead of scoring it; the same index on its own corpus evaluates."""
    import subprocess
    import sys

    from recsparse.retrieval.sparse.impact import ImpactRetriever
    from recsparse.retrieval.sparse.models import splade_model

    r = ImpactRetriever(splade_model("splade-tiny"), name="sp", progress=False)
    r.index(load(cranfield_tiny).corpus, tmp_path / "sp")
    r.close()
    assert r.index_meta is None and load(cranfield_tiny).fingerprint == \
        json.loads((tmp_path / "sp" / "recsparse.json").read_text())["corpus_sha"]

    bad = subprocess.run([sys.executable, "-m", "recsparse", "beir", "--dataset", str(cranfield_small), "-r",
                          f"sparse:{tmp_path / 'sp'}", "--out", str(tmp_path / "o-bad")], capture_output=True,
                         text=True, timeout=300)
    # (model loading may print transformers' "Loading weights" progress before it: not an error line)
    errors = [ln for ln in bad.stderr.splitlines() if "error" in ln.lower()]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert len(errors) == 1 and errors[0].startswith("recsparse: error: ") and \
        "built from another corpus" in errors[0] and str(cranfield_small) in errors[0], bad.stderr
    assert not (tmp_path / "o-bad" / "metrics.json").exists()
    again = ImpactRetriever.open(tmp_path / "sp")
    rec = evaluate_retrievers(load(cranfield_tiny), {"sp": again}, out_dir=tmp_path / "o-ok")[0]
    assert rec["reused_index"] and rec["num_queries"] > 0
    again.close()


def test_drop_self_hits_in_the_harness(cranfield_small, tmp_path):
    """Cranfield's query ids (1..225) collide with doc ids (1..1400) though the documents are unrelated: exactly the
    case where the option changes results, which is why it is off by default."""
    from recsparse.retrieval.evaluation import drop_self

    ds = load(cranfield_small)
    runs: dict = {}
    keep = evaluate_retrievers(ds, {"bm25": BM25Retriever()}, out_dir=tmp_path / "a", keep_runs=runs)[0]
    dropped = evaluate_retrievers(ds, {"bm25": BM25Retriever()}, out_dir=tmp_path / "b", drop_self_hits=True,
                                  index_dir=tmp_path / "a" / "indexes")[0]
    selfish = [q for q, hits in runs["bm25"].items() if any(h.docid == q for h in hits)]
    assert selfish, "no query retrieved the document with its own id"
    assert dropped["recall@100"] == pytest.approx(round(evaluate(drop_self(runs["bm25"]), ds.qrels_dict("test"))[
        "recall@100"], 4))
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["drop_self_hits"] is True
    assert dropped["reused_index"] and not keep["reused_index"]  # same index, evaluated differently


def test_one_failing_query_never_loses_the_run(cranfield_small, tmp_path):
    """With Lucene's clause limit back at its default 1,024, a long query fails for real inside Anserini — which
    used to fail the whole batch_search. The harness searches query by query instead: the other queries are scored,
    the failure is warned about, counted in the record and the report, and its error kept in metrics.json."""
    from recsparse.retrieval.jvm import MAX_CLAUSES, autoclass
    from tests.retrieval.test_lucene import _long_query

    ds = load(cranfield_small)
    qs = ds.split_queries("test")
    bad_q = next(iter(qs))
    ds.queries = ds.queries.with_columns(
        text=pl.when(pl.col("_id") == bad_q).then(pl.lit(_long_query(5000))).otherwise(pl.col("text")))
    searcher = autoclass("org.apache.lucene.search.IndexSearcher")
    r = BM25Retriever()
    r.prepare()
    searcher.setMaxClauseCount(1024)
    try:
        with pytest.warns(UserWarning, match=f"query {bad_q!r} failed and scores 0: .*TooManyClauses"):
            rec = evaluate_retrievers(ds, {"bm25": r}, out_dir=tmp_path / "o")[0]
    finally:
        searcher.setMaxClauseCount(MAX_CLAUSES)
    assert rec["failed_queries"] == 1 and rec["num_queries"] == len(qs) and rec["ndcg@10"] > 0.2
    pq = json.loads((tmp_path / "o" / "metrics.json").read_text())["retrievers"]["bm25"]["per_query"]
    assert "TooManyClauses" in pq[bad_q]["error"] and pq[bad_q]["ndcg@10"] == 0.0
    assert sum("error" in v for v in pq.values()) == 1
    assert "**Failed queries**" in (tmp_path / "o" / "report.md").read_text()
    r.close()
