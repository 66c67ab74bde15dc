"""Splits and loaders on real data: leave-last-out on MovieLens-100K, side features -> KeyedJaggedTensor, negative
sampling that never returns a training item, deterministic batches."""

from __future__ import annotations

import polars as pl
import torch

from recsparse.pipelines.config import TrainConfig
from recsparse.pipelines.data import InteractionBatches, build_split


def _ml_cfg(tmp_path) -> TrainConfig:
    return TrainConfig.from_dict({"data": {"dataset": "ml-100k", "split": "leave_last_out"},
                                  "model": {"family": "two_tower"}, "loss": {"name": "softmax"},
                                  "trainer": {"output_dir": str(tmp_path)}})


def test_leave_last_out_and_side_features(ml100k_path, tmp_path):
    from recsparse.data import load

    s = build_split(_ml_cfg(tmp_path))
    ds = load("ml-100k")
    assert (s.num_users, s.num_items) == (943, 1682)
    assert s.train.height + 2 * 943 == ds.inter.height
    assert int(s.test.lengths().sum()) == 943 and int(s.val.lengths().sum()) == 943
    # the test item of user "1" is their latest rating (ties broken by item id)
    u1 = ds.inter.filter(pl.col("user_id") == "1").with_columns(pl.col("item_id").cast(pl.Int64)) \
        .sort(["timestamp", "item_id"])
    last_item = str(u1["item_id"][-1])
    items = sorted(ds.item["item_id"].to_list(), key=lambda x: (len(x), x))
    assert s.test.rows(torch.tensor([0]))[1].tolist() == [items.index(last_item)]
    # genres of item "1" (Toy Story: Animation, Children's, Comedy) arrive as a 3-id bag in the KJT
    kjt = s.item_features.kjt(torch.tensor([items.index("1"), items.index("2")]))
    genre = kjt["genre"]
    assert genre.lengths().tolist()[0] == 3
    assert set(kjt.keys()) == {"item_id", "genre", "year"}
    assert set(s.user_features.names) == {"user_id", "age", "gender", "occupation"}


def test_bpr_negatives_are_not_training_items(gowalla_small, tmp_path):
    cfg = TrainConfig.from_dict({"data": {"dataset": str(gowalla_small)}, "trainer": {"output_dir": str(tmp_path)}})
    s = build_split(cfg)
    train = s.train_interactions()
    ds = InteractionBatches(train, 256, seed=1, num_neg_per_pos=1, num_uniform=32)
    b = ds[(0, 0)]
    known = set(zip(s.train["user_id"].to_list(), s.train["item_id"].to_list()))
    assert all((u, i) in known for u, i in zip(b["user"].tolist(), b["item"].tolist()))
    assert not any((u, n) in known for u, n in zip(b["user"].tolist(), b["neg"].tolist()))
    assert b["uniform"].shape == (32,)
    again = InteractionBatches(train, 256, seed=1, num_neg_per_pos=1, num_uniform=32)[(0, 0)]
    assert all(torch.equal(b[k], again[k]) for k in b)
    assert not torch.equal(b["user"], ds[(1, 0)]["user"])  # a new permutation each epoch


def test_bpr_negatives_for_a_user_with_almost_every_item():
    """Rejection sampling gave up after 20 rounds and returned a training item as the 'negative' (a user with
    999 of 1000 items is rejected 21 times with probability ~0.98); now the leftover rows draw exactly from the
    user's complement, which is uniform over it."""
    from recsparse.pipelines.evaluation import Interactions

    n = 1000
    users = [0] * (n - 1) + [1] * (n - 3)
    items = [i for i in range(n) if i != 417] + [i for i in range(n) if i not in (3, 500, 999)]
    tr = Interactions.from_pairs(users, items, 2, n)
    ds = InteractionBatches(tr, batch_size=64, seed=1, num_neg_per_pos=1)
    seen = {0: set(), 1: set()}
    for b in range(len(ds)):
        batch = ds[(0, b)]
        for u, neg in zip(batch["user"].tolist(), batch["neg"].tolist()):
            seen[u].add(neg)
    assert seen[0] == {417}
    assert seen[1] == {3, 500, 999}  # all of the complement is reached, nothing else


def test_bpr_user_with_every_item_is_an_error():
    import pytest

    from recsparse.errors import UserError
    from recsparse.pipelines.evaluation import Interactions

    tr = Interactions.from_pairs([0, 0, 0, 1], [0, 1, 2, 0], 2, 3)
    with pytest.raises(UserError, match="user 0 has a training interaction with every one of the 3 items"):
        InteractionBatches(tr, batch_size=2, num_neg_per_pos=1)
    InteractionBatches(tr, batch_size=2, num_neg_per_pos=0)  # softmax: no per-row negatives, fine


def test_min_rating_on_implicit_feedback_is_rejected(gowalla_small, tmp_path):
    """data.min_rating was silently ignored on a dataset without ratings."""
    import pytest

    from recsparse.errors import ConfigError

    cfg = TrainConfig.from_dict({"data": {"dataset": str(gowalla_small), "min_rating": 4},
                                 "trainer": {"output_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="data.min_rating: .* implicit feedback"):
        build_split(cfg)


def test_min_rating_filters_ml100k(ml100k_path, tmp_path):
    from recsparse.data import load

    cfg = TrainConfig.from_dict({"data": {"dataset": "ml-100k", "split": "leave_last_out", "min_rating": 4},
                                 "trainer": {"output_dir": str(tmp_path)}})
    s = build_split(cfg)
    kept = load("ml-100k").inter.filter(pl.col("rating") >= 4).height
    assert s.train.height + int(s.val.lengths().sum()) + int(s.test.lengths().sum()) == kept


def test_split_does_not_branch_on_model_family(ml100k_path, tmp_path):
    """The same dataset gives the same split and feature stores whatever model family the config names; the
    featurisation (age groups, genres, half-decades) is the dataset's (recsparse.data.movielens)."""
    import numpy as np

    mf = TrainConfig.from_dict({"data": {"dataset": "ml-100k", "split": "leave_last_out"},
                                "model": {"family": "mf"}, "trainer": {"output_dir": str(tmp_path)}})
    a, b = build_split(mf), build_split(_ml_cfg(tmp_path))
    assert a.user_features is not None and a.user_features.names == b.user_features.names
    for store_a, store_b in ((a.user_features, b.user_features), (a.item_features, b.item_features)):
        for f in store_a.names:
            assert torch.equal(store_a.values[f], store_b.values[f]) and store_a.vocab_sizes == store_b.vocab_sizes
    # age codes follow the MovieLens-1M groups of recsparse.data.movielens
    from recsparse.data import load
    from recsparse.data.movielens import user_features

    ds = load("ml-100k")
    groups = user_features(ds.user)["age_bucket"]
    assert a.user_features.vocab_sizes["age"] == groups.n_unique() == 7
    users = sorted(ds.user["user_id"].to_list(), key=lambda s: (len(s), s))
    u1 = users.index("1")  # user 1 is 24 -> group "18"
    uniq = sorted(groups.unique().to_list())
    assert int(a.user_features.values["age"][u1]) == uniq.index("18")
    assert np.array_equal(a.train["item_id"].to_numpy(), b.train["item_id"].to_numpy())
