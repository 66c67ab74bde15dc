"""MappedEmbeddingBagCollection: backends agree (forward + gradients), KJT expansion for k > 1 rows, mean pooling,
``embed`` = pooled lookup of one id, mapper state inside state_dict, real Gowalla features."""

from __future__ import annotations

import io

import polars as pl
import pytest
import torch
from torchrec import KeyedJaggedTensor

from recsparse.embeddings import FeatureConfig, GraphHashMapper, MappedEmbeddingBagCollection
from recsparse.kernels import TBEConfig

BACKENDS = ["torchrec", "torch", "fbgemm"]


def _features():
    return [FeatureConfig("user", 100, 8, "full"),
            FeatureConfig("item", 1000, 4, "universal", num_rows=50, mapper_kwargs={"num_hashes": 2}, pooling="mean"),
            FeatureConfig("cat", 10**9, 4, "qr", num_rows=100)]


def _kjt():
    # keys deliberately in another order than the module's; an empty bag; negative and huge ids
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["item", "user", "cat"],
        values=torch.tensor([1, 2, 3, 5, -1, 7, 3, 4, 99999, 5, 2**40, 2]),
        lengths=torch.tensor([2, 1, 3, 1, 1, 2, 0, 1, 1]))


def _reference(m: MappedEmbeddingBagCollection, kjt) -> torch.Tensor:
    """Hand-computed pooled output: per bag, sum (or mean over ids) of each id's summed mapper rows."""
    d = kjt.to_dict()
    cols = []
    for f in m.features:
        jt = d[f.name]
        w = m.table_weight(f.name).detach()
        out = []
        for vals in jt.to_dense():
            v = w[f.mapper.transform(vals)].sum(dim=1) if vals.numel() else torch.zeros(0, w.shape[1])
            s = v.sum(dim=0)
            out.append(s / max(vals.numel(), 1) if f.pooling == "mean" else s)
        cols.append(torch.stack(out))
    return torch.cat(cols, dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_hand_computation(backend):
    m = MappedEmbeddingBagCollection(_features(), backend=backend, seed=1)
    kt = m(_kjt())
    assert kt.keys() == ["user", "item", "cat"] and kt.values().shape == (3, 16)
    torch.testing.assert_close(kt.values(), _reference(m, _kjt()))
    assert kt["item"].shape == (3, 4)


def test_backends_agree_forward_and_gradient():
    mods = {b: MappedEmbeddingBagCollection(_features(), backend=b, seed=3,
                                            tbe_config=TBEConfig(optimizer="sgd", learning_rate=1.0))
            for b in BACKENDS}
    outs = {b: m(_kjt()).values() for b, m in mods.items()}
    torch.testing.assert_close(outs["torch"], outs["torchrec"])
    torch.testing.assert_close(outs["torch"], outs["fbgemm"])
    target = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    before = {f.name: mods["fbgemm"].table_weight(f.name).detach().clone() for f in _features()}
    for b, out in outs.items():
        (out * target).sum().backward()
    for f in _features():
        g = mods["torch"].table_weight(f.name).grad
        torch.testing.assert_close(g, mods["torchrec"].table_weight(f.name).grad)
        # fbgemm applied exact SGD with lr 1 in backward: w_before - w_after == gradient
        torch.testing.assert_close(before[f.name] - mods["fbgemm"].table_weight(f.name).detach(), g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_embed_equals_single_id_bags(backend):
    m = MappedEmbeddingBagCollection(_features(), backend=backend, seed=2)
    ids = torch.tensor([0, 5, -3, 10**9 + 7])
    e = m.embed("cat", ids)
    w = m.table_weight("cat").detach()
    torch.testing.assert_close(e.detach(), w[m.mapper("cat").transform(ids)].sum(dim=1))
    if backend != "fbgemm":  # differentiable w.r.t. the table
        e.sum().backward()
        assert m.table_weight("cat").grad.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip_with_mappers(backend, gowalla_slice):
    users, items = GraphHashMapper.fit_bipartite(gowalla_slice, resolution=10.0)
    feats = lambda u, i: [FeatureConfig("user", u.num_ids, 8, u), FeatureConfig("item", i.num_ids, 8, i)]  # noqa
    m = MappedEmbeddingBagCollection(feats(users, items), backend=backend, init_std=0.1, seed=0)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    # a fresh module with *unfitted* mappers of the same size gets tables and clusterings back
    u2, i2 = GraphHashMapper(users.num_ids, "user"), GraphHashMapper(items.num_ids, "item")
    u2.num_clusters, i2.num_clusters = users.num_clusters, items.num_clusters
    m2 = MappedEmbeddingBagCollection(feats(u2, i2), backend=backend, seed=9)
    m2.load_state_dict(state)
    ids = torch.arange(0, 500)
    torch.testing.assert_close(m2.embed("item", ids), m.embed("item", ids))
    assert torch.equal(m2.mapper("user").labels, users.labels)


def test_real_gowalla_batch(gowalla):
    """A batch of real (user, item) training pairs through GraphHash tables; rows < 25% of the full tables."""
    train = gowalla.train
    users, items = GraphHashMapper.fit_bipartite(train.head(200_000), resolution=50.0,
                                                 num_users=gowalla.num_users, num_items=gowalla.num_items)
    m = MappedEmbeddingBagCollection([FeatureConfig("user", gowalla.num_users, 16, users),
                                      FeatureConfig("item", gowalla.num_items, 16, items)], init_std=0.1)
    batch = train.sample(512, seed=0)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"], values=torch.tensor(pl.concat([batch["user_id"], batch["item_id"]]).to_numpy()),
        lengths=torch.ones(1024, dtype=torch.long))
    kt = m(kjt)
    torch.testing.assert_close(kt["user"], m.embed("user", torch.tensor(batch["user_id"].to_numpy())))
    assert sum(m.num_rows().values()) < 0.25 * (gowalla.num_users + gowalla.num_items)


def test_config_validation():
    with pytest.raises(ValueError, match="embedding_dim"):
        FeatureConfig("a", 10, 0)
    with pytest.raises(ValueError, match="pooling"):
        FeatureConfig("a", 10, 4, pooling="max")
    with pytest.raises(ValueError, match="mapper must be"):
        FeatureConfig("a", 10, 4, mapper=3)
    with pytest.raises(ValueError, match="backend"):
        MappedEmbeddingBagCollection([FeatureConfig("a", 10, 4)], backend="tpu")
    with pytest.raises(ValueError, match="unique"):
        MappedEmbeddingBagCollection([FeatureConfig("a", 10, 4), FeatureConfig("a", 10, 4)])
    m = MappedEmbeddingBagCollection([FeatureConfig("a", 10, 4)])
    with pytest.raises(ValueError, match="lacks features"):
        m(KeyedJaggedTensor.from_lengths_sync(keys=["b"], values=torch.tensor([1]), lengths=torch.tensor([1])))
    with pytest.raises(KeyError, match="unknown feature"):
        m.embed("b", torch.tensor([1]))


def test_fbgemm_table_groups_match_torch_backend():
    a = MappedEmbeddingBagCollection(_features(), backend="torch", seed=4)
    b = MappedEmbeddingBagCollection(_features(), backend="fbgemm", seed=4,
                                     tbe_config=TBEConfig(table_groups=2, bounds_check=False, learning_rate=1.0))
    assert len(b.tbe.groups) == 2
    torch.testing.assert_close(a(_kjt()).values(), b(_kjt()).values().detach())
    ids = torch.tensor([3, -1, 10**9])
    torch.testing.assert_close(a.embed("cat", ids).detach(), b.embed("cat", ids).detach())
    out = a(_kjt()).values()
    out.pow(2).sum().backward()
    before = b.table_weight("item").detach().clone()
    b(_kjt()).values().pow(2).sum().backward()  # fused exact SGD, lr 1
    torch.testing.assert_close(before - b.table_weight("item").detach(), a.table_weight("item").grad)


@pytest.mark.parametrize("backend", ["torchrec", "torch"])
def test_meta_device_allocates_and_initialises_nothing(backend):
    """The sharding recipe builds huge tables on device='meta' (DMP materialises shards): no storage, no init."""
    feats = [FeatureConfig("user", 10**9, 64, "modulo", num_rows=10**9), FeatureConfig("item", 10, 8)]
    m = MappedEmbeddingBagCollection(feats, backend=backend, device="meta", init_std=0.1)
    w = m.table_weight("user")
    assert w.is_meta and w.shape == (10**9, 64)
    assert m.num_bytes() == (10**9 * 64 + 11 * 8) * 4
    with pytest.raises(ValueError, match="meta"):
        MappedEmbeddingBagCollection(feats[1:], backend="fbgemm", device="meta")


@pytest.mark.parametrize("backend", ["torchrec", "torch"])
def test_shared_table(backend):
    feats = [FeatureConfig("a", 100, 4, "modulo", num_rows=10, table="shared"), FeatureConfig("b", 5, 4),
             FeatureConfig("c", 100, 4, "modulo", num_rows=10, table="shared", pooling="mean")]
    m = MappedEmbeddingBagCollection(feats, backend=backend, seed=0)
    assert m.table_names == ["shared", "t_b"]
    assert m.table_weight("a") is m.table_weight("c") and len(list(m.parameters())) == 2
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["c", "a", "b"], values=torch.tensor([13, 3, 23, 1, 2]),
                                              lengths=torch.tensor([2, 1, 1, 0, 1, 0]))
    kt = m(kjt)
    w = m.table_weight("a").detach()
    torch.testing.assert_close(kt["c"][0], (w[3] + w[3]) / 2)  # 13 and 3 share row 3 of the shared table
    torch.testing.assert_close(kt["c"][1], w[3])
    torch.testing.assert_close(kt["a"][0], w[1])
    torch.testing.assert_close(kt.values(), _reference(m, kjt))
    with pytest.raises(ValueError, match="sharing table 'shared' need equal rows and dim"):
        MappedEmbeddingBagCollection([feats[0], FeatureConfig("d", 100, 8, "modulo", num_rows=10, table="shared")])
    with pytest.raises(ValueError, match="shared tables"):
        MappedEmbeddingBagCollection(feats, backend="fbgemm")
    assert not hasattr(m, "sparse_parameters")  # dead code removed (issue 12)


def test_fbgemm_inference_paths_match_training_paths():
    """No-grad fbgemm: table groups run concurrently, embed gathers from the kernel's storage; same numbers."""
    b = MappedEmbeddingBagCollection(_features(), backend="fbgemm", seed=4,
                                     tbe_config=TBEConfig(table_groups=2, bounds_check=False))
    ids = torch.tensor([3, -1, 10**9, 7])
    train_out, train_embed = b(_kjt()).values().detach(), b.embed("item", ids).detach()
    with torch.no_grad():
        torch.testing.assert_close(b(_kjt()).values(), train_out)
        torch.testing.assert_close(b.embed("item", ids), train_embed)
        torch.testing.assert_close(b.embed("user", torch.arange(100)), b.table_weight("user")[:100])


def test_map_kjt_reuses_an_unchanged_kjt():
    """Full mappers with every id in range map id -> id: the row KJT is the input KJT (no copy of the values);
    an out-of-vocabulary id, another key order or k > 1 rows build a new one."""
    feats = [FeatureConfig("user", 100, 8, "full"), FeatureConfig("item", 50, 4, "full")]
    m = MappedEmbeddingBagCollection(feats, backend="torch")
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=torch.tensor([1, 2, 3, 49, 0]),
                                              lengths=torch.tensor([2, 1, 0, 2]))
    mapped, raw = m.map_kjt(kjt)
    assert mapped is kjt and torch.equal(raw, kjt.lengths())
    oov = KeyedJaggedTensor.from_lengths_sync(keys=["user", "item"], values=torch.tensor([1, 2, 3, 50, 0]),
                                              lengths=torch.tensor([2, 1, 0, 2]))
    mapped, _ = m.map_kjt(oov)
    assert mapped is not oov and mapped.values().tolist() == [1, 2, 3, 50, 0]  # 50 -> the item OOV row (50)
    swapped = KeyedJaggedTensor.from_lengths_sync(keys=["item", "user"], values=torch.tensor([1, 2, 3, 4, 0]),
                                                  lengths=torch.tensor([2, 1, 0, 2]))
    mapped, _ = m.map_kjt(swapped)
    assert mapped.keys() == ["user", "item"] and mapped.values().tolist() == [4, 0, 1, 2, 3]
    torch.testing.assert_close(m(kjt).values(), _reference(m, kjt))
