"""int8 / int4 / int2 inference tables: smaller storage, bounded error (row-wise scale/bias: |err| <= range/(2^b-1)
/ 2 per element, fp16 scale adds a little), same mapper semantics; the fp32 module is untouched."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from torchrec import KeyedJaggedTensor

from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection
from recsparse.embeddings.quant import dequantized_rows, quantization_error, quantize_tables, table_bytes


@pytest.fixture(scope="module")
def model_and_batch(gowalla):
    m = MappedEmbeddingBagCollection(
        [FeatureConfig("user", gowalla.num_users, 64, "full"),
         FeatureConfig("item", gowalla.num_items, 64, "universal", num_rows=4096, mapper_kwargs={"num_hashes": 2})],
        backend="torchrec", init_std=0.1, seed=0)
    tr = gowalla.train.head(64)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"], values=torch.tensor(pl.concat([tr["user_id"], tr["item_id"]]).to_numpy()),
        lengths=torch.tensor([4] * 16 + [4] * 16))
    return m, kjt


@pytest.mark.parametrize("dtype,bits,max_ratio", [("int8", 8, 0.27), ("int4", 4, 0.15), ("int2", 2, 0.09)])
def test_quantized_tables(model_and_batch, dtype, bits, max_ratio):
    m, kjt = model_and_batch
    before = m.table_weight("user").detach().clone()
    q = quantize_tables(m, dtype)
    assert torch.equal(m.table_weight("user").detach(), before)  # original untouched
    ratio = table_bytes(q) / table_bytes(m)
    expected = (64 * bits / 8 + 4) / (64 * 4)  # codes + fp16 scale & bias per row
    assert ratio == pytest.approx(expected, rel=1e-3) and ratio < max_ratio
    err = quantization_error(m, q, kjt)
    # per-element bound from the row range: half a quantisation step (+ fp16 rounding of scale/bias)
    w = m.table_weight("item").detach()
    step = (w.max(1).values - w.min(1).values) / (2**bits - 1)
    deq = dequantized_rows(q, "item")
    assert ((deq - w).abs() <= step.unsqueeze(1) / 2 + 2e-3).all()
    assert err["max_abs_err_weight"] > 0 and err["max_abs_err_pooled"] < 16 * err["max_abs_err_weight"] + 1e-6
    assert q(kjt).values().shape == m(kjt).values().shape


@pytest.mark.parametrize("backend", ["torch", "fbgemm"])
def test_quantize_any_backend_via_a_torchrec_copy(backend):
    m = MappedEmbeddingBagCollection([FeatureConfig("a", 10, 8), FeatureConfig("b", 100, 16, "modulo", num_rows=7)],
                                     backend=backend, init_std=0.1, seed=0)
    q = quantize_tables(m, "int8")
    assert m.backend == backend  # the original is untouched
    for n in ("a", "b"):
        w = m.table_weight(n).detach()
        assert (dequantized_rows(q, n) - w).abs().max() < 0.01 * w.abs().max()


def test_quantize_errors():
    with pytest.raises(ValueError, match="dtype"):
        quantize_tables(MappedEmbeddingBagCollection([FeatureConfig("a", 10, 8)]), "int3")


def test_quantized_forward_calls_the_kernel_directly(model_and_batch):
    """The quantized module's forward runs its one IntN kernel on the row KJT and returns what TorchRec's quantized
    EBC returns."""
    m, kjt = model_and_batch
    q = quantize_tables(m, "int8")
    kernel = q.quantized_kernel()
    assert kernel is not None and kernel is q.ebc._emb_modules[0]
    assert m.quantized_kernel() is None  # fp32 torchrec module: the EBC path
    mapped, _ = q.map_kjt(kjt)
    with torch.no_grad():
        torch.testing.assert_close(q(kjt).values(), q.ebc(mapped).values(), rtol=0, atol=0)
