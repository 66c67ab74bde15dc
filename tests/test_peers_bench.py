"""benchmarks/peers_bench.py: the RecBole atomic files carry exactly our Gowalla split; the summary's threshold
logic; the beir driver's TREC reader (the peers themselves live in their own venv and are not imported here)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.conftest import REPO as ROOT
from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/peers_bench.py")


def _pairs(frame: pl.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user_id"].to_list(), frame["item_id"].to_list()))


def test_gowalla_atomic_files_hold_the_same_train_and_test_sets(bench, tmp_path):
    from recsparse.data import load

    try:
        ds = load("gowalla")
    except Exception as e:  # noqa: BLE001 - the shared data folder is absent
        pytest.skip(f"gowalla not available: {e}")
    folder, counts = bench.convert_gowalla(tmp_path)
    assert counts == ds.counts()
    read = {}
    for part in ("train", "valid", "test"):
        f = pl.read_csv(folder / "gowalla" / f"gowalla.{part}.inter", separator="\t",
                        schema_overrides={"user_id:token": pl.Utf8, "item_id:token": pl.Utf8})
        assert f.columns == ["user_id:token", "item_id:token"]
        read[part] = f.select(pl.col("user_id:token").cast(pl.Int64).alias("user_id"),
                              pl.col("item_id:token").cast(pl.Int64).alias("item_id"))
    assert read["train"].height == 810_128 and read["test"].height == 217_242
    assert _pairs(read["train"]) == _pairs(ds.train)
    # RecBole evaluates the `valid` file (history = training items only); `test` is the same set
    assert _pairs(read["valid"]) == _pairs(read["test"]) == _pairs(ds.test)
    assert not _pairs(read["train"]) & _pairs(read["test"])


def test_summary_times_to_threshold_and_reports_not_reached(bench):
    res = {"peer": "recsparse", "model": "x", "train_s": 30.0, "train_cpu_s": 12.0, "threads": 1,
           "epochs": [{"epoch": e, "seconds": 10.0, "cpu_seconds": 4.0, "examples": 100} for e in (1, 2, 3)],
           "curve": [{"epoch": 1, "train_s": 10.0, "train_cpu_s": 4.0, "recall@20": 0.12, "ndcg@20": 0.1},
                     {"epoch": 2, "train_s": 20.0, "train_cpu_s": 8.0, "recall@20": 0.16, "ndcg@20": 0.13},
                     {"epoch": 3, "train_s": 30.0, "train_cpu_s": 12.0, "recall@20": 0.155, "ndcg@20": 0.14}]}
    row = bench.summarize(res, 12.0, "cpu")
    assert row["cpu_s_to_r20_0.15"] == 8.0 and row["wall_s_to_r20_0.15"] == 20.0
    assert row["cpu_s_to_r20_0.17"] == "not reached in 12 s (best 0.1600 at 8 s)"
    assert row["wall_s_to_r20_0.17"] == "not reached in 30 s (best 0.1600 at 20 s)"
    assert row["best_recall@20"] == 0.16 and row["best_epoch"] == 2 and row["final_recall@20"] == 0.155
    assert row["examples_per_cpu_s"] == 25.0 and row["examples_per_wall_s"] == 10.0
    assert row["cpu_s_per_epoch"] == 4.0


def test_summary_uses_the_budget_in_force_and_a_finished_recipe_is_not_reached(bench):
    curve = [{"epoch": 1, "train_s": 10.0, "train_cpu_s": 4.0, "recall@20": 0.12, "ndcg@20": 0.1}]
    res = {"peer": "recbole", "model": "LightGCN", "train_s": 10.0, "train_cpu_s": 4.0, "curve": curve,
           "epochs": [{"epoch": 1, "seconds": 10.0, "cpu_seconds": 4.0}], "examples_per_epoch": 40}
    # the budget the run recorded (re-read from its --budget-file) replaces the manifest's
    assert bench.summarize(res | {"budget_s": 4.0}, 400.0, "cpu")["cpu_s_to_r20_0.15"] == \
        "not reached in 4 s (best 0.1200 at 4 s)"
    assert bench.summarize(res, 400.0, "cpu")["cpu_s_to_r20_0.15"] == "not reached at 4 cpu s (stopped early)"
    # a run that ended its own recipe (max epochs) under budget: not reached in the whole run
    row = bench.summarize(res | {"finished": True}, 400.0, "cpu")
    assert row["cpu_s_to_r20_0.15"] == "not reached in 4 s (best 0.1200 at 4 s)" and row["budget"] == "400 cpu s"


def test_best_within_a_budget_only_counts_evaluations_inside_it(bench):
    curve = [{"epoch": e, "train_cpu_s": 100.0 * e, "recall@20": r, "ndcg@20": r / 2}
             for e, r in ((1, 0.10), (2, 0.14), (3, 0.13), (4, 0.19))]
    assert bench.best_within(curve, 350.0, "train_cpu_s")["epoch"] == 2  # .14 beats .13; epoch 4 is outside
    assert bench.best_within(curve, 400.0, "train_cpu_s")["recall@20"] == 0.19
    assert bench.best_within(curve, 99.0, "train_cpu_s") is None


def test_recbole_driver_rereads_its_budget_file(tmp_path):
    drv = load_script("benchmarks/peers/recbole_driver.py")
    f = tmp_path / "budget"
    assert drv.read_budget(None, 100.0) == 100.0 and drv.read_budget(str(f), 100.0) == 100.0
    f.write_text("2200\n")
    assert drv.read_budget(str(f), 100.0) == 2200.0
    f.write_text("soon")
    assert drv.read_budget(str(f), 300.0) == 300.0


def test_fast_lightgcn_recipe_differs_from_the_shipped_one_only_in_lr_and_epochs():
    """configs/gowalla_lightgcn_fast.yaml is the documented fast variant: the same model, loss and data."""
    from recsparse.pipelines.config import load_config

    base = load_config(str(ROOT / "configs" / "gowalla_lightgcn.yaml"), [])
    fast = load_config(str(ROOT / "configs" / "gowalla_lightgcn_fast.yaml"), [])
    assert (fast.trainer.lr, fast.trainer.max_epochs) == (0.01, 4)
    same = load_config(str(ROOT / "configs" / "gowalla_lightgcn_fast.yaml"),
                       [f"name={base.name}", f"trainer.lr={base.trainer.lr}", f"trainer.max_epochs={base.trainer.max_epochs}"])
    assert same == base


def test_beir_driver_reads_trec_runs(tmp_path):
    drv = load_script("benchmarks/peers/beir_driver.py")
    p = tmp_path / "r.trec"
    p.write_text("q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 1.0 t\nq2 Q0 d9 1 0.3 t\n")
    assert drv.read_trec(str(p)) == {"q1": {"d1": 2.5, "d2": 1.0}, "q2": {"d9": 0.3}}


def test_summary_of_a_run_stopped_early_says_so(bench):
    res = {"peer": "recbole", "model": "BPR", "train_s": 900.0, "train_cpu_s": 8.0, "finished": False,
           "epochs": [{"epoch": 1, "seconds": 900.0, "cpu_seconds": 8.0}], "curve": [], "examples_per_epoch": 800}
    row = bench.summarize(res, 400.0, "cpu")
    assert row["cpu_s_to_r20_0.17"] == "not evaluated (stopped at 8 cpu s)"
    assert row["best_recall@20"] is None and row["examples_per_cpu_s"] == 100.0


def _tiny_beir(src: Path, dst: Path, n_queries: int = 8, n_docs: int = 150) -> Path:
    """A real SciFact slice in BEIR layout: the first test queries, their judged documents and the first docs."""
    import csv
    import json

    qrels = list(csv.reader((src / "qrels" / "test.tsv").open(), delimiter="\t"))[1:]
    qids = list(dict.fromkeys(q for q, _, _ in qrels))[:n_queries]
    judged = [r for r in qrels if r[0] in qids]
    docs = [json.loads(line) for line in (src / "corpus.jsonl").open()]
    keep = {d for _, d, _ in judged} | {d["_id"] for d in docs[:n_docs]}
    (dst / "qrels").mkdir(parents=True)
    (dst / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs if d["_id"] in keep))
    queries = [json.loads(line) for line in (src / "queries.jsonl").open()]
    (dst / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries if q["_id"] in qids))
    (dst / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in judged))
    return dst


def test_beir_dense_path_agrees_with_our_harness(bench, tmp_path, monkeypatch):
    """The dense branch of the beir section end to end on a real SciFact slice: our harness's MiniLM run and beir's
    DenseRetrievalExactSearch on the SAME cached corpus vectors rank the same documents, and both evaluators give
    the same nDCG@10 / R@100 on both runs."""
    from recsparse.data import data_root

    py = bench.peer_python(bench.DEFAULT_VENV)
    if not py.is_file():
        pytest.skip(f"no peers venv at {bench.DEFAULT_VENV} (benchmark-only; created by peers_bench.py --sections setup)")
    src = Path(data_root()) / "scifact"
    if not (src / "corpus.jsonl").is_file():
        pytest.skip("scifact not available")
    try:
        from recsparse.retrieval.dense import model_path

        model_path("all-MiniLM-L6-v2")
    except Exception as e:  # noqa: BLE001 - the offline model is absent
        pytest.skip(f"all-MiniLM-L6-v2 not available: {e}")
    monkeypatch.setenv("RECSPARSE_CACHE", str(tmp_path / "cache"))
    folder = _tiny_beir(src, tmp_path / "tiny")
    rows = bench.beir_rows([str(folder)], tmp_path / "work", py, 1, ["dense"])
    metrics = {r["name"].rsplit(":", 1)[1]: r for r in rows if r["section"] == "beir-metrics"}
    assert set(metrics) == {"dense", "beir_dres"}
    for r in metrics.values():  # our evaluator vs beir's EvaluateRetrieval on the same run (beir rounds to 5 places)
        assert r["max_abs_diff"] <= 1e-4, r
        assert r["queries_judged"] == 8
    timed = [r for r in rows if r["section"] == "beir-dense-time"]
    assert len(timed) == 2 and abs(timed[0]["ndcg@10"] - timed[1]["ndcg@10"]) <= 1e-4
    assert abs(timed[0]["recall@100"] - timed[1]["recall@100"]) <= 1e-4
    # same documents in the same order at the top of every query's ranking
    from recsparse.retrieval.evaluation import read_trec_run

    work = tmp_path / "work" / "beir" / folder.name
    ours = read_trec_run(work / "runs_ours" / "runs" / "dense.trec")
    theirs = read_trec_run(work / "beir_dres.trec")
    assert set(ours) == set(theirs)
    for q in ours:  # runs are in rank order
        assert [h.docid for h in ours[q][:10]] == [h.docid for h in theirs[q][:10]], q
