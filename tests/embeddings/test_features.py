"""Feature spec: fit/encode on real ml-100k and adult, Polars rows == torch mapper rows, streaming, save/load,
bad input (missing column, wrong dtype, unseen category, NaN, bad label)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from recsparse.embeddings.features import (Bucketized, Categorical, FeatureSpec, FeatureSpecError, FittedFeatureSpec,
                                           MultiHot, Numeric)
from tests.conftest import dataset_path


@pytest.fixture(scope="module")
def ml():
    dataset_path("ml-100k")
    from recsparse.data.ctr import load_ctr

    return load_ctr("ml-100k-ctr")


@pytest.fixture(scope="module")
def adult():
    dataset_path("adult")
    from recsparse.data.ctr import load_ctr

    return load_ctr("adult")


@pytest.fixture(scope="module")
def ml_fitted(ml):
    return ml.spec.fit(ml.train)


def test_fit_vocabularies_and_oov_on_real_ml100k(ml, ml_fitted):
    rows = ml_fitted.table_rows()
    # every string vocabulary + one OOV row; genres: 19 ml-100k genre tokens + OOV; gender M/F + OOV
    assert rows["gender"] == 3
    assert rows["user_id"] == ml.train["user_id"].n_unique() + 1
    assert rows["genres"] == ml.train["genres"].explode().drop_nulls().n_unique() + 1
    assert rows["release_year"] == 11 + 2 + 1  # 12 buckets + the null bucket + OOV
    enc = ml_fitted.encode(ml.test)
    kjt = enc.batch().sparse
    # the time split leaves test users unseen in training: they encode to -1 and map to the OOV row
    users = kjt["user_id"].values()
    unseen = ~ml.test["user_id"].is_in(ml.train["user_id"].unique().implode()).to_numpy()
    assert unseen.any() and (users[torch.from_numpy(unseen)] == -1).all()
    m = ml_fitted.mappers["user_id"]
    assert (m.transform(users[torch.from_numpy(unseen)]) == m.num_rows - 1).all()
    # multi-hot lengths = list lengths
    assert torch.equal(kjt["genres"].lengths(), torch.from_numpy(ml.test["genres"].list.len().to_numpy()).long())


def test_gather_equals_slice_including_multi_hot(ml_fitted, ml):
    enc = ml_fitted.encode(ml.valid.head(300))
    idx = torch.arange(10, 60)
    a, b = enc.batch(idx), enc.batch(slice(10, 60))
    for k in ml_fitted.sparse_names:
        assert torch.equal(a.sparse[k].values(), b.sparse[k].values())
        assert torch.equal(a.sparse[k].lengths(), b.sparse[k].lengths())
    assert torch.equal(a.label, b.label)
    # a shuffled gather puts each row's bag where its row went
    perm = torch.tensor([5, 0, 3])
    c = enc.batch(perm).sparse["genres"].to_dense()
    full = enc.batch(slice(0, 6)).sparse["genres"].to_dense()
    assert [x.tolist() for x in c] == [full[i].tolist() for i in perm.tolist()]


@pytest.mark.parametrize("mapper,kw", [("full", {}), ("modulo", {"num_rows": 7}), ("universal", {"num_rows": 11}),
                                       ("frequency", {"num_rows": 9}), ("qr", {"num_rows": 5})])
def test_polars_rows_equal_torch_mapper_rows(adult, mapper, kw):
    feats = [Categorical(c, mapper=mapper, **kw) for c in ("workclass", "occupation", "native-country")]
    feats.append(Numeric("age"))
    fitted = FeatureSpec(feats).fit(adult.train)
    frame = adult.test.head(2000)
    rows = fitted.rows_frame(frame).collect()
    enc = fitted.encode(frame)
    for f in feats[:3]:
        torch_rows = fitted.mappers[f.name].transform(enc.values[f.name])
        polars_rows = rows[f.name]
        pr = (np.stack(polars_rows.to_numpy()) if polars_rows.dtype == pl.List(pl.Int64)
              else polars_rows.to_numpy()[:, None])
        assert np.array_equal(torch_rows.numpy(), pr), f.name


def test_unified_rows_match_unified_embedding_salts(adult):
    from recsparse.embeddings.unified import UnifiedEmbedding

    feats = [Categorical(c, mapper="unified") for c in ("workclass", "education", "race")]
    fitted = FeatureSpec(feats, unified_rows=13, unified_seed=3).fit(adult.train)
    ue = UnifiedEmbedding(fitted.feature_configs(4), 13, 4, backend="torch", seed=3)
    enc = fitted.encode(adult.valid.head(500))
    rows = fitted.rows_frame(adult.valid.head(500)).collect()
    for f in feats:
        assert np.array_equal(ue.mappers[f.name].transform(enc.values[f.name])[:, 0].numpy(), rows[f.name].to_numpy())


def test_expression_namespace_on_columns_and_expressions():
    from recsparse.embeddings.mappers import UniversalHashMapper

    m = UniversalHashMapper(97, num_hashes=2, seed=5)
    df = pl.DataFrame({"x": [3, -7, 10**12, 42]})
    out = df.select(pl.col("x").recsparse.rows(m))["x"]
    assert np.array_equal(np.stack(out.to_numpy()), m.transform(torch.tensor(df["x"].to_list())).numpy())
    out2 = df.select((pl.col("x") + 1).recsparse.rows(m).alias("y"))["y"]
    assert np.array_equal(np.stack(out2.to_numpy()), m.transform(torch.tensor(df["x"].to_list()) + 1).numpy())
    with pytest.raises(TypeError, match="id-mapper"):
        pl.col("x").recsparse.rows(object())


def test_streaming_from_parquet_equals_in_memory(tmp_path, ml, ml_fitted):
    path = tmp_path / "test.parquet"
    ml.test.head(2500).write_parquet(path)
    streamed = list(ml_fitted.batches(path, batch_size=300, chunk_rows=700))
    assert [len(b) for b in streamed] == [300] * 8 + [100]
    whole = ml_fitted.encode(ml.test.head(2500)).batch()
    for k in ml_fitted.sparse_names:
        assert torch.equal(torch.cat([b.sparse[k].values() for b in streamed]), whole.sparse[k].values())
    assert torch.equal(torch.cat([b.label for b in streamed]), whole.label)
    # a LazyFrame streams too (never collected whole by batches())
    lazy = list(ml_fitted.batches(pl.scan_parquet(path), batch_size=1000))
    assert sum(len(b) for b in lazy) == 2500
    # fitting on a lazy parquet scan gives the same spec as fitting on the frame
    from dataclasses import replace

    spec = FeatureSpec([replace(f, min_count=2) if isinstance(f, Categorical) else f for f in ml.spec.features])
    a, b = spec.fit(pl.scan_parquet(path)), spec.fit(ml.test.head(2500))
    assert a.table_rows() == b.table_rows() and a.states == b.states


def test_save_load_roundtrip_json_safetensors(tmp_path, adult):
    spec = FeatureSpec([Categorical("workclass"), Categorical("education", mapper="universal", num_rows=5,
                                                              mapper_kwargs={"num_hashes": 2}),
                        Categorical("occupation", min_count=500), Bucketized("age", num_buckets=5),
                        Numeric("hours-per-week")])
    fitted = spec.fit(adult.train)
    fitted.artifacts["mutual_information"] = torch.rand(4, 4)
    fitted.save(tmp_path / "spec")
    assert sorted(p.name for p in (tmp_path / "spec").iterdir()) == ["spec.json", "tensors.safetensors"]
    json.loads((tmp_path / "spec" / "spec.json").read_text())  # plain JSON
    back = FittedFeatureSpec.load(tmp_path / "spec")
    a, b = fitted.encode(adult.test.head(800)).batch(), back.encode(adult.test.head(800)).batch()
    for k in fitted.sparse_names:
        assert torch.equal(a.sparse[k].values(), b.sparse[k].values())
        assert torch.equal(fitted.mappers[k].transform(a.sparse[k].values()),
                           back.mappers[k].transform(b.sparse[k].values()))
    assert torch.equal(a.dense, b.dense)
    assert torch.equal(back.artifacts["mutual_information"], fitted.artifacts["mutual_information"])
    # min_count: rare occupations share the OOV row
    occ = fitted.mappers["occupation"]
    assert occ.num_rows < fitted.encode(adult.train).values["occupation"].max() + 2
    with pytest.raises(FeatureSpecError, match="no id reaches min_count=100000"):
        FeatureSpec([Categorical("occupation", min_count=100_000)]).fit(adult.train)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FeatureSpecError, match="spec.json: missing"):
        FittedFeatureSpec.load(tmp_path)
    (tmp_path / "spec.json").write_text("{bad")
    (tmp_path / "tensors.safetensors").write_bytes(b"")
    with pytest.raises(FeatureSpecError, match=r"spec.json:1: not valid JSON"):
        FittedFeatureSpec.load(tmp_path)


def test_graphhash_feature_clusters_the_user_item_graph(ml):
    spec = FeatureSpec([Categorical("user_id", mapper="graphhash", graph_pair="item_id",
                                    mapper_kwargs={"resolution": 5.0}), Categorical("item_id")])
    fitted = spec.fit(ml.train)
    m = fitted.mappers["user_id"]
    assert 1 < m.num_rows < fitted.table_rows()["item_id"]
    rows = m.transform(fitted.encode(ml.test, with_label=False).values["user_id"])
    assert int(rows.max()) < m.num_rows and int(rows.min()) >= 0


# ---------------------------------------------------------------------------------------------- bad input
FRAME = pl.DataFrame({"c": ["a", "b", "a", None], "n": [1.0, 2.0, 3.0, 4.0], "f": [0.5, 1.5, 2.5, 3.5],
                      "l": [["x"], [], None, ["y", "x"]], "label": [1, 0, 1, 0]})


def test_missing_column_is_a_user_error_naming_it():
    with pytest.raises(FeatureSpecError, match=r"feature 'q': column 'nope' is not in the frame"):
        FeatureSpec([Categorical("q", column="nope")]).fit(FRAME)
    fitted = FeatureSpec([Categorical("c")]).fit(FRAME)
    with pytest.raises(FeatureSpecError, match="label column 'label' is not in the frame"):
        fitted.encode(FRAME.drop("label"))


@pytest.mark.parametrize("feature,msg", [
    (Categorical("f"), r"column 'f' has dtype Float64.*bucketize"),
    (Numeric("c"), r"numeric needs a numeric column, 'c' has dtype String"),
    (MultiHot("c"), r"multi_hot needs a list column"),
    (Categorical("l"), r"is a list .*multi_hot"),
    (Categorical("n", encode="hex"), r"encode='hex' needs string values"),
])
def test_wrong_dtype_is_a_user_error(feature, msg):
    with pytest.raises(FeatureSpecError, match=msg):
        FeatureSpec([feature]).fit(FRAME)


def test_unseen_category_goes_to_oov_never_indexerror():
    from recsparse.embeddings import MappedEmbeddingBagCollection

    fitted = FeatureSpec([Categorical("c"), MultiHot("l")]).fit(FRAME)
    new = pl.DataFrame({"c": ["zzz", None, "b"], "l": [["never"], ["x", "never"], []], "label": [0, 1, 1]})
    b = fitted.encode(new).batch()
    assert b.sparse["c"].values().tolist() == [-1, -1, 1]
    ebc = MappedEmbeddingBagCollection(fitted.feature_configs(4), backend="torch")
    out = ebc(b.sparse).values()
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    oov = fitted.mappers["c"].num_rows - 1
    assert torch.allclose(out[0, :4], ebc.table_weight("c")[oov])


def test_nan_numeric_errors_unless_fill_null():
    bad = FRAME.with_columns(pl.Series("n", [1.0, float("nan"), None, 4.0]))
    with pytest.raises(FeatureSpecError, match=r"feature 'n': column 'n' has 2 null/NaN/inf"):
        FeatureSpec([Numeric("n")]).fit(bad)
    fitted = FeatureSpec([Numeric("n")]).fit(FRAME)
    with pytest.raises(FeatureSpecError, match=r"feature 'n'.*1 null/NaN/inf"):
        fitted.encode(FRAME.with_columns(pl.Series("n", [1.0, float("inf"), 2.0, 3.0])))
    filled = FeatureSpec([Numeric("n", fill_null=0.0)]).fit(bad)
    d = filled.encode(bad).dense[:, 0]
    assert torch.isfinite(d).all() and d[1] == d[2]
    # bucketised: nulls/NaN get their own bucket
    bk = FeatureSpec([Bucketized("n", boundaries=[2.0, 3.0])]).fit(FRAME)
    assert bk.encode(bad).values["n"].tolist() == [0, 3, 3, 2]


def test_bad_labels_are_user_errors():
    fitted = FeatureSpec([Categorical("c")]).fit(FRAME)
    with pytest.raises(FeatureSpecError, match=r"label column 'label': 1 value\(s\) are null or not 0/1"):
        fitted.encode(FRAME.with_columns(pl.Series("label", [1, 0, 2, 0])))
    with pytest.raises(FeatureSpecError, match="must be 0/1"):
        fitted.encode(FRAME.with_columns(pl.col("c").alias("label")))


def test_spec_validation_and_dict_roundtrip():
    with pytest.raises(FeatureSpecError, match="unique"):
        FeatureSpec([Categorical("a"), Numeric("a")])
    with pytest.raises(FeatureSpecError, match="unified_rows"):
        FeatureSpec([Categorical("a", mapper="unified")])
    with pytest.raises(FeatureSpecError, match="mapper must be one of"):
        Categorical("a", mapper="bogus")
    with pytest.raises(FeatureSpecError, match=r"features\[0\].kind"):
        FeatureSpec.from_dict({"features": [{"name": "a", "kind": "weird"}]})
    spec = FeatureSpec([Categorical("c", mapper="modulo", num_rows=3), MultiHot("l", max_len=1), Numeric("n")])
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    fitted = again.fit(FRAME)
    assert fitted.encode(FRAME).batch().sparse["l"].lengths().tolist() == [1, 0, 0, 1]
