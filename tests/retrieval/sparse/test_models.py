"""SparseEncoder models: shipped backbones, inference-free router, persistence, windows, the max-logit fast paths."""

from __future__ import annotations

import json
import math

import pytest
import torch

from recsparse.retrieval.sparse import models as M

TEXTS = ["Microstructural development of human newborn cerebral white matter assessed in vivo by diffusion tensor "
         "magnetic resonance imaging.", "Induction of myelodysplasia by myeloid-derived suppressor cells."]


def _dense(x: torch.Tensor) -> torch.Tensor:
    return x.to_dense() if x.is_sparse else x


def test_shipped_models_are_plain_sentence_transformers_sparse_encoders(tiny_model, inference_free_model):
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.models import Router, SparseStaticEmbedding, SpladePooling, Transformer

    assert isinstance(tiny_model, SparseEncoder) and M.variant_of(tiny_model) == "splade"
    assert isinstance(tiny_model[0], Transformer) and isinstance(tiny_model[1], SpladePooling)
    assert isinstance(inference_free_model[0], Router) and M.variant_of(inference_free_model) == "inference-free"
    assert isinstance(M.query_table(inference_free_model), SparseStaticEmbedding)
    assert M.vocab_size(tiny_model) == 30522
    with pytest.raises(M.ModelError, match="shipped"):
        M.backbone_dir("bert-large")
    with pytest.raises(M.ModelError, match="variant"):
        M.build_model("splade-tiny", "colbert")


def test_minilm_gets_tied_identity_head():
    m = M.splade_model("minilm")
    mlm = M.document_transformer(m).auto_model
    t = mlm.cls.predictions.transform
    assert torch.equal(t.dense.weight, torch.eye(384)) and t.dense.bias.abs().sum() == 0
    assert mlm.cls.predictions.decoder.weight.data_ptr() == mlm.bert.embeddings.word_embeddings.weight.data_ptr()
    assert mlm.cls.predictions.decoder.bias.abs().sum() == 0


def test_bm25_idf_hand_values():
    # N = 10: df 0 -> log(1 + 10.5/0.5) = log 22; df 10 -> log(1 + 0.5/10.5)
    idf = M.bm25_idf(torch.tensor([0, 10, 5]), 10)
    assert idf.tolist() == pytest.approx([math.log(22), math.log(1 + 0.5 / 10.5), math.log(2)], rel=1e-6)


def test_inference_free_query_is_the_idf_of_its_word_pieces(inference_free_model):
    m = inference_free_model
    tok = M.tokenizer_of(m)
    idf, n = M.corpus_idf(tok, TEXTS, M.vocab_size(m))
    assert n == 2
    cells = tok.convert_tokens_to_ids("cells")
    assert idf[cells].item() == pytest.approx(math.log(1 + 1.5 / 1.5))  # in 1 of 2 texts
    M.set_query_idf(m, idf)
    q = "white matter cells cells"
    w = _dense(m.encode_query([q], convert_to_tensor=True))[0]
    ids = set(tok(q, add_special_tokens=False)["input_ids"])
    assert set(w.nonzero().flatten().tolist()) == ids  # exactly the query's word pieces, once each, no [CLS]/[SEP]
    for i in ids:
        assert w[i].item() == pytest.approx(idf[i].item())
    table = M.query_table(m)
    assert table.weight[tok.cls_token_id] == 0 and table.weight[tok.unk_token_id] == 0  # specials never weigh


def test_save_and_load_back_with_sparse_encoder(tmp_path, inference_free_model):
    from sentence_transformers.sparse_encoder import SparseEncoder

    m = inference_free_model
    M.set_query_idf(m, torch.rand(M.vocab_size(m)) + 0.5)
    with torch.no_grad():
        M.document_transformer(m).auto_model.cls.predictions.bias.add_(0.25)  # a change the loader must restore
    m.save(str(tmp_path / "m"))
    m2 = SparseEncoder(str(tmp_path / "m"))
    assert M.variant_of(m2) == "inference-free"
    assert torch.equal(M.query_table(m2).weight, M.query_table(m).weight)
    with torch.no_grad():
        a = M.encode_documents(m.eval(), TEXTS)
        b = M.encode_documents(m2.eval(), TEXTS)
        c = _dense(m2.encode_document(TEXTS, convert_to_tensor=True))
    assert torch.allclose(a, b) and torch.allclose(a, c, atol=1e-5)
    with M.max_logit_pooling(m2):
        pass
    assert (M.load_model(tmp_path / "m")[0].sub_modules["document"][1].__class__.__name__) == "SpladePooling"
    with pytest.raises(M.ModelError, match="modules.json"):
        M.load_model(tmp_path)


def test_learned_idf_table_receives_gradient_on_query_pieces_only():
    m = M.inference_free_model("splade-tiny", learn_idf=True)
    table = M.query_table(m)
    assert table.weight.requires_grad and not table.frozen
    feats = table.preprocess(["white matter"])
    q = table(dict(feats))["sentence_embedding"]
    d = M.encode_documents(m, TEXTS[:1])
    (q * d).sum().backward()
    g = table.weight.grad
    white = M.tokenizer_of(m).convert_tokens_to_ids("white")
    assert g is not None and g[white] > 0 and g.count_nonzero() <= 2


def test_doc_windows_max_pool_over_the_whole_text(tiny_model):
    from tests.conftest import dataset_path

    lines = (dataset_path("scifact") / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    texts = [json.loads(x)["text"] for x in lines]
    tr = M.document_transformer(tiny_model)
    tok = tr.tokenizer
    long_i = next(i for i, t in enumerate(texts) if len(tok(t, add_special_tokens=False)["input_ids"]) > 150)
    batch = [texts[long_i], json.loads(lines[0])["title"]]  # a long abstract and a title (one window)
    m = tiny_model.eval()
    old = tr.max_seq_length
    try:
        tr.max_seq_length = 64
        with torch.no_grad():
            first = M.encode_documents(m, batch)
            win = M.encode_documents(m, batch, windows=8, stride=8)
            t = tok([texts[long_i]], truncation=True, max_length=64, stride=8, return_overflowing_tokens=True,
                    padding=True, return_tensors="pt")
            doc = M.document_pipeline(m)
            ref = torch.stack([doc({"input_ids": t["input_ids"][j:j + 1],
                                    "attention_mask": t["attention_mask"][j:j + 1]})["sentence_embedding"][0]
                               for j in range(min(8, len(t["input_ids"])))]).amax(0)
    finally:
        tr.max_seq_length = old
    assert len(t["input_ids"]) >= 3
    assert torch.allclose(win[0], ref, atol=1e-4)  # = each window encoded on its own, max-pooled by hand
    assert (win[0] >= first[0] - 1e-6).all() and (win[0] > 0).sum() > (first[0] > 0).sum()
    assert torch.allclose(win[1], first[1], atol=1e-5)  # a text within one window is unchanged
    with pytest.raises(ValueError, match="windows"):
        M.encode_documents(m, batch, windows=0)


def test_max_logit_pooling_equals_splade_pooling_values_and_gradients():
    m = M.inference_free_model("splade-tiny").train()
    tok = M.tokenizer_of(m)
    feats = dict(tok(TEXTS * 3, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    seq = M.document_pipeline(m)
    g = torch.randn(len(TEXTS) * 3, M.vocab_size(m))
    mlm = M.document_transformer(m).auto_model

    def step() -> list[torch.Tensor]:
        m.zero_grad()
        torch.manual_seed(0)  # same dropout masks
        w = seq(dict(feats))["sentence_embedding"]
        (w * g).sum().backward()
        return [w.detach(), mlm.bert.embeddings.word_embeddings.weight.grad.clone(),
                mlm.bert.encoder.layer[0].attention.self.query.weight.grad.clone(),
                mlm.cls.predictions.bias.grad.clone()]

    ref = step()
    with M.max_logit_pooling(m) as applied:
        fast = step()
    assert applied
    for a, b in zip(ref, fast):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert type(seq[1]).__name__ == "SpladePooling" and mlm.cls.predictions.decoder.weight is not None  # restored


def test_fast_document_encoder_equals_the_model_forward(tiny_model):
    from recsparse.retrieval.sparse.impact import _FastDocumentEncoder

    m = tiny_model.eval()
    tok = M.tokenizer_of(m)
    feats = dict(tok(TEXTS + ["short"], padding=True, truncation=True, max_length=128, return_tensors="pt"))
    with torch.no_grad():
        ref = M.document_pipeline(m)(dict(feats))["sentence_embedding"]
        fast = _FastDocumentEncoder(m)(feats)
    assert fast is not None and torch.allclose(ref, fast, atol=1e-5)


def test_max_logits_blocks_equal_the_unblocked_max_and_argmax():
    g = torch.Generator().manual_seed(0)
    z, w, b = torch.randn(5, 7, 16, generator=g), torch.randn(1003, 16, generator=g), torch.randn(1003, generator=g)
    full = torch.matmul(z, w.T) + b  # (5, 7, 1003): what the blocks must reproduce
    for rows, block in ((2, 100), (8, 512), (1, 1003)):  # ragged last row group and last vocabulary block
        out, arg = M.max_logits(z, w, b, with_arg=True, rows=rows, vocab_block=block)
        assert torch.allclose(out, full.amax(1), atol=1e-5)
        assert torch.allclose(full.gather(1, arg.unsqueeze(1)).squeeze(1), out, atol=1e-5)  # arg-max is a max
        assert M.max_logits(z, w, b, rows=rows, vocab_block=block)[1] is None
