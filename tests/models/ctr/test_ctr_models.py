"""CTR zoo: shapes, gradients reach the tables, interactions against hand computations, unified + hashing paths."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from recsparse.embeddings.features import Categorical, FeatureSpec, MultiHot, Numeric
from recsparse.models.ctr import CTR_MODELS, build_ctr_model
from tests.conftest import dataset_path


@pytest.fixture(scope="module")
def adult_small():
    dataset_path("adult")
    from recsparse.data.ctr import load_ctr

    ds = load_ctr("adult")
    fitted = ds.spec.fit(ds.train)
    return fitted, fitted.encode(ds.valid.head(64)).batch()


@pytest.mark.parametrize("name", sorted(CTR_MODELS))
def test_every_model_forward_backward_on_real_adult(adult_small, name):
    fitted, batch = adult_small
    torch.manual_seed(0)
    model = build_ctr_model(name, fitted, dim=8)
    logits = model(batch.sparse, batch.dense)
    assert logits.shape == (64,) and torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.label).backward()
    tables = [p for n, p in model.named_parameters() if "embedding_bags" in n or "bags." in n]
    assert tables and all(p.grad is not None and p.grad.abs().sum() > 0 for p in tables)
    assert model.table_bytes() > 0 and model.num_parameters() > 0


def _tiny():
    frame = pl.DataFrame({"a": ["x", "y", "z", "x"], "b": [3, 1, 2, 2], "g": [["p"], ["q", "p"], [], ["q"]],
                          "n": [0.5, 1.0, 2.0, 4.0], "label": [1, 0, 1, 0]})
    spec = FeatureSpec([Categorical("a"), Categorical("b"), MultiHot("g", pooling="sum"), Numeric("n")])
    fitted = spec.fit(frame)
    return fitted, fitted.encode(frame).batch()


def test_fm_is_the_sum_of_pairwise_inner_products():
    fitted, b = _tiny()
    model = build_ctr_model("fm", fitted, dim=4)
    emb = model.embed(b.sparse)  # [B, 3, 4]
    pairs = sum((emb[:, i] * emb[:, j]).sum(-1) for i in range(3) for j in range(i + 1, 3))
    assert torch.allclose(model.interact(emb, b.dense), pairs, atol=1e-6)


def test_lr_is_the_first_order_sum():
    fitted, b = _tiny()
    model = build_ctr_model("lr", fitted)
    w = model.linear.weights(b.sparse)[..., 0]  # [B, 3]
    expect = w.sum(1) + model.linear.dense(b.dense).squeeze(-1)
    assert torch.allclose(model(b.sparse, b.dense), expect)
    assert model.embeddings is None


def test_dlrm_dot_interaction_and_no_dense_variant():
    fitted, b = _tiny()
    model = build_ctr_model("dlrm", fitted, dim=4)
    assert model(b.sparse, b.dense).shape == (4,)
    frame = pl.DataFrame({"a": ["x", "y"], "b": [1, 2], "label": [0, 1]})
    f2 = FeatureSpec([Categorical("a"), Categorical("b")]).fit(frame)
    m2 = build_ctr_model("dlrm", f2, dim=4)
    bb = f2.encode(frame).batch()
    assert bb.dense.shape == (2, 0) and m2(bb.sparse, bb.dense).shape == (2,)


def test_dcn_v2_low_rank_mixture_and_parallel():
    from torchrec.modules.crossnet import CrossNet, LowRankMixtureCrossNet

    fitted, b = _tiny()
    full = build_ctr_model("dcn_v2", fitted, dim=4)
    mix = build_ctr_model("dcn_v2", fitted, dim=4, low_rank=2, num_experts=3, structure="parallel")
    assert isinstance(full.cross, CrossNet) and isinstance(mix.cross, LowRankMixtureCrossNet)
    assert mix(b.sparse, b.dense).shape == (4,)
    with pytest.raises(ValueError, match="structure"):
        build_ctr_model("dcn_v2", fitted, structure="diagonal")
    with pytest.raises(ValueError, match="CTR model must be one of"):
        build_ctr_model("xdeepfm", fitted)


def test_unified_and_mixed_tables():
    frame = pl.DataFrame({"a": ["x", "y", "z", "x"], "b": [3, 1, 2, 2], "c": ["u", "v", "u", "w"],
                          "label": [1, 0, 1, 0]})
    spec = FeatureSpec([Categorical("a", mapper="unified"), Categorical("b", mapper="modulo", num_rows=2),
                        Categorical("c", mapper="unified")], unified_rows=5)
    fitted = spec.fit(frame)
    model = build_ctr_model("deepfm", fitted, dim=4)
    b = fitted.encode(frame).batch()
    emb = model.embed(b.sparse)
    assert emb.shape == (4, 3, 4)
    ue = model.embeddings.unified
    assert ue is not None and ue.weight.shape == (5, 4)
    # feature order is the spec's: column 0 is 'a' from the shared table
    assert torch.allclose(emb[:, 0], ue.embed("a", b.sparse["a"].values()))
    assert torch.allclose(emb[:, 1], model.embeddings.mapped.embed("b", b.sparse["b"].values()))
    # bytes: the shared 5x4 table + the first-order twin (5x1) + b's tables (2x4, 2x1)
    assert model.table_bytes() == 4 * (5 * 4 + 5 * 1 + 2 * 4 + 2 * 1)


def test_unified_chunks_keep_the_parameter_budget_and_concatenate_salted_rows():
    """unified_chunks=c: each feature concatenates c salted lookups of width dim/c from a c·rows table — the same
    parameters as one lookup of width dim (the budget is in rows of the model's dim); the first-order (dim 1)
    table keeps one lookup per feature; the Polars view of the spec gives the same c rows per id."""
    frame = pl.DataFrame({"a": ["x", "y", "z", "x", "q"], "c": ["u", "v", "u", "w", "v"], "label": [1, 0, 1, 0, 1]})
    spec = FeatureSpec([Categorical("a", mapper="unified"), Categorical("c", mapper="unified")], unified_rows=6)
    fitted1 = spec.fit(frame)
    from dataclasses import replace

    fitted4 = replace(spec, unified_chunks=4).fit(frame)
    m1, m4 = build_ctr_model("deepfm", fitted1, dim=8), build_ctr_model("deepfm", fitted4, dim=8)
    ue = m4.embeddings.unified
    assert ue.weight.shape == (24, 2) and m1.embeddings.unified.weight.shape == (6, 8)
    assert m4.table_bytes() == m1.table_bytes() == 4 * (6 * 8 + 6 * 1)
    assert m4.linear.weights.unified.weight.shape == (6, 1)
    b = fitted4.encode(frame).batch()
    emb = m4.embed(b.sparse)
    ids = b.sparse["a"].values()
    rows = fitted4.mappers["a"].transform(ids)  # [N, 4]: the spec's (Polars-side) mapper
    assert torch.equal(rows, ue.mappers["a"].transform(ids))
    assert torch.allclose(emb[:, 0], ue.weight[rows].reshape(len(ids), 8))
    polars_rows = fitted4.rows_frame(frame).collect()["a"].to_list()
    assert polars_rows == rows.tolist()
    with pytest.raises(ValueError, match="unified_chunks=3 must divide"):
        build_ctr_model("deepfm", replace(spec, unified_chunks=3).fit(frame), dim=8)


def test_unified_chunks_roundtrip_and_validation():
    from recsparse.embeddings.features import FeatureSpecError

    spec = FeatureSpec([Categorical("a", mapper="unified")], unified_rows=6, unified_chunks=2)
    assert FeatureSpec.from_dict(spec.to_dict()).unified_chunks == 2
    with pytest.raises(FeatureSpecError, match="unified_chunks"):
        FeatureSpec([Categorical("a", mapper="unified")], unified_rows=6, unified_chunks=0)
