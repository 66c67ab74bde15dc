"""Every mapper: range on any id, determinism, state round-trip through torch.save/weights_only, Polars == torch,
and the family-specific semantics (vocabulary, head ids, QR uniqueness, GraphHash clustering on real Gowalla)."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsparse.embeddings.mappers import (MAPPERS, PRIME, DoubleGraphHashMapper, FrequencyHashMapper, FullMapper,
                                          GraphHashMapper, MapperStateError, QRMapper, UniversalHashMapper,
                                          build_mapper, cluster_bipartite, mapper_from_state)
from recsparse.types import IdMapper

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
EDGE_IDS = torch.tensor([-(2**63), -(2**62), -7, -1, 0, 1, 2, 3, 99, 40_980, 40_981, 10**12, 2**62, 2**63 - 1])


def _fitted(name: str, gowalla_slice: pl.DataFrame, seed: int = 0) -> IdMapper:
    items = gowalla_slice["item_id"]
    num_items = int(items.max()) + 1
    if name in ("graphhash", "double_graphhash"):
        return build_mapper(name, num_items, side="item", resolution=20.0, seed=seed).fit(gowalla_slice)
    kw = {"seed": seed} if name in ("universal", "frequency") else {}
    if name == "universal":
        kw["num_hashes"] = 2
    m = build_mapper(name, num_items, None, **kw)
    return m.fit(items) if name in ("full", "frequency") else m.fit(None)


def _polars_rows(m: IdMapper, ids: torch.Tensor) -> torch.Tensor:
    out = pl.DataFrame({"x": ids.numpy()}).lazy().select(m.polars_expr("x")).collect()["x"]
    return torch.tensor(out.to_list(), dtype=torch.long).reshape(ids.shape[0], m.rows_per_id)


@pytest.mark.parametrize("name", sorted(MAPPERS))
def test_mapper_contract(name, gowalla_slice):
    m = _fitted(name, gowalla_slice)
    assert isinstance(m, IdMapper)
    ids = torch.cat([EDGE_IDS, torch.tensor(gowalla_slice["item_id"].to_numpy()[:5000])])
    rows = m.transform(ids)
    assert rows.dtype == torch.long and rows.shape == (ids.numel(), m.rows_per_id)
    assert rows.min() >= 0 and rows.max() < m.num_rows
    # shape S -> S + (k,) for any S
    assert m.transform(ids[:12].reshape(3, 4)).shape == (3, 4, m.rows_per_id)
    # Polars op equals the torch op, element for element (incl. negative / huge ids)
    assert torch.equal(_polars_rows(m, ids), rows)
    # determinism: a second mapper built and fitted with the same seed maps identically
    assert torch.equal(_fitted(name, gowalla_slice).transform(ids), rows)
    # state round-trip via torch.save + torch.load(weights_only=True)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = mapper_from_state(torch.load(buf, weights_only=True))
    assert type(m2) is type(m) and m2.num_rows == m.num_rows and torch.equal(m2.transform(ids), rows)


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(INT64, min_size=1, max_size=64), m=st.integers(1, 10_000), k=st.integers(1, 4),
       seed=st.integers(0, 2**31))
def test_hash_family_property(ids, m, k, seed):
    x = torch.tensor(ids, dtype=torch.long)
    for mapper in (UniversalHashMapper(m, k, seed), build_mapper("modulo", 10, m), QRMapper(50_000, max(2, m)),
                   FrequencyHashMapper(m + 1, num_top=0, seed=seed)):
        rows = mapper.transform(x)
        assert rows.min() >= 0 and rows.max() < mapper.num_rows
        assert torch.equal(_polars_rows(mapper, x), rows.reshape(len(ids), -1))


def test_universal_hash_formula_by_hand():
    m = UniversalHashMapper(97, num_hashes=2, seed=3)
    x = 123456789
    for j in range(2):
        a, b = int(m.a[j]), int(m.b[j])
        assert int(m.transform(torch.tensor([x]))[0, j]) == ((a * (x % PRIME) + b) % PRIME) % 97
    assert not torch.equal(UniversalHashMapper(97, 2, seed=4).a, m.a)  # the seed is the salt


def test_full_mapper_vocab_and_oov():
    m = FullMapper(10)  # identity vocabulary
    assert m.transform(torch.tensor([0, 9, 10, -1])).flatten().tolist() == [0, 9, 10, 10]
    m = FullMapper(1).fit(torch.tensor([500, 7, 7, 10**15]))
    assert m.num_rows == 4
    assert m.transform(torch.tensor([7, 500, 10**15, 8])).flatten().tolist() == [0, 1, 2, 3]
    m = FullMapper(1).fit(pl.DataFrame({"i": [5, 5, 6]}), column="i", min_count=2)
    assert m.num_rows == 2 and m.transform(torch.tensor([5, 6])).flatten().tolist() == [0, 1]


def test_frequency_mapper_gives_head_ids_own_rows(gowalla):
    items = torch.tensor(gowalla.train["item_id"].to_numpy())
    m = FrequencyHashMapper(1000, num_top=100).fit(items)
    uniq, counts = torch.unique(items, return_counts=True)
    top = uniq[torch.sort(-counts, stable=True).indices[:100]]
    rows = m.transform(top).flatten()
    assert sorted(rows.tolist()) == list(range(100))  # the 100 most frequent items own rows 0..99
    tail = m.transform(uniq[~torch.isin(uniq, top)]).flatten()
    assert tail.min() >= 100


def test_qr_pairs_are_unique():
    m = QRMapper(10_000, num_rows=300)
    assert m.num_rows <= 300 and m.m_r * m.m_q >= 10_000
    pairs = m.transform(torch.arange(10_000))
    assert torch.unique(pairs, dim=0).shape[0] == 10_000  # no two ids share both rows
    assert QRMapper(10_000).num_rows == 200  # 2·ceil(sqrt(N))
    with pytest.raises(ValueError, match="combine"):
        QRMapper(10, combine="product")


def test_graphhash_bipartite_one_clustering(gowalla_slice):
    nu, ni = int(gowalla_slice["user_id"].max()) + 1, int(gowalla_slice["item_id"].max()) + 1
    users, items = GraphHashMapper.fit_bipartite(gowalla_slice, resolution=20.0, seed=0, num_users=nu, num_items=ni)
    c = cluster_bipartite(gowalla_slice, 20.0, 0, num_users=nu, num_items=ni)
    assert users.num_clusters == c.num_user_clusters and items.num_clusters == c.num_item_clusters
    assert 1 < users.num_rows < nu and 1 < items.num_rows < ni
    assert 0.0 < c.modularity < 1.0
    # interacting user/item pairs fall in the same Louvain cluster far more often than under shuffled labels
    from sknetwork.clustering import Louvain
    import scipy.sparse as sp

    u, i = gowalla_slice["user_id"].to_numpy(), gowalla_slice["item_id"].to_numpy()
    B = sp.csr_matrix((np.ones(u.size), (u, i)), shape=(nu, ni))
    lv = Louvain(resolution=20.0, random_state=0, return_probs=False, return_aggregate=False).fit(B, force_bipartite=True)
    same = (lv.labels_row_[u] == lv.labels_col_[i]).mean()
    shuffled = (lv.labels_row_[u] == np.random.default_rng(0).permutation(lv.labels_col_)[i]).mean()
    assert same > 5 * shuffled
    # users in the same raw cluster share a row; mapping is consistent with the clustering
    urows = users.transform(torch.tensor(u)).flatten().numpy()
    for lab in np.unique(lv.labels_row_[u])[:20]:
        assert np.unique(urows[lv.labels_row_[u] == lab]).size == 1
    # side= API with the memoised clustering gives the same mapper
    again = GraphHashMapper(ni, side="item", resolution=20.0, seed=0).fit(gowalla_slice, num_users=nu)
    assert torch.equal(again.labels, items.labels)
    # unseen ids (no train edge / out of range) -> the OOV row
    isolated = torch.tensor([ni, -3, 10**10])
    assert (items.transform(isolated) == items.num_clusters).all()


def test_graphhash_resolution_sets_budget(gowalla_slice):
    sizes = [GraphHashMapper.fit_bipartite(gowalla_slice, resolution=r)[1].num_rows for r in (1.0, 20.0, 100.0)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_double_graphhash(gowalla_slice):
    users, items = DoubleGraphHashMapper.fit_bipartite(gowalla_slice, resolution=20.0, num_hash_rows=64)
    rows = items.transform(torch.arange(100))
    base = items.num_clusters + items.num_oov_rows
    assert items.num_rows == base + 64
    assert (rows[:, 0] < base).all() and (rows[:, 1] >= base).all()
    # two items of one cluster usually get different hashed rows -> different embeddings
    assert torch.unique(rows, dim=0).shape[0] > torch.unique(rows[:, 0]).shape[0]


def test_build_mapper_errors():
    with pytest.raises(ValueError, match="mapper must be one of"):
        build_mapper("nope", 10)
    with pytest.raises(ValueError, match="num_rows"):
        build_mapper("modulo", 10, 0)
    with pytest.raises(ValueError, match="resolution"):
        build_mapper("graphhash", 10, 5)
    with pytest.raises(ValueError, match="side"):
        GraphHashMapper(10, side="both")
    with pytest.raises(TypeError, match="interaction frame"):
        GraphHashMapper(10).fit(torch.arange(3))
    with pytest.raises(ValueError, match="num_top"):
        FrequencyHashMapper(10, num_top=10)
    with pytest.raises(ValueError, match="state is for mapper"):
        FullMapper(3).load_state_dict(UniversalHashMapper(3).state_dict())


def test_full_and_modulo_do_not_drop_options():
    """Regression (issue 12): `full` silently ignored num_rows, `full`/`modulo` silently ignored any option."""
    assert build_mapper("full", 10, 11).num_rows == 11  # the size it has anyway is fine
    with pytest.raises(ValueError, match="mapper 'full'.*num_rows=5"):
        build_mapper("full", 10, 5)
    with pytest.raises(ValueError, match="mapper 'modulo' takes no options.*seed"):
        build_mapper("modulo", 10, 5, seed=3)
    with pytest.raises(ValueError, match="mapper 'full' takes no options"):
        build_mapper("full", 10, None, num_hashes=2)
    with pytest.raises(ValueError, match="mapper 'qr'.*check mapper_kwargs"):
        build_mapper("qr", 10, 5, num_hashes=2)
    assert build_mapper("modulo", 10, 5).num_rows == 5


@pytest.mark.parametrize("name,field,bad", [
    ("modulo", "m", -5), ("modulo", "m", 0), ("modulo", "m", 2.5), ("universal", "m", -1),
    ("universal", "num_hashes", 3), ("qr", "m_r", 0), ("frequency", "num_top", 10**6), ("full", "identity", 2),
])
def test_crafted_scalar_state_is_rejected(name, field, bad):
    m = build_mapper(name, 1000, 100 if name != "full" else None)
    state = m.state_dict()
    state[field] = bad
    with pytest.raises(MapperStateError, match=f"{name} mapper state.*{field}"):
        mapper_from_state(state)
    before = m.state_dict()
    with pytest.raises(MapperStateError):
        m.load_state_dict(state)
    assert m.state_dict()["m" if "m" in before else "num_ids"] == before["m" if "m" in before else "num_ids"]


def test_crafted_graphhash_labels_are_rejected(gowalla_slice):
    """Regression (issue 12): out-of-range GraphHash labels loaded from a checkpoint made the fbgemm backend look up
    row 0 silently (its bounds check clamps); now the load fails naming the mapper and field."""
    from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection

    Err = MapperStateError
    users, items = GraphHashMapper.fit_bipartite(gowalla_slice, resolution=10.0)
    m = MappedEmbeddingBagCollection([FeatureConfig("item", items.num_ids, 8, items)], backend="fbgemm", seed=0)
    state = m.state_dict()
    good = state["_extra_state"]["item"]["labels"].clone()
    state["_extra_state"]["item"]["labels"] = good + items.num_clusters + 5  # every label past the table
    with pytest.raises(Err, match="graphhash mapper state: labels"):
        m.load_state_dict(state)
    assert torch.equal(m.mapper("item").labels, good)  # the failed load changed nothing
    state["_extra_state"]["item"]["labels"] = good[:-1]
    with pytest.raises(Err, match="labels has"):
        m.load_state_dict(state)
    mod = MappedEmbeddingBagCollection([FeatureConfig("x", 10, 4, "modulo", num_rows=5)], backend="fbgemm")
    state = mod.state_dict()
    state["_extra_state"]["x"]["m"] = -5  # torch.remainder(ids, -5) <= 0: rows fbgemm would clamp to 0
    with pytest.raises(Err, match="modulo mapper state: m"):
        mod.load_state_dict(state)
    assert mod.mapper("x").num_rows == 5
    with pytest.raises(Err, match="'mapper' must be one of"):
        mapper_from_state({"mapper": "nope"})
    with pytest.raises(Err, match="1-D int64"):
        mapper_from_state({**items.state_dict(), "labels": items.labels.float()})
