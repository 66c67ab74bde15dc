"""Losses: logQ-corrected sampled softmax and the streaming item-frequency estimate, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from recsparse.models.losses import ItemFrequency, bpr_loss, sampled_softmax_loss


def _ce(row: list[float], target: int) -> float:
    z = sum(math.exp(x) for x in row)
    return -(row[target] - math.log(z))


def test_logq_hand_checked_batch():
    # two users, two positive items; u0·v0 = 1, u0·v1 = 0, u1·v0 = 0, u1·v1 = 1 (temperature 0.5 doubles them)
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # item 0 was sampled with probability .5, item 1 with .25  ->  logits - log q
    logq = torch.log(torch.tensor([0.5, 0.25]))
    got = sampled_softmax_loss(user, item, temperature=0.5, item_logq=logq)
    row0 = [2.0 - math.log(0.5), 0.0 - math.log(0.25)]
    row1 = [0.0 - math.log(0.5), 2.0 - math.log(0.25)]
    want = (_ce(row0, 0) + _ce(row1, 1)) / 2
    assert got.item() == pytest.approx(want, rel=1e-6)
    # without correction the popular item is not discounted: a different (smaller) loss for row 0
    plain = sampled_softmax_loss(user, item, temperature=0.5)
    assert plain.item() == pytest.approx((_ce([2.0, 0.0], 0) + _ce([0.0, 2.0], 1)) / 2, rel=1e-6)
    assert got.item() != pytest.approx(plain.item())


def test_mixed_negatives_and_accidental_hits():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    item = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    ids = torch.tensor([7, 3, 7])  # rows 0 and 2 share positive item 7: not a negative of each other
    neg = torch.tensor([[0.5, 0.5]])
    neg_ids = torch.tensor([3])  # equals row 1's positive: masked for row 1
    lq = torch.tensor([0.1, 0.2, 0.1])
    nlq = torch.tensor([0.3])
    got = sampled_softmax_loss(user, item, 1.0, lq, ids, neg, nlq, neg_ids)
    r0 = [1 - .1, 0 - .2, 0.5 - .3]           # candidate 2 (item 7 again) masked
    r1 = [0 - .1, 1 - .2, 0 - .1]             # uniform negative (item 3) masked
    r2 = [1 - .2, 1 - .1, 1 - .3]             # candidate 0 (item 7) masked; target is candidate 2
    want = (_ce(r0, 0) + _ce(r1, 1) + _ce(r2, 1)) / 3
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_item_frequency_stream_estimate():
    f = ItemFrequency(4, smoothing=0.0)
    f.update(torch.tensor([0, 0, 1]))
    assert f.prob(torch.tensor([0, 1, 2])).tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    # B = 2 in-batch draws from p, M = 4 uniform draws over 4 items: q = 2p + 1
    assert f.log_q(torch.tensor([0, 1]), 2, 4).tolist() == pytest.approx([math.log(4 / 3 + 1), math.log(2 / 3 + 1)])
    assert torch.isfinite(ItemFrequency(4, smoothing=1.0).log_q(torch.tensor([3]), 2)).all()
    # counts are state: they survive a state_dict round trip
    g = ItemFrequency(4, smoothing=0.0)
    g.load_state_dict(f.state_dict())
    assert g.counts.tolist() == [2, 1, 0, 0]


def test_bpr_loss_matches_formula():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    want = (-math.log(1 / (1 + math.exp(-1))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert bpr_loss(pos, neg).item() == pytest.approx(want, rel=1e-6)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        sampled_softmax_loss(torch.ones(1, 2), torch.ones(1, 2), temperature=0.0)
