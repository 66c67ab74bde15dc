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

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recsparse.types import check_choice, check_positive

OPTIMIZERS = ("sgd", "rowwise_adagrad", "adagrad")
POOLINGS = ("sum", "mean")
PRECISIONS = ("fp32", "fp16")
_MODES = {"sum": 0, "mean": 1}  # ATen embedding_bag mode codes


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
    table_groups: int = 1  # > 1: that many TBEs run forward + fused backward concurrently (one thread each)
    bounds_check: bool = True  # False skips FBGEMM's index bounds check (mappers already guarantee the range)

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("weights_precision", self.weights_precision, PRECISIONS)
        check_positive("learning_rate", self.learning_rate)
        check_positive("eps", self.eps)
        check_choice("index_dtype", self.index_dtype, (torch.int32, torch.int64))
        check_positive("table_groups", self.table_groups)


class _ParallelGroups(torch.autograd.Function):
    """Run the table groups' forward AND fused backward concurrently on a thread pool.

    The CPU autograd engine runs one graph on one thread, so a single TBE's backward (a random row read-modify-write,
    latency bound) uses one core. Independent table groups have independent graphs: each worker builds its group's
    graph in ``forward`` and runs ``torch.autograd.backward`` on it in ``backward`` (FBGEMM kernels release the GIL).
    """

    @staticmethod
    def forward(ctx: Any, module: "FusedTBE", anchor: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        n = len(module.groups)

        def run(g: int) -> torch.Tensor:
            with torch.enable_grad():
                return module.groups[g](inputs[2 * g], inputs[2 * g + 1])

        outs = list(module.pool().map(run, range(n)))
        ctx.outs = outs
        ctx.pool = module.pool()
        ctx.widths = [o.shape[1] for o in outs]
        return torch.cat([o.detach() for o in outs], dim=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grads = grad.split(ctx.widths, dim=1)
        outs = ctx.outs

        def run(g: int) -> None:
            torch.autograd.backward(outs[g], grads[g].contiguous())

        for f in [ctx.pool.submit(run, g) for g in range(len(outs))]:
            f.result()
        ctx.outs = None
        return (None, None) + (None,) * (2 * len(outs))


class FusedTBE(nn.Module):
    """``T`` tables (``rows[t] × dims[t]``) in FBGEMM TBE kernels with a fused optimizer.

    ``forward(indices [L], offsets [T·B+1]) -> [B, sum(dims)]``. The weights live in the kernels' flat host buffers
    (``weights_host``, excluded from any outer optimizer: they are updated in ``backward``). ``weights(t)`` returns
    a ``[rows[t], dims[t]]`` *view* of table t.

    ``config.table_groups = G > 1`` splits the tables into G contiguous groups (balanced by rows × dim), one TBE
    each, whose forward and fused backward run concurrently on G threads — numerically identical to one TBE (the
    tables are independent), and the measured win on a 2-core CPU (see benchmarks/embeddings_bench.py).
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
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (BoundsCheckMode, ComputeDevice,
                                                                          EmbeddingLocation, PoolingMode)
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

        self.config = config or TBEConfig()
        device = torch.device(device)
        cuda = device.type == "cuda"
        loc, comp = ((EmbeddingLocation.DEVICE, ComputeDevice.CUDA) if cuda
                     else (EmbeddingLocation.HOST, ComputeDevice.CPU))
        opt = {"sgd": EmbOptimType.EXACT_SGD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
               "adagrad": EmbOptimType.EXACT_ADAGRAD}[self.config.optimizer]
        self.rows, self.dims = list(map(int, rows)), list(map(int, dims))
        self.bounds = _balanced_groups([r * d for r, d in zip(self.rows, self.dims)], self.config.table_groups)
        self.groups = nn.ModuleList(SplitTableBatchedEmbeddingBagsCodegen(
            [(r, d, loc, comp) for r, d in zip(self.rows[a:b], self.dims[a:b])],
            optimizer=opt, learning_rate=self.config.learning_rate, eps=self.config.eps,
            pooling_mode=PoolingMode.SUM if self.config.pooling == "sum" else PoolingMode.MEAN,
            weights_precision=SparseType.FP32 if self.config.weights_precision == "fp32" else SparseType.FP16,
            output_dtype=SparseType.FP32, device=device,
            table_names=None if table_names is None else table_names[a:b],
            bounds_check_mode=BoundsCheckMode.WARNING if self.config.bounds_check else BoundsCheckMode.NONE,
            embedding_table_index_type=self.config.index_dtype,
            embedding_table_offset_type=self.config.index_dtype,
        ) for a, b in self.bounds)
        self.d_offsets = [0]
        for d in self.dims:
            self.d_offsets.append(self.d_offsets[-1] + d)
        self._pool: ThreadPoolExecutor | None = None
        self._views: dict[int, list[torch.Tensor]] = {}  # group -> its tables' weight views (see weights())
        self._where = [(g, t - a) for g, (a, b) in enumerate(self.bounds) for t in range(a, b)]  # t -> (group, local)
        self._host_fp32 = self._kernels_host_fp32()
        self._anchor = torch.zeros(0, requires_grad=True)  # gives _ParallelGroups a backward edge

    @property
    def tbe(self) -> nn.Module:
        """The single TBE kernel module (``table_groups == 1``)."""
        if len(self.groups) != 1:
            raise AttributeError("FusedTBE has several table groups; use .groups")
        return self.groups[0]

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=len(self.groups), thread_name_prefix="tbe")
        return self._pool

    def __getstate__(self) -> dict[str, Any]:  # thread pools do not pickle / deepcopy
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_views"] = {}
        return state

    def _apply(self, fn: Any, recurse: bool = True) -> "FusedTBE":
        self._views = {}  # .to()/.cuda()/... may replace the kernels' weight buffers
        out = super()._apply(fn, recurse)
        self._host_fp32 = self._kernels_host_fp32()
        return out

    def _kernels_host_fp32(self) -> bool:
        """fp32 weights in host memory: the no-grad paths read them with ATen ops."""
        return self.config.weights_precision == "fp32" and self.groups[0].current_device.type == "cpu"

    @property
    def num_tables(self) -> int:
        return len(self.rows)

    def _locate(self, t: int) -> tuple[int, int]:
        if not 0 <= t < self.num_tables:
            raise IndexError(f"table {t} out of range [0, {self.num_tables})")
        return self._where[t]

    def weights(self, t: int) -> torch.Tensor:
        """View ``[rows[t], dims[t]]`` of table ``t`` (writes go to the kernel's storage)."""
        g, local = self._locate(t)
        views = self._views.get(g)
        if views is None:
            # split_embedding_weights() rebuilds every table's view (a Python loop over tensor-valued placements):
            # tens of µs, as long as a whole 4k-id gather. The views stay valid while the kernel's buffers are the
            # same tensors (load_state_dict copies into them); _apply (.to(), .cuda(), ...) and pickling drop them.
            views = self._views[g] = self.groups[g].split_embedding_weights()
        return views[local]

    @torch.no_grad()
    def set_weights(self, t: int, w: torch.Tensor) -> None:
        self.weights(t).copy_(w)

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and self._host_fp32:
            return self._forward_inference(indices, offsets)
        dt = self.config.index_dtype
        indices, offsets = indices.to(dt), offsets.to(dt)
        if len(self.groups) == 1:
            return self.groups[0](indices, offsets)
        B = (offsets.numel() - 1) // self.num_tables
        inputs: list[torch.Tensor] = []
        for a, b in self.bounds:  # each group's slice of the table-major TBE layout, re-based to 0
            lo, hi = offsets[a * B], offsets[b * B]
            inputs += [indices[lo:hi], offsets[a * B:b * B + 1] - lo]
        return _ParallelGroups.apply(self, self._anchor, *inputs)

    def lookup(self, t: int, rows: torch.Tensor) -> torch.Tensor:
        """``rows [N, k]`` of table ``t`` -> ``[N, dims[t]]``: each line's k rows summed (one bag per line).

        With grad: one call of the kernel that holds table t — only its table group's tables (the other tables'
        bags empty), so with one table per group nothing else is written, sliced or scattered back; backward is
        the fused update. Without grad (host fp32): a plain ATen gather from the kernel's storage (threaded, and
        no TBE set-up, which costs more than a pooling-1 lookup of a few thousand rows)."""
        N, k = rows.shape
        if not torch.is_grad_enabled() and self._host_fp32:
            w = self.weights(t)
            if k == 1:
                return w.index_select(0, rows.view(-1))
            return F.embedding_bag(rows, w, mode="sum")  # 2-D input: fixed bags of k rows
        g, local = self._locate(t)
        a, b = self.bounds[g]
        dt = self.config.index_dtype
        off = torch.zeros((b - a) * N + 1, dtype=dt, device=rows.device)
        off[local * N + 1:(local + 1) * N + 1] = torch.arange(k, (N + 1) * k, k, dtype=dt, device=rows.device)
        off[(local + 1) * N + 1:] = N * k
        out = self.groups[g](rows.reshape(-1).to(dt), off)
        if b - a == 1:
            return out
        d0 = self.d_offsets[t] - self.d_offsets[a]
        return out[:, d0:d0 + self.dims[t]]

    def _forward_inference(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """No-grad forward on the host: ATen's ``embedding_bag`` over the kernels' own weight storage, table by table.

        The fbgemm-gpu-cpu wheels are built without OpenMP, so the CPU TBE forward runs on ONE thread whatever
        ``torch.get_num_threads()`` says (its ``at::parallel_for`` compiles to a serial loop); ATen's embedding_bag
        runs the same FBGEMM SpMDM gather split over the intra-op threads. Same rows, same sums, no copy."""
        B = (offsets.numel() - 1) // self.num_tables
        if B == 0:
            return torch.zeros(0, self.d_offsets[-1], device=indices.device)
        offsets = offsets.to(indices.dtype)
        starts = offsets[::B].tolist()  # each table's first index, then the end
        mode = _MODES[self.config.pooling]
        outs = []
        for t in range(self.num_tables):
            o, lo = offsets[t * B:(t + 1) * B + 1], starts[t]
            outs.append(torch.embedding_bag(self.weights(t), indices[lo:starts[t + 1]], o - lo if lo else o, False,
                                            mode, False, None, True)[0])
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _balanced_groups(costs: list[int], groups: int) -> list[tuple[int, int]]:
    """Split ``range(len(costs))`` into <= ``groups`` contiguous, non-empty ranges of similar total cost."""
    groups = max(1, min(groups, len(costs)))
    total, bounds, start, acc = sum(costs), [], 0, 0
    for t, c in enumerate(costs):
        acc += c
        left_groups = groups - len(bounds) - 1
        if left_groups and acc >= total * (len(bounds) + 1) / groups and len(costs) - t - 1 >= left_groups:
            bounds.append((start, t + 1))
            start = t + 1
    bounds.append((start, len(costs)))
    return bounds
