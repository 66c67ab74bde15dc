"""SSL term in the two-tower training step (``loss.ssl``) and the head/tail split of the full-ranking evaluation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from recsparse.pipelines.evaluation import Interactions, full_ranking_metrics, head_tail_metrics, popularity_head


def _cfg(tmp_path, **ssl):
    from recsparse.pipelines.config import TrainConfig

    return TrainConfig.from_dict({
        "name": "t", "data": {"dataset": "ml-100k", "split": "leave_last_out"},
        "model": {"family": "two_tower", "dim": 8, "hidden": [16], "out_dim": 8},
        "loss": {"name": "softmax", "temperature": 0.1, "num_uniform_negatives": 32, "ssl": ssl},
        "trainer": {"batch_size": 256, "max_epochs": 1, "limit_train_batches": 4, "progress_bar": False,
                    "num_threads": 1, "output_dir": str(tmp_path / "{name}")},
        "eval": {"ks": [50], "monitor": "recall@50", "head_fraction": 0.2}})


@pytest.fixture(scope="module")
def ml100k_split(ml100k_path):
    from recsparse.pipelines.config import TrainConfig
    from recsparse.pipelines.data import build_split

    return build_split(TrainConfig.from_dict({"data": {"dataset": "ml-100k", "split": "leave_last_out"},
                                              "model": {"family": "two_tower"}, "loss": {"name": "softmax"}}))


def _batch(split, seed=0):
    from recsparse.pipelines.data import InteractionBatches

    return InteractionBatches(split.train_interactions(), 256, seed, num_uniform=32)[(0, 0)]


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}


def test_ssl_changes_the_item_tower_gradient_only_through_the_aux_term(ml100k_split, tmp_path):
    from recsparse.pipelines.modules import TwoTowerModule

    batch = _batch(ml100k_split)
    torch.manual_seed(0)  # the MLPs draw their init from the global generator (run() seeds it the same way)
    plain = TwoTowerModule(_cfg(tmp_path), ml100k_split)
    torch.manual_seed(0)
    with_ssl = TwoTowerModule(_cfg(tmp_path, augment="cfm", weight=0.5, dropout=0.2, batch_size=128), ml100k_split)
    assert plain.ssl is None and with_ssl.ssl is not None
    for (n, p), (_, q) in zip(plain.model.named_parameters(), with_ssl.model.named_parameters()):
        assert torch.equal(p, q), n  # same initial model: SSL only adds its default embeddings
    aux_only = copy.deepcopy(with_ssl)
    import lightning.pytorch as L

    for m in (plain, with_ssl):  # training_step asks the trainer for the world size; barebones skips self.log
        m.trainer = L.Trainer(barebones=True, accelerator="cpu", devices=1)

    plain.training_step(batch, 0).backward()
    with_ssl.training_step(batch, 0).backward()
    aux = aux_only.auxiliary_loss(batch)
    assert aux is not None and aux.item() > 0
    aux.backward()
    g0, g1, ga = _grads(plain), _grads(with_ssl), _grads(aux_only)
    for n, g in g0.items():
        if n.startswith("user_tower"):  # the aux term never touches the user tower
            assert torch.equal(g1[n], g), n
            assert n not in ga
        else:  # item tower: main-loss gradient + the aux term's own gradient
            assert torch.allclose(g1[n], g + ga[n], atol=1e-6, rtol=1e-5), n
    assert any(ga[n].abs().sum() > 0 for n in ga if n.startswith("item_tower"))


def test_weight_zero_is_an_identical_run(ml100k_split, tmp_path):
    from recsparse.pipelines.train import run

    a = run(_cfg(tmp_path / "a"), ml100k_split)
    b = run(_cfg(tmp_path / "b", augment="cfm", weight=0.0, dropout=0.3, temperature=0.5), ml100k_split)
    c = run(_cfg(tmp_path / "c", augment="rfm", weight=1.0), ml100k_split)
    assert a["test"] == b["test"]
    sa = torch.load(tmp_path / "a" / "t" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b" / "t" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    sc = torch.load(tmp_path / "c" / "t" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    weights = [k for k in sa if k.startswith("model.") and isinstance(sa[k], torch.Tensor) and sa[k].is_floating_point()]
    assert weights and all(torch.equal(sa[k], sb[k]) for k in weights)
    assert not all(torch.equal(sa[k], sc[k]) for k in weights)  # the switch does something when on
    assert "ssl.masking.default" in sc and "ssl.masking.default" not in sa
    for part in ("head", "tail"):
        assert 0 <= a["test"][f"{part}_recall@50"] <= 1
    assert a["test"]["head_num_users"] + a["test"]["tail_num_users"] == a["test"]["num_users"]


def test_ssl_config_errors():
    from recsparse.pipelines.config import TrainConfig

    with pytest.raises(ValueError, match="loss.ssl.augment"):
        TrainConfig.from_dict({"loss": {"name": "softmax", "ssl": {"augment": "nope"}}})
    with pytest.raises(ValueError, match="loss.ssl.weight"):
        TrainConfig.from_dict({"loss": {"name": "softmax", "ssl": {"weight": -0.1}}})


# --------------------------------------------------------------------------------------------- head / tail split
def test_popularity_head_is_top_fraction_by_training_count_ties_to_lower_id():
    # distinct users per item: 0:1, 1:3, 2:3, 3:0, 4:2, 5:1, 6-8:0, 9:2
    users = [0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2, 3, 3, 3, 3]
    items = [0, 1, 1, 2, 2, 2, 1, 4, 4, 5, 9, 9, 9, 9, 9]
    # (duplicate (user, item) pairs collapse: user 3 has item 9 once)
    train = Interactions.from_pairs(users, items, 4, 10)
    counts = torch.bincount(train.indices, minlength=10).tolist()
    assert counts == [1, 3, 3, 0, 2, 1, 0, 0, 0, 2]
    # ⌈0.2 · 10⌉ = 2 items: the two with 3 interactions; ⌈0.3 · 10⌉ = 3: items 4 and 9 tie -> the lower id
    assert torch.nonzero(popularity_head(train, 0.2)).flatten().tolist() == [1, 2]
    assert torch.nonzero(popularity_head(train, 0.3)).flatten().tolist() == [1, 2, 4]
    with pytest.raises(ValueError):
        popularity_head(train, 0.0)


def test_head_tail_metrics_split_the_test_interactions():
    # 3 items, 2-d vectors; user scores rank items [0, 1, 2] for user 0 and [2, 1, 0] for user 1
    items = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    uv = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.1]])
    truth = Interactions.from_pairs([0, 0, 1, 2], [0, 2, 2, 1], 3, 3)
    head = torch.tensor([True, False, False])
    got = head_tail_metrics(lambda ids: uv[ids], items, truth, head, ks=[1])
    # head part: only user 0 (item 0, ranked first) -> recall@1 = 1
    assert got["head_num_users"] == 1 and got["head_recall@1"] == 1.0
    # tail part: user 0 -> item 2 (rank 3): 0; user 1 -> item 2 (rank 1): 1; user 2 -> item 1 (rank 2): 0
    assert got["tail_num_users"] == 3 and got["tail_recall@1"] == pytest.approx(1 / 3)
    assert got["tail_ndcg@1"] == pytest.approx(1 / 3)
    overall = full_ranking_metrics(lambda ids: uv[ids], items, truth, ks=[1])
    # overall: user 0 finds 1 of its 2 items, user 1 its one, user 2 none (recall = hits / |T|)
    assert overall["num_users"] == 3 and overall["recall@1"] == pytest.approx((0.5 + 1 + 0) / 3)
    # restrict keeps users and drops the other items
    r = truth.restrict(~head)
    assert r.num_users == 3 and r.lengths().tolist() == [1, 1, 1] and r.indices.tolist() == [2, 2, 1]
    assert not math.isnan(got["tail_hit@1"])
