"""Sharding recsparse tables with TorchRec ``DistributedModelParallel`` (DMP): table-wise and row-wise plans.

A model holding a :class:`~recsparse.embeddings.tables.MappedEmbeddingBagCollection` (``backend="torchrec"``) is
wrapped by :func:`shard_model`; DMP finds the inner ``EmbeddingBagCollection`` and replaces it by a sharded one whose
shards are FBGEMM TBE kernels with a *fused* optimizer (``optimizer`` / ``learning_rate`` below); the rest of the
model becomes data-parallel (DDP). The id-mappers run before the lookup on each rank's local batch, so sharding
never sees raw ids. Plans (Mudigere et al., ISCA 2022; TorchRec docs):

* ``"table_wise"`` — each table lives whole on one rank (pooled embeddings exchanged by all-to-all).
* ``"row_wise"`` — every table is split into contiguous row blocks, one per rank (ids bucketised to their owner,
  partial pools reduce-scattered). TorchRec only offers row-wise for CUDA; on CPU/gloo :class:`CPUShardingEBCSharder`
  enables it (gloo handles the collectives; our 2-process test shows it is exact).

Gradients: TorchRec divides embedding gradients by the world size (``comm_ops.set_gradient_division``), so a
sharded step equals an unsharded step on the *mean* of the ranks' losses — the same convention as DDP.

Multi-GPU / multi-node recipe (NCCL; same code, ``device=cuda``)::

    # one process per GPU; on each node (node_rank 0..N-1):
    torchrun --nnodes=$N --nproc-per-node=8 --node-rank=$NODE_RANK \\
             --rdzv-backend=c10d --rdzv-endpoint=$MASTER_HOST:29500  train.py
    # in train.py
    dist.init_process_group("nccl"); torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    model = MyModel(MappedEmbeddingBagCollection(features, backend="torchrec", device="meta"))
    dmp = shard_model(model, plan="row_wise", device=torch.device("cuda"), optimizer="rowwise_adagrad")
    # each rank feeds its local KJT batch; dense params use a normal optimizer over dmp's non-fused params

(With ``fbgemm-gpu`` installed the sharder picks the CUDA TBE kernels; building the tables on ``device="meta"``
avoids materialising full tables on every rank.)
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn

from recsparse.types import check_choice

PLANS = ("table_wise", "row_wise", "column_wise", "data_parallel")


def _sharder_cls() -> type:
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    class CPUShardingEBCSharder(EmbeddingBagCollectionSharder):
        """TorchRec's EBC sharder with row-wise also allowed on CPU (gloo), which upstream lists for CUDA only."""

        def sharding_types(self, compute_device_type: str) -> list[str]:
            types = list(super().sharding_types(compute_device_type))
            for extra in ("row_wise", "table_row_wise"):
                if extra not in types:
                    types.append(extra)
            return types

    return CPUShardingEBCSharder


def make_sharder(optimizer: str = "sgd", learning_rate: float = 0.01, eps: float = 1e-8) -> Any:
    """The EBC sharder with a fused FBGEMM optimizer (``"sgd"``, ``"rowwise_adagrad"``, ``"adagrad"``)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    check_choice("optimizer", optimizer, ("sgd", "rowwise_adagrad", "adagrad"))
    opt = {"sgd": EmbOptimType.EXACT_SGD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
           "adagrad": EmbOptimType.EXACT_ADAGRAD}[optimizer]
    return _sharder_cls()(fused_params={"optimizer": opt, "learning_rate": learning_rate, "eps": eps})


def _ebc_tables(model: nn.Module) -> list[str]:
    from torchrec import EmbeddingBagCollection

    names: list[str] = []
    for m in model.modules():
        if isinstance(m, EmbeddingBagCollection):
            names += [c.name for c in m.embedding_bag_configs()]
    if not names:
        raise ValueError("model has no torchrec EmbeddingBagCollection to shard (use backend='torchrec')")
    return names


def shard_model(model: nn.Module, plan: str = "table_wise", device: torch.device | str | None = None,
                optimizer: str = "sgd", learning_rate: float = 0.01, pg: Any = None) -> nn.Module:
    """Wrap ``model`` in ``DistributedModelParallel`` with every table sharded by ``plan`` (needs an initialised
    process group: gloo on CPU, NCCL on GPU). Returns the DMP module; call it exactly like ``model``."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    check_choice("plan", plan, PLANS)
    if not dist.is_initialized():
        raise RuntimeError("shard_model needs torch.distributed initialised (init_process_group('gloo' | 'nccl'))")
    pg = pg or dist.GroupMember.WORLD
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sharder = make_sharder(optimizer, learning_rate)
    constraints = {t: ParameterConstraints(sharding_types=[plan]) for t in _ebc_tables(model)}
    topology = Topology(world_size=dist.get_world_size(pg), compute_device=device.type)
    sharding_plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(
        model, [sharder], pg)
    return DistributedModelParallel(model, device=device, plan=sharding_plan, sharders=[sharder])


@torch.no_grad()
def load_full_weights(dmp: nn.Module, full_state: Mapping[str, torch.Tensor]) -> int:
    """Copy unsharded table weights (``name -> [rows, dim]``, names as in the unsharded ``state_dict``) into this
    rank's local shards. Returns the number of shards written."""
    n = 0
    for name, st in dmp.state_dict().items():
        if not hasattr(st, "local_shards") or name not in full_state:
            continue
        full = full_state[name]
        for sh in st.local_shards():
            (r0, c0), (r, c) = sh.metadata.shard_offsets, sh.metadata.shard_sizes
            sh.tensor.copy_(full[r0:r0 + r, c0:c0 + c])
            n += 1
    return n


@torch.no_grad()
def local_shards(dmp: nn.Module) -> dict[str, list[tuple[tuple[int, int], torch.Tensor]]]:
    """``table weight name -> [((row_offset, col_offset), shard tensor), ...]`` for this rank (for checks/exports)."""
    out: dict[str, list[tuple[tuple[int, int], torch.Tensor]]] = {}
    for name, st in dmp.state_dict().items():
        if hasattr(st, "local_shards"):
            out[name] = [(tuple(sh.metadata.shard_offsets[:2]), sh.tensor.detach().clone()) for sh in st.local_shards()]
    return out
