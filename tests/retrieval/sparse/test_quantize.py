"""Integer impacts: round trip within half a step, bounds, zero dropping, sparsity matching."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsparse.retrieval.sparse.quantize import (dequantize, prune_threshold, quantize, threshold_for_nnz,
                                                 to_term_dicts)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=50.0, allow_nan=False), min_size=1, max_size=40),
       st.sampled_from([10.0, 100.0, 1000.0]))
def test_round_trip_error_at_most_half_a_step(values, scale):
    w = torch.tensor(values)
    q = quantize(w, scale)
    assert q.dtype == torch.int32 and (q >= 0).all()
    assert (dequantize(q, scale) - w).abs().max().item() <= 0.5 / scale + 1e-6


def test_bounds_and_hand_values():
    w = torch.tensor([-1.0, 0.0, 0.004, 0.005, 2.371, 1e9])
    assert quantize(w, 100.0, max_impact=1000).tolist() == [0, 0, 0, 0, 237, 1000]  # round half to even: 0.5 -> 0
    with pytest.raises(ValueError, match="scale"):
        quantize(w, 0.0)


def test_term_dicts_drop_zeros_and_name_tokens():
    w = torch.tensor([[0.0, 1.234, 0.001], [2.0, 0.0, 0.0]])
    assert to_term_dicts(w, ["a", "b", "c"]) == [{"b": 123}, {"a": 200}]


def test_threshold_for_nnz_reaches_target():
    docs = [{"a": 5, "b": 1, "c": 3}, {"a": 2, "d": 9}, {"e": 4}]
    for target in (0.5, 1.0, 2.0):
        t = threshold_for_nnz(docs, target)
        pruned = prune_threshold(docs, t)
        assert sum(map(len, pruned)) / len(docs) <= target
        # one lower threshold would exceed the target (the threshold is the smallest that fits)
        assert t == 1 or sum(map(len, prune_threshold(docs, t - 1))) / len(docs) > target
    assert threshold_for_nnz(docs, 10) == 1
