"""The `recsparse sparse` commands as a user runs them: index any BEIR folder, train -> index -> evaluate, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from recsparse.errors import ConfigError
from recsparse.retrieval.sparse.training import SparseTrainConfig


def test_train_config_refuses_test_split_and_bad_values():
    with pytest.raises(ConfigError, match="split='test'"):
        SparseTrainConfig(split="test")
    with pytest.raises(ConfigError, match="reg: must be one of"):
        SparseTrainConfig(reg="l1")
    with pytest.raises(ConfigError, match="batch_size=0"):
        SparseTrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="needs negatives >= 1"):
        SparseTrainConfig(loss="margin-mse", negatives=0)
    with pytest.raises(ConfigError, match="learn_idf"):
        SparseTrainConfig(variant="splade", learn_idf=True)
    with pytest.raises(ConfigError, match="freeze_document"):
        SparseTrainConfig(freeze_document=True)  # nothing left to train
    # the typed config system shared with `recsparse train`: YAML-style strings and overrides are checked
    from recsparse.config import load

    assert load(SparseTrainConfig, None, ["lr=1e-3", "reg=flops"]).lr == 1e-3
    with pytest.raises(ConfigError, match="max_steps: expected an integer, got 2.5"):
        load(SparseTrainConfig, None, ["max_steps=2.5"])


SEARCH = """
import json, sys
from recsparse.retrieval.sparse import open_retriever
r = open_retriever(sys.argv[1])
queries = json.loads(sys.argv[2])
print(json.dumps({q: [h.docid for h in r.search(t, 10)] for q, t in queries.items()}))
"""


def _cli(args: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    # A fresh process per JVM user: pytest's faulthandler would treat the JVM's own (handled) SIGSEGVs as crashes.
    out = subprocess.run([sys.executable, "-m", "recsparse", *args], capture_output=True, text=True, timeout=1800)
    if ok:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _qrels(folder) -> dict[str, set[str]]:  # noqa: ANN001
    q: dict[str, set[str]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        a, d, _ = line.split("\t")
        q.setdefault(a, set()).add(d)
    return q


def _found_in_top10(index, folder) -> tuple[int, int]:  # noqa: ANN001
    qrels = _qrels(folder)
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (folder / "queries.jsonl").open()}
    res = subprocess.run([sys.executable, "-c", SEARCH, str(index), json.dumps({q: queries[q] for q in qrels})],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    hits = json.loads(res.stdout.strip().splitlines()[-1])
    return sum(bool(set(hits[q]) & ds) for q, ds in qrels.items()), len(qrels)


@pytest.fixture()
def test_only_folder(scifact_small, tmp_path):
    """A BEIR folder with judged test queries but no train split (what `sparse run` used to die on)."""
    d = tmp_path / "no-train"
    shutil.copytree(scifact_small, d)
    (d / "qrels" / "train.tsv").unlink()
    return d


def test_sparse_run_without_train_split_is_one_line_exit_2(test_only_folder, tmp_path):
    out = _cli(["sparse", "run", "--dataset", str(test_only_folder), "--out", str(tmp_path / "o")], ok=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("recsparse: error:") and "qrels/train.tsv" in lines[0] and "sparse index" in lines[0]


def test_sparse_index_names_a_bad_model_in_one_line(scifact_small, tmp_path):
    for bad in (str(tmp_path), "no-such-org/no-such-sparse-model"):
        out = _cli(["sparse", "index", "--model", bad, "--dataset", str(scifact_small), "--out",
                    str(tmp_path / "o")], ok=False)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and bad in lines[0], out.stderr[-3000:]


def test_sparse_index_any_beir_folder_with_the_shipped_model(test_only_folder, tmp_path):
    from sentence_transformers.sparse_encoder import SparseEncoder

    from recsparse.retrieval.sparse.models import variant_of

    out = tmp_path / "idx"
    res = _cli(["sparse", "index", "--model", "splade-tiny", "--dataset", str(test_only_folder), "--out", str(out),
                "--doc-windows", "2", "--bm25"])
    metrics = json.loads((out / "metrics.json").read_text())["retrievers"]
    name = "sparse-splade-tiny"
    assert {name, "bm25"} <= set(metrics) and "impact index:" in res.stdout
    rec = metrics[name]["record"]
    index = out / "indexes" / name
    meta = json.loads((index / "recsparse.json").read_text())
    assert meta["doc_windows"] == 2 and meta["encode_docs_per_s"] > 0 and meta["variant"] == "inference-free"
    assert rec["index_s"] >= meta["encode_s"]  # index_s counts encoding, not only the Lucene build
    assert (out / "command.txt").read_text().startswith("recsparse sparse index")
    assert variant_of(SparseEncoder(str(index / "model"))) == "inference-free"  # the saved model loads back
    found, n = _found_in_top10(index, test_only_folder)
    assert found >= n // 2  # a tiny corpus: most judged documents are in the top 10


@pytest.mark.slow
def test_cli_train_index_search_evaluate(scifact_small, tmp_path):
    import torch
    from sentence_transformers.sparse_encoder import SparseEncoder

    from recsparse.retrieval.sparse import models as M

    out = tmp_path / "run"
    _cli(["sparse", "run", "--dataset", str(scifact_small), "--variant", "inference-free", "--reg", "idf-flops",
          "--max-steps", "4", "--batch-size", "4", "--max-length", "48", "--no-progress", "--out", str(out)])
    cfg = json.loads((out / "train" / "train_config.json").read_text())
    assert cfg["steps"] == 4 and cfg["split"] == "train" and cfg["train_datasets"] == ["scifact-small"]
    trained = SparseEncoder(str(out / "train" / "model"))  # standard sentence-transformers folder
    key = "cls.predictions.transform.dense.weight"
    w = dict(M.document_transformer(trained).auto_model.named_parameters())[key]
    w0 = dict(M.document_transformer(M.inference_free_model()).auto_model.named_parameters())[key]
    assert not torch.allclose(w, w0)  # training moved the weights
    metrics = json.loads((out / "scifact-small" / "metrics.json").read_text())
    name = "sparse-inference-free-idf-flops"
    assert {name, "bm25"} <= set(metrics["retrievers"])
    rec = metrics["retrievers"][name]["record"]
    assert 0.0 <= rec["ndcg@10"] <= 1.0 and rec["num_queries"] == len(_qrels(scifact_small))
    stats = json.loads((out / "scifact-small" / "sparse_stats.json").read_text())[name]
    assert stats["avg_doc_nnz"] > 0 and stats["avg_query_nnz"] > 0 and stats["flops"] > 0
    found, n = _found_in_top10(out / "scifact-small" / "indexes" / name, scifact_small)
    assert found >= n // 2


def test_teacher_scores_kl_is_per_query_minmax_and_margin_mse_is_on_bm25_scale():
    import torch

    from recsparse.retrieval.sparse.training import teacher_scores

    cands = [("q1", ["a", "b", "c"]), ("q2", ["d", "e", "f"])]
    bm25 = {"q1": {"a": 30.0, "b": 20.0, "c": 10.0}, "q2": {"e": 12.0, "f": 8.0}}  # q2's positive d: not retrieved
    cos = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.6, "e": 0.6, "f": 0.2}
    dense = lambda q, docs: torch.tensor([cos[d] for d in docs])  # noqa: E731
    kl = teacher_scores(cands, bm25, dense, "kl")
    assert kl[0] == pytest.approx([1.0 + 1.0, 0.5 + 0.0, 0.0 + 0.5], abs=1e-6)
    assert kl[1] == pytest.approx([0.0 + 1.0, 1.0 + 1.0, 0.0 + 0.0], abs=1e-6)  # d gets q2's lowest BM25 score
    only_bm25 = teacher_scores(cands, bm25, None, "margin-mse")
    assert only_bm25 == [[30.0, 20.0, 10.0], [8.0, 12.0, 8.0]]  # raw Lucene scores: the student's scale
    both = torch.tensor(teacher_scores(cands, bm25, dense, "margin-mse"))
    b = torch.tensor(only_bm25)
    c = torch.tensor([[cos[d] for d in docs] for _, docs in cands])
    assert torch.allclose(both, (b + c * b.std() / c.std()) / 2)


@pytest.mark.slow
def test_bm25_negatives_and_ensemble_teacher(scifact_small, tmp_path):
    import random

    from recsparse.data import load
    from recsparse.retrieval.sparse.training import build_examples

    ds = load(scifact_small)
    cfg = SparseTrainConfig(loss="kl", teacher="dense+bm25", negatives=2, bm25_depth=10)
    ex = build_examples(ds, cfg, tmp_path, random.Random(0))
    rel = ds.qrels_dict("train")
    text_to_id = {f"{t} {x}".strip() if t else x: i for i, t, x in zip(ds.corpus["_id"], ds.corpus["title"],
                                                                         ds.corpus["text"])}
    queries = {v: k for k, v in ds.split_queries("train").items()}
    for (q, _), negs in zip(ex.rows, ex.negatives):
        assert len(negs) == 2 and all(text_to_id[n] not in rel[queries[q]] for n in negs)  # never judged relevant
    assert all(len(lab) == 3 and 0.0 <= min(lab) and max(lab) <= 2.0 for lab in ex.labels)
    data = ex.to_dataset()
    assert data.column_names == ["query", "positive", "negative_1", "negative_2", "label"]


def test_positives_per_query_caps_pairs_per_training_query(tmp_path):
    import random

    from recsparse.data import load
    from recsparse.retrieval.sparse.training import build_examples
    from tests.retrieval.sparse.conftest import scifact_slice

    ds = load(scifact_slice(tmp_path / "scifact-200", train_queries=200, extra_docs=0))
    rel = ds.qrels_dict("train")
    every = build_examples(ds, SparseTrainConfig(negatives=0), ".", random.Random(0))
    assert len(every.rows) == sum(1 for docs in rel.values() for s in docs.values() if s > 0)
    one = build_examples(ds, SparseTrainConfig(negatives=0, positives_per_query=1), ".", random.Random(0))
    assert len(one.rows) == len(rel) < len(every.rows)  # the slice has queries with several judged documents


def test_learned_idf_with_frozen_documents_trains_only_the_query_table(scifact_small, tmp_path):
    """learn_idf + freeze_document: the document encoder stays bit-identical, the query table moves at idf_lr (the
    encoder's lr would leave IDF-sized weights where they are), and the saved table is marked learned, so indexing
    keeps it instead of refitting the corpus IDF."""
    import torch

    from recsparse.data import load
    from recsparse.retrieval.sparse import models as M
    from recsparse.retrieval.sparse.training import train

    cfg = SparseTrainConfig(learn_idf=True, freeze_document=True, idf_lr=1e-2, lr=1e-6, negatives=0, max_steps=3,
                            batch_size=4, max_length=48, lr_warmup_steps=0, num_threads=1)
    res = train([load(scifact_small)], cfg, tmp_path / "train", progress=False)
    trained = M.load_model(res.model_dir)
    fresh = M.build_model("splade-tiny", "inference-free")
    doc_now = dict(M.document_pipeline(trained).named_parameters())
    for n, p in M.document_pipeline(fresh).named_parameters():
        assert torch.equal(p, doc_now[n]), n
    table = M.query_table(trained)
    assert not table.frozen
    texts = [M.text_of(t, x) for t, x in zip(load(scifact_small).corpus["title"], load(scifact_small).corpus["text"])]
    idf = M.corpus_idf(M.tokenizer_of(fresh), texts, M.vocab_size(fresh))[0]
    M.set_query_idf(fresh, idf)
    moved = (table.weight - M.query_table(fresh).weight).abs()
    assert moved.max() > 5e-3  # Adam moves a weight ~lr per step: idf_lr, not the encoder's 1e-6


def test_freeze_vocabulary_keeps_the_term_parameters_and_trains_the_rest(scifact_small, tmp_path):
    import torch

    from recsparse.data import load
    from recsparse.retrieval.sparse import models as M
    from recsparse.retrieval.sparse.training import train

    cfg = SparseTrainConfig(freeze_vocabulary=True, negatives=0, max_steps=2, batch_size=4, max_length=48,
                            lr_warmup_steps=0, lr=1e-3, num_threads=1)
    res = train([load(scifact_small)], cfg, tmp_path / "train", progress=False)
    now = dict(M.document_transformer(M.load_model(res.model_dir)).auto_model.named_parameters())
    before = dict(M.document_transformer(M.build_model("splade-tiny")).auto_model.named_parameters())
    for name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):  # the decoder is tied to the first
        assert torch.equal(now[name], before[name]), name
    assert not torch.equal(now["cls.predictions.transform.dense.weight"], before["cls.predictions.transform.dense.weight"])
