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

import os
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

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


def make_sharder(optimizer: str = "sgd", learning_rate: float = 0.01, eps: float = 1e-8,
                 fused_params: Mapping[str, Any] | None = None) -> Any:
    """The EBC sharder with a fused FBGEMM optimizer (``"sgd"``, ``"rowwise_adagrad"``, ``"adagrad"``), or with the
    FBGEMM kwargs ``fused_params`` as given (what :func:`recsparse.pipelines.optim.sharder_fused_params` maps the
    trainer's settings to)."""
    if fused_params is not None:
        return _sharder_cls()(fused_params=dict(fused_params))
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


def topology(device: torch.device, pg: Any = None) -> Any:
    """TorchRec ``Topology`` of this job: world size, ranks per host, and each rank's memory (GPU memory on CUDA,
    host memory split over the host's ranks on CPU) — what the planner fits the tables into."""
    from torchrec.distributed.planner import Topology

    world = dist.get_world_size(pg)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    kw: dict[str, Any] = {}
    if device.type == "cuda":
        kw["hbm_cap"] = torch.cuda.get_device_properties(device).total_memory
    else:
        kw["ddr_cap"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, local)
    return Topology(world_size=world, compute_device=device.type, local_world_size=local, **kw)


def plan_sharding(model: nn.Module, plan: str, sharder: Any, device: torch.device, pg: Any = None) -> Any:
    """A TorchRec ``ShardingPlan`` for every EBC table of ``model``: ``plan`` = ``table_wise`` | ``row_wise`` |
    ``column_wise`` | ``data_parallel`` (every table that way) or ``auto`` (TorchRec's ``EmbeddingShardingPlanner``
    chooses per table from the topology and the tables' sizes). Collective: rank 0 plans, every rank gets it."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints

    check_choice("plan", plan, ("auto",) + PLANS)
    pg = pg or dist.GroupMember.WORLD
    if plan == "column_wise":  # every table split into world-size column blocks (the planner would keep it whole)
        return _column_wise_plan(model, sharder, device, pg)
    tables = _ebc_tables(model)
    constraints = None if plan == "auto" else {t: ParameterConstraints(sharding_types=[plan]) for t in tables}
    planner = EmbeddingShardingPlanner(topology=topology(device, pg), constraints=constraints, debug=False)
    return planner.collective_plan(model, [sharder], pg)


def _column_wise_plan(model: nn.Module, sharder: Any, device: torch.device, pg: Any) -> Any:
    from torchrec import EmbeddingBagCollection
    from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan
    from torchrec.distributed.types import ShardingPlan

    _ebc_tables(model)  # raises if there is nothing to shard
    world = dist.get_world_size(pg)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return ShardingPlan({
        path: construct_module_sharding_plan(
            m, {c.name: column_wise(ranks=list(range(world))) for c in m.embedding_bag_configs()}, sharder=sharder,
            local_size=local, world_size=world, device_type=device.type)
        for path, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)})


def shard_model(model: nn.Module, plan: str = "table_wise", device: torch.device | str | None = None,
                optimizer: str = "sgd", learning_rate: float = 0.01, pg: Any = None) -> nn.Module:
    """Wrap ``model`` in ``DistributedModelParallel`` with every table sharded by ``plan`` (needs an initialised
    process group: gloo on CPU, NCCL on GPU). Returns the DMP module; call it exactly like ``model``."""
    from torchrec.distributed.model_parallel import DistributedModelParallel

    check_choice("plan", plan, PLANS)
    if not dist.is_initialized():
        raise RuntimeError("shard_model needs torch.distributed initialised (init_process_group('gloo' | 'nccl'))")
    pg = pg or dist.GroupMember.WORLD
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sharder = make_sharder(optimizer, learning_rate)
    sharding_plan = plan_sharding(model, plan, sharder, device, pg)
    return DistributedModelParallel(model, device=device, plan=sharding_plan, sharders=[sharder])


def share_mapper_state(model: nn.Module, src: int = 0) -> int:
    """Broadcast rank ``src``'s id-mapper state (GraphHash clusters, vocabularies, hash seeds) into every
    :class:`~recsparse.embeddings.MappedEmbeddingBagCollection` of ``model`` on every rank, so all ranks map ids
    identically whatever each fitted. Collective. Returns the number of collections shared."""
    from recsparse.embeddings.tables import MappedEmbeddingBagCollection

    mods = [m for m in model.modules() if isinstance(m, MappedEmbeddingBagCollection)]
    states = [m.get_extra_state() for m in mods]
    dist.broadcast_object_list(states, src=src)
    if dist.get_rank() != src:
        for m, st in zip(mods, states):
            m.set_extra_state(st)
    return len(mods)


def local_table_bytes(model: nn.Module) -> int:
    """Bytes of the table weights held by THIS rank (its shards; a replicated table counts whole)."""
    n = 0
    for name, st in model.state_dict().items():
        if ".embedding_bags." not in name:
            continue
        if isinstance(st, ShardedTensor):
            n += sum(sh.tensor.numel() * sh.tensor.element_size() for sh in st.local_shards())
        elif isinstance(st, torch.Tensor):
            n += st.numel() * st.element_size()
    return int(n)


@torch.no_grad()
def load_full_weights(dmp: nn.Module, full_state: Mapping[str, torch.Tensor]) -> int:
    """Copy unsharded table weights (``name -> [rows, dim]``, names as in the unsharded ``state_dict``) into this
    rank's local shards. Returns the number of shards written."""
    n = 0
    for name, st in dmp.state_dict().items():
        if name not in full_state:
            continue
        full = full_state[name]
        if not isinstance(st, ShardedTensor):  # a replicated (data-parallel) table
            st.copy_(full)
            n += 1
            continue
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
        if isinstance(st, ShardedTensor):
            out[name] = [(tuple(sh.metadata.shard_offsets[:2]), sh.tensor.detach().clone()) for sh in st.local_shards()]
    return out
