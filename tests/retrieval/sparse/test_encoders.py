"""SPLADE pooling, the fast max-logit path, IDF and inference-free query weights, backbones, persistence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from recsparse.retrieval.sparse.encoders import (EncoderConfig, IDFQueryEncoder, SparseModel, bm25_idf, corpus_idf,
                                                 max_logits, splade_pool)

TEXTS = ["Microstructural development of human newborn cerebral white matter assessed in vivo by diffusion tensor "
         "magnetic resonance imaging.", "Induction of myelodysplasia by myeloid-derived suppressor cells."]


def test_splade_pool_hand_computed():
    logits = torch.tensor([[[1.0, -2.0], [math.e - 1, -1.0], [50.0, 50.0]]])  # (B=1, L=3, V=2); last row is padding
    mask = torch.tensor([[1, 1, 0]])
    w = splade_pool(logits, mask)
    assert w.tolist()[0] == pytest.approx([1.0, 0.0])  # max(1, e-1) -> log(e) = 1; all negative -> 0; pad ignored
    assert splade_pool(logits, torch.zeros(1, 3, dtype=torch.long)).abs().sum() == 0


def test_max_logits_matches_autograd_reference():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 4, dtype=torch.double, requires_grad=True)
    wt = torch.randn(7, 4, dtype=torch.double, requires_grad=True)
    b = torch.randn(7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, w, b: torch.log1p(torch.relu(max_logits(z, w, b, chunk=2))), (z, wt, b))
    ref = torch.log1p(torch.relu((z @ wt.T + b).amax(1)))
    assert torch.allclose(torch.log1p(torch.relu(max_logits(z, wt, b))), ref)


def test_encoder_fast_path_equals_full_mlm_pooling(tiny_model):
    enc = tiny_model.doc_encoder.eval()
    t = enc.tokenize(TEXTS, 64)
    assert (t["attention_mask"] == 0).any()  # the two texts differ in length: padding is exercised
    with torch.no_grad():
        fast = enc(t["input_ids"], t["attention_mask"])
        logits = enc.mlm(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
        ref = splade_pool(logits, t["attention_mask"]).masked_fill(enc.special, 0.0)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert (fast >= 0).all() and 20 < (fast > 0).sum(1).float().mean() < 2000
    assert fast[:, enc.tokenizer.cls_token_id].eq(0).all() and fast[:, enc.tokenizer.sep_token_id].eq(0).all()
    assert enc.head_init.startswith("checkpoint MLM head")


def test_minilm_gets_tied_identity_head():
    enc = SparseModel("splade", EncoderConfig(backbone="minilm")).doc_encoder
    head = enc.mlm.cls.predictions
    assert head.decoder.weight.data_ptr() == enc.mlm.bert.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(head.transform.dense.weight, torch.eye(384))
    assert "tied" in enc.head_init


def test_bm25_idf_hand_values():
    # N = 10: df 0 -> log(1 + 10.5/0.5) = log 22; df 10 -> log(1 + 0.5/10.5)
    idf = bm25_idf(torch.tensor([0, 10, 5]), 10)
    assert idf.tolist() == pytest.approx([math.log(22), math.log(1 + 0.5 / 10.5), math.log(2)], rel=1e-6)


def test_inference_free_query_weights_equal_idf(tiny_model):
    tok = tiny_model.tokenizer
    idf, n = corpus_idf(tok, TEXTS, tiny_model.doc_encoder.vocab_size)
    assert n == 2
    cell = tok.convert_tokens_to_ids("cells")
    assert idf[cell].item() == pytest.approx(math.log(1 + 1.5 / 1.5))  # in 1 of 2 texts
    qe = IDFQueryEncoder(tok, idf)
    q = "white matter cells cells"
    w = qe.encode_texts([q])[0]
    ids = set(tok(q, add_special_tokens=False)["input_ids"])
    assert set(w.nonzero().flatten().tolist()) == ids  # exactly the query's word pieces, each once, no [CLS]/[SEP]
    for i in ids:
        assert w[i].item() == pytest.approx(idf[i].item())
    assert qe.query_terms(q) == pytest.approx({i: idf[i].item() for i in ids})
    assert not qe.idf.requires_grad and IDFQueryEncoder(tok, idf, trainable=True).idf.requires_grad


def test_save_load_round_trip_weights_only(tmp_path, tiny_model):
    idf = torch.rand(tiny_model.doc_encoder.vocab_size) + 0.5
    m = SparseModel("inference-free", tiny_model.config, idf=idf).eval()  # eval: no dropout in the comparison
    with torch.no_grad():
        m.doc_encoder.mlm.cls.predictions.bias.add_(0.25)  # a change the loader must restore
    m.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)  # plain tensors only
    assert "idf" in state
    m2 = SparseModel.load(tmp_path / "m")
    assert m2.variant == "inference-free" and torch.equal(m2.query_encoder.idf, idf)
    with torch.no_grad():
        assert torch.allclose(m.encode_docs(TEXTS), m2.encode_docs(TEXTS))


def test_config_validation():
    with pytest.raises(ValueError, match="backbone"):
        EncoderConfig(backbone="bert-large")
    with pytest.raises(ValueError, match="max_length"):
        EncoderConfig(max_length=0)
    with pytest.raises(ValueError, match="freeze_layers"):
        EncoderConfig(freeze_layers=-1)
    with pytest.raises(ValueError, match="variant"):
        SparseModel("colbert")


def test_trainable_idf_receives_gradient(tiny_model):
    idf = torch.ones(tiny_model.doc_encoder.vocab_size)
    m = SparseModel("inference-free", tiny_model.config, idf=idf, train_idf=True)
    q = m.encode_queries(["white matter"])
    d = m.encode_docs(TEXTS[:1])
    (q * d).sum().backward()
    g = m.query_encoder.idf.grad
    white = m.tokenizer.convert_tokens_to_ids("white")
    assert g is not None and g[white] > 0 and g.count_nonzero() <= 2  # only the query's own word pieces


def test_doc_windows_max_pool_over_the_whole_text(tiny_model):
    from dataclasses import replace

    from tests.conftest import dataset_path

    lines = (dataset_path("scifact") / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    texts = [json.loads(x)["text"] for x in lines]
    tok = tiny_model.tokenizer
    long_i = next(i for i, t in enumerate(texts) if len(tok(t, add_special_tokens=False)["input_ids"]) > 150)
    batch = [texts[long_i], json.loads(lines[0])["title"]]  # a long abstract and a title (one window)
    one = tiny_model.eval()
    with torch.no_grad():
        w1 = one.encode_docs(batch)
        one.config = replace(one.config, max_length=64, doc_windows=1)
        first = one.encode_docs(batch)
        one.config = replace(one.config, doc_windows=8, doc_stride=8)
        win = one.encode_docs(batch)
        # the long text's windows, encoded one by one, max-pooled by hand
        t = tok([texts[long_i]], truncation=True, max_length=64, stride=8, return_overflowing_tokens=True,
                padding=True, return_tensors="pt")
        ref = torch.stack([one.doc_encoder(t["input_ids"][j:j + 1], t["attention_mask"][j:j + 1])[0]
                           for j in range(min(8, len(t["input_ids"])))]).amax(0)
        one.config = replace(one.config, max_length=128, doc_windows=1, doc_stride=16)
    assert len(t["input_ids"]) >= 3
    assert torch.allclose(win[0], ref, atol=1e-5)
    assert (win[0] >= first[0] - 1e-6).all() and (win[0] > 0).sum() > (first[0] > 0).sum()
    assert torch.allclose(win[1], first[1], atol=1e-5)  # a text within one window is unchanged
    assert torch.allclose(w1[1], first[1], atol=1e-5)
    with pytest.raises(ValueError, match="doc_windows"):
        EncoderConfig(doc_windows=0)


def test_query_token_ids_equal_the_hf_call_whatever_state_it_left(tiny_model):
    from tests.conftest import dataset_path

    lines = (dataset_path("scifact") / "queries.jsonl").read_text(encoding="utf-8").splitlines()[:200]
    queries = [json.loads(x)["text"] for x in lines]
    tok = tiny_model.tokenizer
    qe = IDFQueryEncoder(tok, torch.ones(tiny_model.doc_encoder.vocab_size), max_length=8)
    for state in ({"truncation": True, "max_length": 5}, {"padding": "max_length", "max_length": 40}, {}):
        tok(queries[:3], **state)  # a batched call leaves truncation/padding set on the Rust tokenizer
        for q in queries:
            assert qe.token_ids(q) == tok(q, add_special_tokens=False, truncation=True, max_length=8)["input_ids"]
    assert any(len(tok(q, add_special_tokens=False)["input_ids"]) > 8 for q in queries)  # truncation exercised
