"""FBGEMM table-batched embeddings (TBE): all tables of a model in ONE fused kernel call, backward fused with the
optimizer update (no gradient tensor is ever materialised).

FBGEMM_GPU's ``SplitTableBatchedEmbeddingBagsCodegen`` (Khudia et al., "FBGEMM", 2021; Mudigere et al., "Software-
Hardware Co-design for Fast and Scalable Training of DLRM", ISCA 2022) — the kernel under TorchRec's sharded
tables. On CPU (``fbgemm-gpu-cpu``) it runs on the host with ``ComputeDevice.CPU``; with ``fbgemm-gpu`` and CUDA
the same module runs in HBM (``device='cuda'``; pass ``location='device'``).

Input layout (the TBE convention, shared with :class:`recsparse.kernels.fallback.EmbeddingBagTables`): ``indices``
``[L]`` — rows of every (table, bag) concatenated table-major; ``offsets`` ``[T·B + 1]`` — start of each bag, so bag
``(t, b)`` is ``indices[offsets[t·B + b] : offsets[t·B + b + 1]]``. Output ``[B, sum(dims)]`` (table t's pooled
vectors in columns ``D_offsets[t]:D_offsets[t+1]``).

Optimizers (fused, applied inside ``backward``):
* ``"sgd"`` — exact SGD (duplicate rows' gradients summed first): ``w -= lr · g``.
* ``"rowwise_adagrad"`` — one accumulator per row (Gupta et al., "Shampoo"/DLRM practice): ``s += mean(g²)``,
  ``w -= lr · g / (sqrt(s) + eps)``.
* ``"adagrad"`` — element-wise exact Adagrad.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsparse.types import check_choice, check_positive

OPTIMIZERS = ("sgd", "rowwise_adagrad", "adagrad")
POOLINGS = ("sum", "mean")
PRECISIONS = ("fp32", "fp16")


def fbgemm_available() -> bool:
    """True when an FBGEMM TBE build (``fbgemm-gpu`` or ``fbgemm-gpu-cpu``) imports."""
    try:
        import fbgemm_gpu.split_table_batched_embeddings_ops_training  # noqa: F401
    except Exception:  # noqa: BLE001 - any import/ABI failure means "not available"
        return False
    return True


@dataclass
class TBEConfig:
    """Fused optimizer and kernel options of a TBE module (validated on construction)."""

    optimizer: str = "sgd"
    learning_rate: float = 0.01
    eps: float = 1e-8
    pooling: str = "sum"
    weights_precision: str = "fp32"
    index_dtype: torch.dtype = torch.int64  # int32 halves index bandwidth; fbgemm accepts both

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("weights_precision", self.weights_precision, PRECISIONS)
        check_positive("learning_rate", self.learning_rate)
        check_positive("eps", self.eps)
        check_choice("index_dtype", self.index_dtype, (torch.int32, torch.int64))


class FusedTBE(nn.Module):
    """``T`` tables (``rows[t] × dims[t]``) in one FBGEMM TBE with a fused optimizer.

    ``forward(indices [L], offsets [T·B+1]) -> [B, sum(dims)]``. The weights live in the kernel's flat host buffer
    (``weights_host``, excluded from any outer optimizer: they are updated in ``backward``). ``weights(t)`` returns
    a ``[rows[t], dims[t]]`` *view* of table t.
    """

    def __init__(self, rows: list[int], dims: list[int], config: TBEConfig | None = None,
                 device: str | torch.device = "cpu", table_names: list[str] | None = None) -> None:
        super().__init__()
        if not fbgemm_available():
            raise ImportError("FBGEMM TBE is not installed (pip install fbgemm-gpu-cpu, or fbgemm-gpu for CUDA)")
        if len(rows) != len(dims) or not rows:
            raise ValueError(f"rows and dims must be non-empty and the same length, got {len(rows)} and {len(dims)}")
        for r, d in zip(rows, dims):
            check_positive("rows", r)
            check_positive("dims", d)
        from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (ComputeDevice, EmbeddingLocation,
                                                                          PoolingMode)
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

        self.config = config or TBEConfig()
        device = torch.device(device)
        cuda = device.type == "cuda"
        loc, comp = ((EmbeddingLocation.DEVICE, ComputeDevice.CUDA) if cuda
                     else (EmbeddingLocation.HOST, ComputeDevice.CPU))
        opt = {"sgd": EmbOptimType.EXACT_SGD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
               "adagrad": EmbOptimType.EXACT_ADAGRAD}[self.config.optimizer]
        self.rows, self.dims = list(map(int, rows)), list(map(int, dims))
        self.tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(r, d, loc, comp) for r, d in zip(self.rows, self.dims)],
            optimizer=opt, learning_rate=self.config.learning_rate, eps=self.config.eps,
            pooling_mode=PoolingMode.SUM if self.config.pooling == "sum" else PoolingMode.MEAN,
            weights_precision=SparseType.FP32 if self.config.weights_precision == "fp32" else SparseType.FP16,
            output_dtype=SparseType.FP32, device=device, table_names=table_names,
            embedding_table_index_type=self.config.index_dtype,
            embedding_table_offset_type=self.config.index_dtype,
        )
        self.d_offsets = [0]
        for d in self.dims:
            self.d_offsets.append(self.d_offsets[-1] + d)

    @property
    def num_tables(self) -> int:
        return len(self.rows)

    def weights(self, t: int) -> torch.Tensor:
        """View ``[rows[t], dims[t]]`` of table ``t`` (writes go to the kernel's storage)."""
        return self.tbe.split_embedding_weights()[t]

    @torch.no_grad()
    def set_weights(self, t: int, w: torch.Tensor) -> None:
        self.weights(t).copy_(w)

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        dt = self.config.index_dtype
        return self.tbe(indices.to(dt), offsets.to(dt))
