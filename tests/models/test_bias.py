"""Item bias folded into the vectors: the loss sees exactly cos/τ + b (softmax) or <u, v> + b (BPR)."""

from __future__ import annotations

import math

import pytest
import torch

from recsparse.models import ItemBias, bpr_loss, sampled_softmax_loss


def test_folded_softmax_logits_are_cosine_over_t_plus_bias():
    ib = ItemBias(3)
    with torch.no_grad():
        ib.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    u = torch.tensor([[1.0, 0.0]])
    v_pos, v_neg = torch.tensor([[0.6, 0.8]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.25
    got = sampled_softmax_loss(ib.user(u, t), ib.item(v_pos, torch.tensor([0])), t,
                               neg_item=ib.item(v_neg, torch.tensor([1, 2])), in_batch=False)
    logits = [0.6 / t + 0.5, 1.0 / t - 1.0, 0.0 / t + 2.0]
    want = -(logits[0] - math.log(sum(math.exp(x) for x in logits)))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_folded_bpr_score_adds_the_bias_and_trains_it():
    ib = ItemBias(2)
    u = torch.tensor([[1.0, 2.0]])
    pos, neg = ib.item(torch.tensor([[1.0, 0.0]]), torch.tensor([0])), ib.item(torch.tensor([[0.0, 1.0]]),
                                                                                torch.tensor([1]))
    uu = ib.user(u, 1.0)
    loss = bpr_loss((uu * pos).sum(-1), (uu * neg).sum(-1))
    assert loss.item() == pytest.approx(math.log1p(math.exp(2.0 - 1.0)), rel=1e-6)
    loss.backward()
    # d/db_pos < 0 (raise the positive), d/db_neg > 0, equal magnitude
    assert ib.bias.grad[0] < 0 < ib.bias.grad[1] and ib.bias.grad[0] == pytest.approx(-ib.bias.grad[1])


def test_all_items_in_id_order_and_length_check():
    ib = ItemBias(4)
    assert ib.item(torch.zeros(4, 3)).shape == (4, 4)
    with pytest.raises(ValueError, match="differ in length"):
        ib.item(torch.zeros(3, 3))
