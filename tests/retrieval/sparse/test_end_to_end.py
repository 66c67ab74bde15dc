"""Tiny real run: train (train split of a SciFact slice) -> impact index -> search -> evaluate, via the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from recsparse.retrieval.sparse.training import TrainConfig, load_checkpoint_weights


def test_train_config_refuses_test_split_and_bad_values():
    with pytest.raises(ValueError, match="test"):
        TrainConfig(split="test")
    with pytest.raises(ValueError, match="reg"):
        TrainConfig(reg="l1")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


SEARCH = """
import json, sys
from recsparse.retrieval.sparse import open_retriever
r = open_retriever(sys.argv[1])
queries = json.loads(sys.argv[2])
print(json.dumps({q: [h.docid for h in r.search(t, 10)] for q, t in queries.items()}))
"""


def _run(args: list[str]) -> subprocess.CompletedProcess:
    # A fresh process per JVM user: pytest's faulthandler would treat the JVM's own (handled) SIGSEGVs as crashes.
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_cli_train_index_search_evaluate(scifact_small, tmp_path):
    from recsparse.retrieval.sparse.encoders import SparseModel

    out = tmp_path / "run"
    _run(["-m", "recsparse", "sparse", "run", "--dataset", str(scifact_small), "--variant", "inference-free",
          "--reg", "idf-flops", "--max-steps", "4", "--batch-size", "4", "--max-length", "48", "--out", str(out)])
    cfg = json.loads((out / "train" / "train_config.json").read_text())
    assert cfg["steps"] == 4 and cfg["split"] == "train"
    # checkpoints are weights-only and hold the trained weights, which moved away from the starting checkpoint
    trained = SparseModel.load(out / "train" / "model")
    ck = load_checkpoint_weights(out / "train" / "checkpoints" / "last.ckpt")
    key = "doc_encoder.mlm.cls.predictions.transform.dense.weight"
    assert torch.allclose(ck[key], trained.state_dict()[key])
    fresh = SparseModel("inference-free")
    assert not torch.allclose(fresh.state_dict()[key], trained.state_dict()[key])
    # the harness outputs, with BM25 beside the sparse model
    qrels: dict[str, set[str]] = {}
    for line in (scifact_small / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, _ = line.split("\t")
        qrels.setdefault(q, set()).add(d)
    metrics = json.loads((out / "scifact-small" / "metrics.json").read_text())
    name = "sparse-inference-free-idf-flops"
    assert {name, "bm25"} <= set(metrics["retrievers"])
    rec = metrics["retrievers"][name]["record"]
    assert 0.0 <= rec["ndcg@10"] <= 1.0 and rec["num_queries"] == len(qrels)
    assert (out / "scifact-small" / "report.md").is_file()
    stats = json.loads((out / "scifact-small" / "sparse_stats.json").read_text())[name]
    assert stats["avg_doc_nnz"] > 0 and stats["avg_query_nnz"] > 0 and stats["flops"] > 0
    # the saved impact index re-opens through the sparse:PATH entry point and finds judged documents
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (scifact_small / "queries.jsonl").open()}
    res = _run(["-c", SEARCH, str(out / "scifact-small" / "indexes" / name),
                json.dumps({q: queries[q] for q in qrels})])
    hits = json.loads(res.stdout.strip().splitlines()[-1])
    found = sum(bool(set(hits[q]) & ds) for q, ds in qrels.items())
    assert found >= len(qrels) // 2  # a tiny corpus: most judged documents are in the top 10


@pytest.mark.slow
def test_bm25_negatives_and_ensemble_teacher_batch(scifact_small, tmp_path):
    from recsparse.data import load
    from recsparse.retrieval.sparse.training import Collator, PairDataset, build_examples, make_loss
    from recsparse.retrieval.sparse.encoders import SparseModel

    ds = load(scifact_small)
    cfg = TrainConfig(distill=True, negatives=2, bm25_depth=10)
    ex = build_examples(ds, cfg, tmp_path)
    rel = ds.qrels_dict("train")
    assert all(d not in rel[q] for q, ns in ex.negatives.items() for d in ns)  # negatives are never judged relevant
    assert all(len(ns) > 0 for ns in ex.negatives.values())
    data = PairDataset(ex, cfg.negatives, seed=0, distill=True)
    q, docs, teacher = data[0]
    assert len(docs) == 3 and teacher.shape == (3,) and 0.0 <= teacher.min() and teacher.max() <= 2.0
    model = SparseModel("inference-free")
    batch = Collator(model)([data[i] for i in range(4)])
    assert batch["d_ids"].shape[0] == 12 and batch["teacher"].shape == (4, 3)
    qv = model.query_encoder(batch["q_ids"], batch["q_mask"])
    dv = model.doc_encoder(batch["d_ids"], batch["d_mask"])
    parts = make_loss(cfg, model.idf)(qv, dv, step=10, teacher=batch["teacher"])
    parts.total.backward()
    assert torch.isfinite(parts.total) and parts.reg_doc > 0 and parts.reg_query == 0  # no query reg for IDF queries
    assert model.doc_encoder.mlm.cls.predictions.transform.dense.weight.grad.abs().sum() > 0
