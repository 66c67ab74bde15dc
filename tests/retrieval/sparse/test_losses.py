"""IDF-aware FLOPS against hand-computed values, and inside the stack's SpladeLoss."""

from __future__ import annotations

import pytest
import torch

from recsparse.retrieval.sparse.losses import IdfFlopsLoss, idf_penalty

W = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])  # two vectors over a 3-term vocabulary


def test_idf_penalty_and_idf_flops_hand_computed():
    idf = torch.tensor([1.0, 2.0, 4.0])
    g = idf_penalty(idf)  # mean idf 7/3 divided by idf
    assert g.tolist() == pytest.approx([7 / 3, 7 / 6, 7 / 12])
    # column means [2, 0, 1]: 7/3 * 2^2 + 7/6 * 0 + 7/12 * 1^2 = 28/3 + 7/12 = 119/12
    assert IdfFlopsLoss(None, idf).compute_loss_from_embeddings(W).item() == pytest.approx(119 / 12)
    assert torch.isfinite(idf_penalty(torch.tensor([0.0, 1.0]))).all()  # the floor keeps IDF ~0 finite
    with pytest.raises(NotImplementedError, match="document_regularizer"):
        IdfFlopsLoss(None, idf)(W)


def test_equal_idf_is_plain_flops_of_the_stack():
    from sentence_transformers.sparse_encoder.losses import FlopsLoss

    ours = IdfFlopsLoss(None, torch.full((3,), 2.0)).compute_loss_from_embeddings(W)
    assert ours.item() == pytest.approx(FlopsLoss(None).compute_loss_from_embeddings(W).item())  # = 5


def test_idf_flops_pushes_frequent_terms_harder_than_rare_ones():
    w = torch.ones(2, 2, requires_grad=True)
    IdfFlopsLoss(None, torch.tensor([0.5, 8.0])).compute_loss_from_embeddings(w).backward()  # term 0 frequent
    assert w.grad[0, 0] > w.grad[0, 1] * 10  # 16x the pressure on the low-IDF term


def test_splade_loss_with_idf_flops_document_regularizer(inference_free_model):
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    from recsparse.retrieval.sparse import models as M

    m = inference_free_model.eval()  # no dropout: the regulariser is compared exactly
    idf = torch.rand(M.vocab_size(m)) + 0.5
    loss = SpladeLoss(m, loss=SparseMultipleNegativesRankingLoss(m), document_regularizer_weight=0.5,
                      document_regularizer=IdfFlopsLoss(m, idf))
    q = M.query_table(m).preprocess(["cell growth", "white matter"])
    q["task"] = "query"
    docs = M.document_transformer(m).preprocess(["cells grow fast", "the brain's white matter"])
    docs["task"] = "document"
    out = loss([dict(q), dict(docs)], None)
    assert set(out) == {"base_loss", "document_regularizer_loss"} and out["document_regularizer_loss"] > 0
    with torch.no_grad():
        dv = m(dict(docs))["sentence_embedding"]
    expect = 0.5 * IdfFlopsLoss(None, idf).compute_loss_from_embeddings(dv)
    assert out["document_regularizer_loss"].item() == pytest.approx(expect.item(), rel=1e-4)
    m.train()  # SpladePooling works in place in eval mode: gradients need train mode
    sum(loss([dict(q), dict(docs)], None).values()).backward()
    assert M.document_transformer(m).auto_model.cls.predictions.transform.dense.weight.grad.abs().sum() > 0
