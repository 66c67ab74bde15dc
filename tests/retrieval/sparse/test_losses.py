"""FLOPS / IDF-FLOPS / InfoNCE / distillation / SpladeLoss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from recsparse.retrieval.sparse.losses import (DistillationLoss, FlopsRegularizer, IdfFlopsRegularizer, InfoNCELoss,
                                               SpladeLoss, ensemble_teacher, flops, idf_flops, idf_penalty,
                                               quadratic_warmup)

W = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])  # two vectors over a 3-term vocabulary


def test_flops_hand_computed():
    # mean over rows = [2, 0, 1] -> 2^2 + 0 + 1^2 = 5
    assert flops(W).item() == pytest.approx(5.0)
    assert FlopsRegularizer()(W).item() == pytest.approx(5.0)


def test_idf_penalty_and_idf_flops_hand_computed():
    idf = torch.tensor([1.0, 2.0, 4.0])
    g = idf_penalty(idf)  # mean idf 7/3 divided by idf
    assert g.tolist() == pytest.approx([7 / 3, 7 / 6, 7 / 12])
    # 7/3 * 2^2 + 7/6 * 0 + 7/12 * 1^2 = 28/3 + 7/12 = 119/12
    assert idf_flops(W, g).item() == pytest.approx(119 / 12)
    assert IdfFlopsRegularizer(idf)(W).item() == pytest.approx(119 / 12)
    # floor: an IDF near zero does not blow up
    assert torch.isfinite(idf_penalty(torch.tensor([0.0, 1.0]))).all()


def test_idf_flops_pushes_frequent_terms_harder_than_rare_ones():
    idf = torch.tensor([0.5, 8.0])  # term 0 frequent, term 1 rare
    w = torch.tensor([[1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    idf_flops(w, idf_penalty(idf)).backward()
    g_idf = w.grad.clone()
    assert g_idf[0, 0] > g_idf[0, 1] * 10  # 16x the pressure on the low-IDF term
    w.grad = None
    flops(w).backward()
    assert w.grad[0, 0] == w.grad[0, 1]  # plain FLOPS: the same pressure on both


def test_quadratic_warmup():
    assert [quadratic_warmup(s, 10) for s in (0, 5, 10, 20)] == [0.0, 0.25, 1.0, 1.0]
    assert quadratic_warmup(3, 0) == 1.0


def test_infonce_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # pos0, pos1, one negative
    s = q @ d.T  # [[2,0,1],[0,1,1]]
    expect = (-(2 - math.log(math.exp(2) + 1 + math.e)) - (1 - math.log(1 + 2 * math.e))) / 2
    assert InfoNCELoss()(q, d).item() == pytest.approx(expect, rel=1e-6)
    assert InfoNCELoss(temperature=0.5)(q, d).item() != pytest.approx(expect)
    assert s.shape == (2, 3)


def test_distillation_layout_and_teacher():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # positives first, then each query's negative in query order
    d = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 5.0]])
    assert DistillationLoss.candidate_scores(q, d).tolist() == [[1.0, 3.0], [2.0, 5.0]]
    t = ensemble_teacher(torch.tensor([[10.0, 0.0, 5.0]]), torch.tensor([[0.2, 0.4, 0.3]]))
    assert t[0].tolist() == pytest.approx([1.0, 1.0, 1.0])  # [1,0,.5] + [0,1,.5]
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = DistillationLoss(teacher_temperature=1.0)(q, d, teacher=teacher)
    p = torch.softmax(teacher, -1)
    ls = torch.log_softmax(torch.tensor([[1.0, 3.0], [2.0, 5.0]]), -1)
    assert loss.item() == pytest.approx(float((p * (p.log() - ls)).sum() / 2), rel=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        DistillationLoss()(q, d)


def test_splade_loss_composes_ranking_and_scheduled_regularisers():
    q = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    rank = InfoNCELoss()(q, d)
    loss = SpladeLoss(InfoNCELoss(), document_regularizer=FlopsRegularizer(), lambda_doc=0.1,
                      query_regularizer=FlopsRegularizer(), lambda_query=0.2, warmup_steps=10)
    p = loss(q, d, step=5)  # warm-up multiplier 0.25
    assert p.lambda_doc == pytest.approx(0.025) and p.lambda_query == pytest.approx(0.05)
    assert p.reg_doc.item() == pytest.approx(0.25 + 1.0)  # means [.5, 1, 0]
    assert p.reg_query.item() == pytest.approx(0.25 + 0.25 + 0.25)
    assert p.total.item() == pytest.approx(rank.item() + 0.025 * 1.25 + 0.05 * 0.75)
    none = SpladeLoss(InfoNCELoss())(q, d, step=100)
    assert none.total.item() == pytest.approx(rank.item())
    with pytest.raises(ValueError, match="lambda"):
        SpladeLoss(InfoNCELoss(), lambda_doc=-1)
