"""SSL auxiliary loss (Yao et al. 2021): masks, multi-hot dropout, mutual information, InfoNCE — on real ML-100K
slices where the issue asks for them, hand-computed values where a formula is checked."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import polars as pl
import pytest
import torch

from recsparse.models.ssl import (EmbeddingLayerEncoder, FeatureMasking, SSLConfig, SSLLoss, build_ssl, cfm_groups,
                                  info_nce, jagged_frame, mutual_information)
from tests.conftest import dataset_path


@pytest.fixture(scope="module")
def ml100k():
    from recsparse.data import load

    dataset_path("ml-100k")
    return load("ml-100k")


def _direct_mi(xs: list, ys: list) -> float:
    """I(X;Y) from a plain Python count of the pairs."""
    n = len(xs)
    pxy, px, py = Counter(zip(xs, ys)), Counter(xs), Counter(ys)
    return sum(c / n * math.log(c * n / (px[x] * py[y])) for (x, y), c in pxy.items())


# ------------------------------------------------------------------------------------------ mutual information
def test_mi_matches_direct_computation_on_real_items(ml100k):
    items = ml100k.item.head(400)
    cols = ["class", "release_year", "movie_title"]
    got = mutual_information(items, cols)
    # a multi-hot feature is one variable whose value is its set of ids
    as_key = {c: [tuple(sorted(v)) if isinstance(v, list) else v for v in items[c].to_list()] for c in cols}
    for i, a in enumerate(cols):
        for j, b in enumerate(cols):
            assert got[i, j] == pytest.approx(_direct_mi(as_key[a], as_key[b]), abs=1e-9)
    # the diagonal is the entropy; MI is symmetric and bounded by both entropies
    assert np.allclose(got, got.T)
    assert (got <= np.minimum.outer(np.diag(got), np.diag(got)) + 1e-9).all()


def test_mi_of_a_float_column_is_that_of_its_quantile_bins(ml100k):
    u = ml100k.user.head(200).with_columns(pl.col("age").cast(pl.Float64).alias("age_f"))
    binned = u.with_columns(pl.col("age_f").qcut(4, allow_duplicates=True).cast(pl.String).alias("age_q"))
    a = mutual_information(u, ["age_f", "occupation"], num_bins=4)
    b = mutual_information(binned, ["age_q", "occupation"])
    assert a == pytest.approx(b)
    with pytest.raises(ValueError, match="not in the frame"):
        mutual_information(u, ["nope"])


def _user_slice(ml100k) -> pl.DataFrame:
    # the first 8 users of ML-100K: gender, occupation, age decade, first zip digit
    return ml100k.user.head(8).with_columns((pl.col("age").cast(pl.Int64) // 10).alias("age10"),
                                            pl.col("zip_code").str.slice(0, 1).alias("zip1"))


def test_cfm_groups_follow_hand_computed_mi_on_real_slice(ml100k):
    u = _user_slice(ml100k)
    assert u["gender"].to_list() == ["M", "F", "M", "M", "F", "M", "M", "M"]
    assert u["occupation"].to_list() == ["technician", "other", "writer", "technician", "other", "executive",
                                         "administrator", "administrator"]
    assert u["age10"].to_list() == [2, 5, 2, 2, 3, 4, 5, 3]
    assert u["zip1"].to_list() == ["8", "9", "3", "4", "1", "9", "9", "0"]
    cols = ["gender", "occupation", "age10", "zip1"]
    ln2, ln3 = math.log(2), math.log(3)
    h_g = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))        # 6 M, 2 F
    h_occ = 2.25 * ln2                                              # counts 2, 2, 2, 1, 1
    h_age = -(3 / 8 * math.log(3 / 8) + 2 * 2 / 8 * math.log(2 / 8) + 1 / 8 * math.log(1 / 8))
    h_zip = -(3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(1 / 8))    # 9 three times, five singletons
    h13 = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    want = np.array([
        # gender is a function of occupation; given age 50 or 30 it is a coin flip; given zip 9 it is 1:2
        [h_g, h_g, h_g - 0.5 * ln2, h_g - 3 / 8 * h13],
        # occupation -> zip: technician, other, administrator each split two zips
        [h_g, h_occ, h_age - 0.5 * ln2, h_zip - 0.75 * ln2],
        [h_g - 0.5 * ln2, h_age - 0.5 * ln2, h_age, h_zip - (3 / 8 * ln3 + 0.25 * ln2)],
        [h_g - 3 / 8 * h13, h_zip - 0.75 * ln2, h_zip - (3 / 8 * ln3 + 0.25 * ln2), h_zip],
    ])
    got = mutual_information(u, cols)
    assert got == pytest.approx(want, abs=1e-12)
    # F = 4 -> 2 masked per view: the seed and its most informative partner
    groups = cfm_groups(got, 2)
    expect = {"gender": {"gender", "occupation"}, "occupation": {"occupation", "zip1"},
              "age10": {"age10", "zip1"}, "zip1": {"zip1", "occupation"}}
    for s, name in enumerate(cols):
        assert {cols[j] for j in range(4) if groups[s, j]} == expect[name]
    # sampled CFM masks are exactly these groups, each seed drawn
    m = FeatureMasking(cols, [1, 1, 1, 1], "cfm", mi=got)
    masks = m.masks(400, torch.Generator().manual_seed(0))
    rows = {tuple(r) for r in masks.int().tolist()}
    assert rows == {tuple(g) for g in groups.int().tolist()}


def test_cfm_groups_with_more_features_rank_by_mi_and_need_the_table():
    mi = np.array([[9, 5, 1, 3, 0], [5, 9, 2, 2, 1], [1, 2, 9, 4, 0], [3, 2, 4, 9, 7], [0, 1, 0, 7, 9]], float)
    g = cfm_groups(mi, 2)
    assert g.int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1],
                                [0, 0, 0, 1, 1]]
    assert cfm_groups(mi, 3)[0].int().tolist() == [1, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="mutual information"):
        FeatureMasking(list("abcde"), [1] * 5, "cfm")
    with pytest.raises(ValueError, match="mi must be"):
        FeatureMasking(list("abc"), [1] * 3, "cfm", mi=mi)


# ------------------------------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("num_features", [2, 3, 5, 8])
def test_rfm_masks_hide_half_and_cover_every_split(num_features):
    m = FeatureMasking([f"f{i}" for i in range(num_features)], [2] * num_features, "rfm")
    mask = m.masks(4000, torch.Generator().manual_seed(1))
    assert mask.shape == (4000, num_features)
    assert (mask.sum(1) == num_features // 2).all()          # view 1 hides ⌊F/2⌋ ...
    assert ((~mask).sum(1) == num_features - num_features // 2).all()  # ... view 2 the other ⌈F/2⌉
    # uniform: each feature is in view 1's masked half with probability ⌊F/2⌋ / F
    freq = mask.float().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, (num_features // 2) / num_features), atol=0.04)
    if num_features <= 5:
        assert len({tuple(r) for r in mask.int().tolist()}) == math.comb(num_features, num_features // 2)


def _item_batch(ml100k, n=64):
    """Real ML-100K item features (id, genres, year) as the two-tower item store, the first n items' KJT."""
    from recsparse.pipelines.config import TrainConfig
    from recsparse.pipelines.data import _split_atomic

    cfg = TrainConfig.from_dict({"data": {"dataset": "ml-100k", "split": "leave_last_out"},
                                 "model": {"family": "two_tower"}, "loss": {"name": "softmax"}})
    split = _split_atomic(ml100k, cfg)
    ids = torch.arange(n)
    return split, split.item_features.kjt(ids), ids


def test_views_are_complementary_and_masked_blocks_take_the_default(ml100k):
    from recsparse.embeddings import FeatureConfig
    from recsparse.models.two_tower import Tower

    split, kjt, ids = _item_batch(ml100k)
    store = split.item_features
    tower = Tower([FeatureConfig(f, store.vocab_sizes[f], 4) for f in store.names], [8], 6, seed=3)
    masking = FeatureMasking(store.names, tower.ebc.embedding_dims, "rfm")
    with torch.no_grad():
        masking.default.copy_(torch.arange(12, dtype=torch.float32) + 100.0)  # recognisable defaults

    seen = []

    class Spy:
        def embed_features(self, k, dense=None):
            return tower.embed_features(k, dense)

        def encode(self, e):
            seen.append(e.detach().clone())
            return tower.encode(e)

    a, b = SSLLoss(masking).views(Spy(), kjt, torch.Generator().manual_seed(5))
    assert a.shape == b.shape == (64, 6)
    plain = tower.embed_features(kjt).detach()
    blocks = lambda e: e.reshape(64, 3, 4)  # noqa: E731
    is_default = [(blocks(e) == blocks(masking.default.detach().expand(64, 12))).all(-1) for e in seen]
    kept = [(blocks(e) == blocks(plain)).all(-1) for e in seen]
    # every feature is masked in exactly one view and kept as is in the other
    assert (is_default[0] ^ is_default[1]).all()
    assert (is_default[0] == kept[1]).all() and (is_default[1] == kept[0]).all()
    assert (is_default[0].sum(1) == 1).all()  # ⌊3/2⌋ = 1 masked in view 1, 2 in view 2


def test_multi_hot_dropout_drops_only_inside_multi_hot_features(ml100k):
    split, kjt, _ = _item_batch(ml100k, n=1000)
    m = FeatureMasking(split.item_features.names, [1, 1, 1], "rfm", dropout=0.3, multi_hot=["genre"])
    out = m.drop(kjt, torch.Generator().manual_seed(0))
    before, after = kjt.to_dict(), out.to_dict()
    for f in ("item_id", "year"):
        assert torch.equal(before[f].values(), after[f].values())
        assert torch.equal(before[f].lengths(), after[f].lengths())
    g0, g1 = before["genre"], after["genre"]
    assert (g1.lengths() <= g0.lengths()).all()
    kept = g1.values().numel() / g0.values().numel()
    assert kept == pytest.approx(0.7, abs=0.03)
    # the survivors of each bag are a subsequence of its genres
    for b0, b1 in zip(g0.to_dense()[:50], g1.to_dense()[:50]):
        it = iter(b0.tolist())
        assert all(any(x == y for y in it) for x in b1.tolist())
    assert m.drop(kjt) is not kjt and FeatureMasking(["a", "b"], [1, 1], dropout=0.0).drop(kjt) is kjt


# ----------------------------------------------------------------------------------------------------- InfoNCE
def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    tau = 0.5
    na = [[1, 0], [0, 1], [0.6, 0.8]]
    s2 = math.sqrt(0.5)
    nb = [[s2, s2], [0, 1], [-1, 0]]
    want = 0.0
    for i in range(3):
        row = [(na[i][0] * nb[j][0] + na[i][1] * nb[j][1]) / tau for j in range(3)]
        want += -(row[i] - math.log(sum(math.exp(x) for x in row)))
    assert info_nce(a, b, tau).item() == pytest.approx(want / 3, rel=1e-6)
    # item drawn twice (ids 7, 7): the duplicate is not a negative of its twin
    ids = torch.tensor([7, 3, 7])
    want_dup = 0.0
    for i in range(3):
        cands = [j for j in range(3) if j == i or ids[j] != ids[i]]
        row = {j: (na[i][0] * nb[j][0] + na[i][1] * nb[j][1]) / tau for j in cands}
        want_dup += -(row[i] - math.log(sum(math.exp(x) for x in row.values())))
    assert info_nce(a, b, tau, ids).item() == pytest.approx(want_dup / 3, rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(a, b, 0.0)


def test_ssl_loss_is_weighted_and_trains_the_defaults(ml100k):
    from recsparse.embeddings import FeatureConfig
    from recsparse.models.two_tower import Tower

    split, kjt, ids = _item_batch(ml100k)
    store = split.item_features
    tower = Tower([FeatureConfig(f, store.vocab_sizes[f], 4) for f in store.names], [8], 6, seed=3)
    mi = mutual_information(jagged_frame(store.lengths, store.values), store.names)
    loss = build_ssl(SSLConfig(augment="cfm", weight=0.5, temperature=0.2, dropout=0.2), store.names, [4, 4, 4],
                     ["genre"], mi)
    x = loss(tower, kjt, ids, torch.Generator().manual_seed(0))
    unweighted = SSLLoss(loss.masking, 1.0, 0.2)(tower, kjt, ids, torch.Generator().manual_seed(0))
    assert x.item() == pytest.approx(0.5 * unweighted.item(), rel=1e-6)
    x.backward()
    assert loss.masking.default.grad is not None and loss.masking.default.grad.abs().sum() > 0


def test_jagged_frame_and_ssl_config():
    f = jagged_frame({"a": torch.tensor([1, 1]), "g": torch.tensor([2, 0])},
                     {"a": torch.tensor([5, 6]), "g": torch.tensor([1, 2])})
    assert f["a"].to_list() == [5, 6] and f["g"].to_list() == [[1, 2], []]
    assert not SSLConfig().enabled and SSLConfig(weight=0.1).enabled
    for bad, match in (({"augment": "xfm"}, "augment"), ({"weight": -1}, "weight"), ({"temperature": 0}, "temp"),
                       ({"dropout": 1.0}, "dropout"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=match):
            SSLConfig(**bad)


def test_embedding_layer_encoder_masks_sparse_and_dense_blocks(ml100k):
    """The CTR form: [B, F, d] embedding layer + dense columns; a masked dense column takes its default value."""
    from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection

    split, kjt, ids = _item_batch(ml100k, n=32)
    store = split.item_features
    ebc = MappedEmbeddingBagCollection([FeatureConfig(f, store.vocab_sizes[f], 4) for f in store.names],
                                       backend="torch", seed=1)
    embed = lambda k: ebc(k).values().view(-1, 3, 4)  # noqa: E731  (what CTRModel.embed returns)
    enc = EmbeddingLayerEncoder(embed, num_sparse=3, dim=4, num_dense=2, hidden=[8], out_dim=5)
    dense = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    e = enc.embed_features(kjt, dense)
    assert e.shape == (32, 14) and torch.equal(e[:, 12:], dense)
    names = [*store.names, "d0", "d1"]
    masking = FeatureMasking(names, enc.widths, "rfm")
    with torch.no_grad():
        masking.default.fill_(-7.0)
    mask = masking.masks(32, torch.Generator().manual_seed(2))
    assert (mask.sum(1) == 2).all()  # ⌊5/2⌋ of the 5 features (3 sparse, 2 dense)
    filled = masking.fill(e, mask)
    col_mask = mask[:, torch.repeat_interleave(torch.arange(5), torch.tensor(enc.widths))]
    assert (filled[col_mask] == -7.0).all() and torch.equal(filled[~col_mask], e[~col_mask])
    loss = SSLLoss(masking, 1.0, 0.1)(enc, kjt, ids, torch.Generator().manual_seed(3), dense)
    loss.backward()
    assert ebc.table_weight("item_id").grad is not None and masking.default.grad[12:].abs().sum() > 0
    with pytest.raises(ValueError, match="dense"):
        enc.embed_features(kjt)


def test_ctr_ssl_on_real_ml100k_ctr_batch_trains_tables_and_head():
    """The CTR form on a real ml-100k-CTR batch: MI of the encoded training frame (10 features, 5 masked per view),
    the term as CTRModule's ``ssl``, gradients into the model's tables, the projection and the defaults."""
    import lightning.pytorch as L

    from recsparse.models.ctr import build_ctr_model
    from recsparse.models.ssl import ctr_ssl, first_rows
    from recsparse.pipelines.config import CTRConfig
    from recsparse.pipelines.ctr import CTRModule, prepare

    dataset_path("ml-100k")
    ds, fitted = prepare(CTRConfig.from_dict({"data": {"dataset": "ml-100k-ctr"}, "model": {"name": "dcn_v2"}}))
    train = ds.train.head(3000)
    aux = ctr_ssl(SSLConfig(augment="cfm", weight=0.5, dropout=0.2, batch_size=64), fitted, train, dim=8)
    names = fitted.sparse_names
    assert aux.loss.masking.multi_hot == ["genres"] and aux.loss.masking.num_masked == len(names) // 2
    mi = mutual_information(fitted.encode_frame(train), names)
    assert torch.equal(aux.loss.masking.groups, cfm_groups(mi, len(names) // 2))
    model = build_ctr_model("dcn_v2", fitted, 8, "torch", 0)
    module = CTRModule(model, ssl=aux)
    module.trainer = L.Trainer(barebones=True, accelerator="cpu", devices=1)
    batch = fitted.encode(train).batch(torch.arange(200))
    assert first_rows(batch.sparse, 64).stride() == 64
    assert first_rows(batch.sparse, 64).to_dict()["genres"].lengths().tolist() == \
        batch.sparse.to_dict()["genres"].lengths()[:64].tolist()
    term = aux(module, batch)
    assert term.item() > 0
    module.training_step(batch, 0).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.embeddings.parameters())
    assert aux.encoder.proj[0].weight.grad is not None and aux.loss.masking.default.grad.abs().sum() > 0
    # the aux term is a submodule of the LightningModule: the optimizer sees its parameters
    assert {id(p) for p in aux.parameters()} <= {id(p) for p in module.parameters()}
