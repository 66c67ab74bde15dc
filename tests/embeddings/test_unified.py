"""Unified embedding: one shared table, per-feature salts, c chunks concatenated; backends agree; real Gowalla ids."""

from __future__ import annotations

import io

import pytest
import torch
from torchrec import KeyedJaggedTensor

from recsparse.embeddings import FeatureConfig
from recsparse.embeddings.unified import UnifiedEmbedding, feature_salt


def _features():
    return [FeatureConfig("user", 29_858, 8), FeatureConfig("item", 40_981, 16, pooling="mean"),
            FeatureConfig("hour", 24, 8)]


def _kjt(gowalla):
    tr = gowalla.train.head(6)
    u = torch.tensor(tr["user_id"].to_numpy()[:3])
    i = torch.tensor(tr["item_id"].to_numpy())
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item", "hour"], values=torch.cat([u, i, torch.tensor([3, 23, -1])]),
        lengths=torch.tensor([1, 1, 1, 2, 0, 4, 1, 1, 1]))


@pytest.mark.parametrize("backend", ["torchrec", "torch"])
def test_shared_table_and_chunks(backend, gowalla):
    m = UnifiedEmbedding(_features(), num_rows=1000, chunk_dim=8, backend=backend, seed=0)
    params = [p for p in m.parameters()]
    assert len(params) == 1 and params[0].shape == (1000, 8)  # ONE table for all features
    assert m.chunks("item") == 2 and m.chunks("user") == 1
    kjt = _kjt(gowalla)
    kt = m(kjt)
    assert kt.keys() == ["user", "item", "hour"] and kt.values().shape == (3, 32)
    # by hand: item bag 0 = mean of its ids' [chunk0 | chunk1] rows, chunks salted independently
    ids = kjt["item"].to_dense()[0]
    rows = m.mappers["item"].transform(ids)
    w = m.weight.detach()
    expect = torch.cat([w[rows[:, 0]].sum(0), w[rows[:, 1]].sum(0)]) / ids.numel()
    torch.testing.assert_close(kt["item"][0], expect)
    torch.testing.assert_close(kt["item"][0], m.embed("item", ids).mean(0).detach())


def test_backends_agree_and_salts_differ(gowalla):
    a = UnifiedEmbedding(_features(), 1000, 8, backend="torchrec", seed=3)
    b = UnifiedEmbedding(_features(), 1000, 8, backend="torch", seed=3)
    torch.testing.assert_close(a(_kjt(gowalla)).values(), b(_kjt(gowalla)).values())
    x = torch.arange(500)
    ru, rh = a.mappers["user"].transform(x)[:, 0], a.mappers["hour"].transform(x)[:, 0]
    assert (ru != rh).float().mean() > 0.9  # same raw id, different feature -> different row (salt)
    assert feature_salt("user") != feature_salt("hour") and feature_salt("user", 1) != feature_salt("user", 0)
    out = a(_kjt(gowalla)).values()
    out.sum().backward()
    assert a.weight.grad.abs().sum() > 0


def test_state_round_trip_and_validation(gowalla):
    m = UnifiedEmbedding(_features(), 1000, 8, seed=1)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = UnifiedEmbedding(_features(), 1000, 8, seed=2)
    m2.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(m2(_kjt(gowalla)).values(), m(_kjt(gowalla)).values())
    with pytest.raises(ValueError, match="multiple of chunk_dim"):
        UnifiedEmbedding([FeatureConfig("a", 10, 12)], 100, 8)
    with pytest.raises(ValueError, match="chunk_dim"):
        UnifiedEmbedding([FeatureConfig("a", 10, 12)], 100, 0)


def test_unified_is_one_mapped_collection(gowalla):
    """One table code path (issue 12): the unified table IS a MappedEmbeddingBagCollection with a shared table;
    device='meta' builds it without storage; crafted mapper state is rejected."""
    from recsparse.embeddings import MappedEmbeddingBagCollection
    from recsparse.embeddings.mappers import MapperStateError

    m = UnifiedEmbedding(_features(), 1000, 8, backend="torch", seed=0)
    assert isinstance(m.tables, MappedEmbeddingBagCollection) and m.tables.table_names == ["unified"]
    assert m.tables.feature_names == ["user#0", "item#0", "item#1", "hour#0"]
    ids = torch.arange(-5, 200)
    torch.testing.assert_close(m.tables.mapper("item#1").transform(ids)[:, 0], m.mappers["item"].transform(ids)[:, 1])
    meta = UnifiedEmbedding(_features(), 10**9, 8, backend="torchrec", device="meta")
    assert meta.weight.is_meta and meta.weight.shape == (10**9, 8)
    state = m.state_dict()
    state["_extra_state"]["item"]["m"] = -5
    with pytest.raises(MapperStateError, match="universal mapper state: m"):
        m.load_state_dict(state)


def test_sparse_and_fused_update_paths_equal_dense_sgd(gowalla):
    """The shared table's three update paths give the SAME SGD step: dense gradient (torch), sparse gradient
    (torch, sparse=True: only looked-up rows), and FBGEMM TBE with SGD fused into backward (all features folded
    onto the one table) — forward values and updated weights match."""
    from recsparse.kernels.tbe import TBEConfig, fbgemm_available

    if not fbgemm_available():
        pytest.skip("fbgemm-gpu-cpu not installed")
    lr = 0.5
    dense = UnifiedEmbedding(_features(), 1000, 8, backend="torch", seed=4)
    sparse = UnifiedEmbedding(_features(), 1000, 8, backend="torch", seed=4, sparse=True)
    fused = UnifiedEmbedding(_features(), 1000, 8, backend="fbgemm", seed=4,
                             tbe_config=TBEConfig(optimizer="sgd", learning_rate=lr))
    w0 = dense.weight.detach().clone()
    with torch.no_grad():
        fused.weight.copy_(w0)
    kjt = _kjt(gowalla)
    target = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    outs = []
    for m in (dense, sparse, fused):
        out = m(kjt).values()
        outs.append(out.detach().clone())
        ((out - target) ** 2).sum().backward()
        if m is not fused:
            torch.optim.SGD(m.parameters(), lr=lr).step()
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(outs[2], outs[0])
    assert sparse.weight.grad.is_sparse
    assert not torch.equal(dense.weight.detach(), w0)  # the step changed something
    torch.testing.assert_close(sparse.weight.detach(), dense.weight.detach())
    torch.testing.assert_close(fused.weight.detach(), dense.weight.detach())
    # embed on the fused table = the feature's c chunks concatenated (inference gather)
    ids = kjt["item"].values()
    with torch.no_grad():
        torch.testing.assert_close(fused.embed("item", ids), dense.embed("item", ids))
    with pytest.raises(ValueError, match="sparse=True"):
        UnifiedEmbedding(_features(), 1000, 8, backend="torchrec", sparse=True)
