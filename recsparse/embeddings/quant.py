"""Inference tables: int8 / int4 / int2 row-wise quantized copies of a trained
:class:`~recsparse.embeddings.tables.MappedEmbeddingBagCollection` (``backend="torchrec"``).

TorchRec's ``quantize_embeddings`` swaps the float ``EmbeddingBagCollection`` for ``torchrec.quant``'s, backed by
FBGEMM's ``IntNBitTableBatchedEmbeddingBagsCodegen`` (runs on CPU). Each row is stored as ``dim·bits/8`` bytes of
codes plus an fp16 scale and bias (row-wise asymmetric quantisation, Guan et al., "Post-Training 4-bit Quantization
on Embedding Tables", 2019): ``w ≈ scale·q + bias``. int8 is ~3.8× smaller than fp32 at dim 64, int4 ~7×.
Mappers are unchanged, so the quantized module takes the same raw-id KJT and returns the same KeyedTensor.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from recsparse.embeddings.tables import MappedEmbeddingBagCollection
from recsparse.types import check_choice

DTYPES = {"int8": torch.qint8, "int4": torch.quint4x2, "int2": torch.quint2x4}


def quantize_tables(module: MappedEmbeddingBagCollection, dtype: str = "int8",
                    row_alignment: int = 1) -> MappedEmbeddingBagCollection:
    """A quantized copy of ``module`` (the original is untouched). ``row_alignment=1`` packs rows tightly (the CPU
    kernel does not need the GPU's 16-byte alignment). A ``torch`` / ``fbgemm`` module is first copied onto a
    ``torchrec`` one (same features and mappers, same weights)."""
    check_choice("dtype", dtype, DTYPES)
    if module.is_sharded:
        raise ValueError("quantize_tables needs an unsharded module")
    import torchrec
    from torchrec.inference.modules import quantize_embeddings
    from torchrec.quant.embedding_modules import quant_prep_customize_row_alignment

    if module.backend == "torchrec":
        q = copy.deepcopy(module)
    else:
        q = MappedEmbeddingBagCollection(copy.deepcopy(module.features), backend="torchrec")
        with torch.no_grad():
            for f in module.features:
                q.table_weight(f.name).copy_(module.table_weight(f.name).detach())
    quant_prep_customize_row_alignment(q, [torchrec.EmbeddingBagCollection], row_alignment)
    quantize_embeddings(q, dtype=DTYPES[dtype], inplace=True, output_dtype=torch.float)
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode

    for kernel in _intn_tbes(q):  # rows come from the mappers, in range by construction (as on the fp32 path)
        kernel.bounds_check_mode_int = BoundsCheckMode.NONE.value
    q.quant_dtype = dtype
    return q.eval()


def _intn_tbes(module: MappedEmbeddingBagCollection) -> list[Any]:
    return list(getattr(module.ebc, "_emb_modules", []))


def table_bytes(module: MappedEmbeddingBagCollection) -> int:
    """Bytes of the table storage: fp32 weights, or quantized codes + fp16 scale/bias of every row."""
    tbes = _intn_tbes(module)
    if not tbes:
        return sum(module.table_weight(n).numel() * module.table_weight(n).element_size() for n in module.feature_names)
    total = 0
    for tbe in tbes:
        for w, sb in tbe.split_embedding_weights():
            total += w.numel() * w.element_size() + (0 if sb is None else sb.numel() * sb.element_size())
    return total


@torch.no_grad()
def dequantized_rows(module: MappedEmbeddingBagCollection, feature: str) -> torch.Tensor:
    """Every row of a (quantized) feature table as fp32 ``[num_rows, dim]``, read through the lookup kernel."""
    from torchrec import KeyedJaggedTensor

    rows = module.mapper(feature).num_rows
    lengths = torch.zeros(len(module.feature_names) * rows, dtype=torch.long)
    t = module.feature_names.index(feature)
    lengths[t * rows:(t + 1) * rows] = 1
    kjt = KeyedJaggedTensor(keys=module.feature_names, values=torch.arange(rows), lengths=lengths)
    out = module.ebc(kjt)
    return out[feature].float()


@torch.no_grad()
def quantization_error(fp32: MappedEmbeddingBagCollection, quant: MappedEmbeddingBagCollection,
                       batch: Any = None) -> dict[str, float]:
    """Max |w_q - w| over every table element, and (if ``batch`` is a raw-id KJT) max |pooled_q - pooled|."""
    err = {"max_abs_err_weight": max(float((dequantized_rows(quant, n) - fp32.table_weight(n).detach()).abs().max())
                                     for n in fp32.feature_names)}
    if batch is not None:
        err["max_abs_err_pooled"] = float((quant(batch).values() - fp32(batch).values()).abs().max())
    return err
