"""Lightning training past one process: TorchRec ``DistributedModelParallel`` (DMP) as a Lightning ``Strategy``.

:class:`TorchRecStrategy` is Lightning's DDP strategy with one change of wrapper: instead of ``DistributedDataParallel``
the LightningModule is wrapped by TorchRec's DMP, which replaces every ``EmbeddingBagCollection`` inside it (the
tables of :class:`~recsparse.embeddings.MappedEmbeddingBagCollection`, ``backend="torchrec"``) by a sharded one —
FBGEMM TBE shards updated by a fused optimizer that follows the trainer's settings
(:func:`recsparse.pipelines.optim.sharder_fused_params`) — and makes the rest (MLPs, item bias) data-parallel (DDP).
Everything else is Lightning's: the launcher (``devices=N`` spawns N processes, or one process per rank under
``torchrun``), the loops, the callbacks, the loggers.

Every task of the pipeline trains this way (ranking: MF, LightGCN, two-tower; CTR: the zoo). One global batch,
split: every rank reads the same global batch of ``trainer.batch_size`` examples and keeps the ``rank``-th contiguous
slice (:func:`local_batch`; the shared uniform negatives stay whole; CTR batches: :func:`local_range` +
:func:`slice_kjt`). Ranking losses gather the slices' vectors back (:func:`gather_rows`, gradient-carrying), so N
processes × B/N compute the loss of one process × B, in-batch negatives and logQ included; the CTR loss (pointwise
BCE) sums each slice and scales it so that the ranks' averaged gradients are those of the global mean. Either way the
update equals the single-process one up to float summation order.

Id-mappers fitted on data (GraphHash's clustering) are fitted ONCE: the ranking module is built after the process
group exists (Lightning's ``configure_model``), rank 0 fits and broadcasts the fitted mappers (:func:`fit_once`).

Plans (``plan=``): ``table_wise``, ``row_wise``, ``column_wise`` (every table that way) or ``auto``: TorchRec's
``EmbeddingShardingPlanner`` over the real topology (world size, device, memory per rank) and table sizes. The plan
and the table bytes on each rank are printed on rank 0 (:func:`plan_summary`).

Checkpoints (``*.ckpt`` folders): the tensors — sharded tables, the fused optimizer's sharded state, dense weights —
are written by every rank with ``torch.distributed.checkpoint`` (DCP); the rest of Lightning's checkpoint (loops,
callbacks, dense optimizer state, mapper state; identical on all ranks) by rank 0 into ``meta.pt``. A checkpoint
resumes at the same world size, and :func:`load_sharded_checkpoint` loads it into a one-process module (any plan,
any world size: DCP re-shards on load) for evaluation and serving.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import lightning.pytorch as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from recsparse.embeddings.sharding import (PLANS, load_full_weights, local_table_bytes, make_sharder, plan_sharding,
                                           share_mapper_state)
from recsparse.errors import ConfigError

T = TypeVar("T")
STRATEGY_PLANS = ("auto",) + tuple(p for p in PLANS if p != "data_parallel")
META = "meta.pt"


# ---- one global batch, split over ranks ---------------------------------------------------------------------
def local_batch(batch: Mapping[str, torch.Tensor], rank: int, world: int,
                shared: tuple[str, ...] = ("uniform",)) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s contiguous slice ``[rank·B/W, (rank+1)·B/W)`` of every per-example tensor of a global batch
    of ``B`` examples; ``shared`` keys (the batch's shared negatives) stay whole. ``B`` must divide by ``W``."""
    if world == 1:
        return dict(batch)
    out = {}
    for k, v in batch.items():
        if k in shared:
            out[k] = v
            continue
        if v.shape[0] % world:
            raise ConfigError(f"a batch of {v.shape[0]} examples does not split over {world} processes: make "
                              f"trainer.batch_size a multiple of trainer.devices")
        n = v.shape[0] // world
        out[k] = v[rank * n:(rank + 1) * n]
    return out


def local_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous rows ``[start, end)`` of ``n`` (``torch.tensor_split`` sizes: they differ by at most
    one, so a last partial batch splits too)."""
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


def slice_kjt(kjt: Any, start: int, end: int) -> Any:
    """Rows ``[start, end)`` of a ``KeyedJaggedTensor`` (stride ``B``, every key ``B`` lengths) as a KJT of stride
    ``end - start``, same keys."""
    from torchrec import KeyedJaggedTensor

    B, keys = kjt.stride(), kjt.keys()
    lengths = kjt.lengths().view(len(keys), B)
    ends = lengths.cumsum(1)
    key_start = torch.cat([ends.new_zeros(1), ends[:, -1].cumsum(0)[:-1]])  # where each key's values begin
    lo = key_start + (ends[:, start - 1] if start > 0 else 0)
    hi = key_start + (ends[:, end - 1] if end > 0 else 0)
    values = kjt.values()
    parts = [values[int(a):int(b)] for a, b in zip(lo, hi)]
    weights = kjt.weights_or_none()
    return KeyedJaggedTensor(keys=keys, values=torch.cat(parts) if parts else values[:0],
                             lengths=lengths[:, start:end].reshape(-1),
                             weights=None if weights is None else torch.cat([weights[int(a):int(b)]
                                                                            for a, b in zip(lo, hi)]),
                             stride=end - start)


def fit_once(fit: Callable[[], T]) -> T:
    """``fit()`` on rank 0 only, its result (pickled) broadcast to every other rank: an expensive, data-dependent fit
    (GraphHash's clustering of the interaction graph) runs once per job, and every rank holds the same result.
    Without a process group (one process) it is just ``fit()``."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return fit()
    box = [fit() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


class _GatherRows(torch.autograd.Function):
    """All-gather ``[n, ...]`` slices into ``[W·n, ...]`` (rank order); backward: the sum over ranks of the gradient
    of this rank's rows (every rank's loss may use every row)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.n, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """``[n, d]`` on each rank -> ``[W·n, d]`` in rank order, differentiable (identity without a process group)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


# ---- the strategy ---------------------------------------------------------------------------------------------
class TorchRecStrategy(DDPStrategy):
    """Lightning DDP with TorchRec DMP as the model wrapper (see the module docstring).

    ``plan``: ``auto`` | ``table_wise`` | ``row_wise`` | ``column_wise``. ``fused_params``: FBGEMM kwargs of the
    sharded tables' fused optimizer (default: the LightningModule's ``cfg.trainer`` via
    :func:`~recsparse.pipelines.optim.sharder_fused_params`). ``timeout_s``: how long a collective waits for a dead
    or stuck rank before the job fails (default 300 s; the torch default is 30 min)."""

    strategy_name = "torchrec"

    def __init__(self, plan: str = "auto", fused_params: dict[str, Any] | None = None, timeout_s: float = 300.0,
                 **kwargs: Any) -> None:
        if plan not in STRATEGY_PLANS:
            raise ConfigError(f"plan={plan!r}: choose one of {', '.join(STRATEGY_PLANS)}")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        super().__init__(timeout=timedelta(seconds=timeout_s), **kwargs)
        self.plan = plan
        self.fused_params = fused_params
        self.sharding_plan: Any = None
        self.plan_text = ""
        self.table_bytes_per_rank: list[int] = []
        self._dmp: nn.Module | None = None

    # -- set-up: shard once (fit, validate and test share the sharded module) --
    def setup(self, trainer: L.Trainer) -> None:
        assert self.accelerator is not None
        self.accelerator.setup(trainer)
        self.model_to_device()
        if self._dmp is None:
            self._dmp = self._shard(self.lightning_module)
        self.model = self._dmp
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()

    def _shard(self, module: L.LightningModule) -> nn.Module:
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.types import ShardingEnv

        share_mapper_state(module)  # rank 0's fitted id-mappers (GraphHash clusters ...) on every rank
        params = self.fused_params
        if params is None:
            from recsparse.pipelines.optim import sharder_fused_params

            params = sharder_fused_params(module.cfg.trainer, self.root_device)
        sharder = make_sharder(fused_params=params)
        # TorchRec copies an existing CPU table into its shards only off-CPU: keep references to the seeded tables
        # (no copy: DMP allocates new shard storage) and write each rank's rows in below. The full tables thus
        # exist on every rank until sharded (a meta-device init would avoid that; not done yet).
        full = {k: v.detach() for k, v in module.state_dict().items()
                if isinstance(v, torch.Tensor) and ".ebc.embedding_bags." in k}
        self.sharding_plan = plan_sharding(module, self.plan, sharder, self.root_device)
        dmp = DistributedModelParallel(module, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
                                       device=self.root_device, plan=self.sharding_plan, sharders=[sharder])
        load_full_weights(module, full)  # the module's own (seeded) init, whatever DMP allocated
        del full
        per_rank: list[int] = [0] * dist.get_world_size()
        dist.all_gather_object(per_rank, local_table_bytes(module))
        self.table_bytes_per_rank = per_rank
        self.plan_text = plan_summary(self.sharding_plan, per_rank)
        if self.global_rank == 0:
            print(self.plan_text, flush=True)
        return dmp

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # a checkpoint loads into the sharded module and its fused optimizer, which setup creates

    @property
    def fused_optimizer(self) -> Any:
        assert self._dmp is not None, "the strategy has not sharded a module yet"
        return self._dmp.fused_optimizer

    def teardown(self) -> None:
        super().teardown()  # keeps the sharded module: test after fit reuses it

    # -- checkpoints: sharded tensors via DCP (all ranks), the rest from rank 0 --
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | Path,
                        storage_options: Any | None = None) -> None:
        import torch.distributed.checkpoint as dcp

        path = Path(filepath)
        tensors, rest = _split_tensors(checkpoint["state_dict"])
        tmp = path.with_name(path.name + ".tmp")
        if self.global_rank == 0 and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier("ckpt-clean")
        dcp.save({"model": tensors, "fused": self.fused_optimizer.state_dict()}, checkpoint_id=str(tmp))
        if self.global_rank == 0:
            torch.save({**{k: v for k, v in checkpoint.items() if k != "state_dict"}, "state_dict_rest": rest},
                       tmp / META)
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.replace(tmp, path)
        self.barrier("ckpt-saved")

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        import torch.distributed.checkpoint as dcp

        path = Path(checkpoint_path)
        if not (path / META).is_file():
            raise ConfigError(f"{path} is not a sharded recsparse checkpoint (no {META}); it was not written by "
                              f"trainer.strategy=torchrec")
        meta = torch.load(path / META, weights_only=True)
        tensors, _ = _split_tensors(self.lightning_module.state_dict())
        target = {"model": tensors, "fused": self.fused_optimizer.state_dict()}
        dcp.load(target, checkpoint_id=str(path))
        self.fused_optimizer.load_state_dict(target["fused"])
        meta["state_dict"] = {**target["model"], **meta.pop("state_dict_rest")}
        return meta

    def remove_checkpoint(self, filepath: str | Path) -> None:
        if self.global_rank == 0:
            p = Path(filepath)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _split_tensors(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors incl. ShardedTensors -> DCP, everything else -> meta.pt)."""
    tensors, rest = {}, {}
    for k, v in state.items():
        (tensors if isinstance(v, torch.Tensor) else rest)[k] = v
    return tensors, rest


def plan_summary(plan: Any, per_rank: list[int]) -> str:
    """The sharding plan, one line per table (type, shard placement), and the table bytes held by each rank."""
    lines = ["TorchRec sharding plan:"]
    for module_path, params in plan.plan.items():
        for pname, ps in params.items():
            shards = ps.sharding_spec.shards if ps.sharding_spec is not None else []
            where = ", ".join(f"rank {s.placement.rank()}: rows {s.shard_offsets[0]}+{s.shard_sizes[0]} "
                              f"cols {s.shard_offsets[1]}+{s.shard_sizes[1]}" for s in shards)
            lines.append(f"  {module_path}.{pname}: {ps.sharding_type} [{where}]")
    lines.append("table bytes per rank: " + ", ".join(f"rank {r}: {b:,}" for r, b in enumerate(per_rank)))
    return "\n".join(lines)


def load_sharded_checkpoint(module: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :class:`TorchRecStrategy` (any plan, any world size) into an UNSHARDED module in
    this process (no process group needed): tables and dense weights via DCP re-sharding, mapper state from
    ``meta.pt`` (``weights_only``). Returns the rest of the checkpoint (epoch, global_step, hyper-parameters...)."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if not (path / META).is_file():
        raise ConfigError(f"{path} is not a sharded recsparse checkpoint (no {META})")
    meta = torch.load(path / META, weights_only=True)
    tensors, _ = _split_tensors(module.state_dict())
    target = {"model": tensors}
    dcp.load(target, checkpoint_id=str(path))
    module.load_state_dict({**target["model"], **meta.pop("state_dict_rest")})
    return meta


def strategy_devices(devices: int = 1) -> int:
    """Processes on this host: ``LOCAL_WORLD_SIZE`` under ``torchrun`` (Lightning then launches nothing), else
    ``devices`` (Lightning launches that many)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", devices))


def check_devices(devices: int, accelerator: str = "cpu", cores: int | None = None) -> None:
    """Reject, before anything launches, more processes than this machine can run: CUDA -> one per visible GPU;
    CPU -> one gloo process per core; under ``torchrun`` -> exactly its ``--nproc-per-node``."""
    if devices < 1:
        raise ConfigError(f"trainer.devices must be >= 1, got {devices}")
    if accelerator == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if devices > n:
            raise ConfigError(f"trainer.devices={devices} but {n} CUDA device(s) are visible (a CUDA build of torch "
                              f"and fbgemm-gpu: make install-gpu)")
    else:
        cores = cores or os.cpu_count() or 1
        if devices > cores:
            raise ConfigError(f"trainer.devices={devices} exceeds this machine's {cores} CPU cores (one gloo process "
                              f"per core at most); use torchrun across machines for more")
    local = os.environ.get("LOCAL_WORLD_SIZE")
    if local is not None and int(local) != devices:
        raise ConfigError(f"trainer.devices={devices} but torchrun started {local} process(es) on this node: make "
                          f"them equal (--nproc-per-node)")


def check_backends(model_backend: str, accelerator: str = "cpu") -> None:
    """The libraries a sharded run needs: TorchRec + FBGEMM, a model whose tables are TorchRec's, and the process-
    group backend (gloo on CPU, NCCL on CUDA)."""
    from recsparse.embeddings.tables import torchrec_available
    from recsparse.kernels.tbe import fbgemm_available

    if not (torchrec_available() and fbgemm_available()):
        raise ConfigError("trainer.strategy=torchrec needs torchrec and fbgemm-gpu(-cpu) installed (make install)")
    if model_backend not in ("torchrec", "auto"):
        raise ConfigError(f"trainer.strategy=torchrec shards TorchRec tables: set model.backend=torchrec (got "
                          f"{model_backend!r})")
    if accelerator == "cuda" and not dist.is_nccl_available():
        raise ConfigError("trainer.strategy=torchrec on CUDA needs NCCL (a CUDA build of torch: make install-gpu)")
    if accelerator != "cuda" and not dist.is_gloo_available():
        raise ConfigError("trainer.strategy=torchrec on CPU needs torch.distributed's gloo backend")


def strategy_from_config(cfg: Any) -> TorchRecStrategy | None:
    """The strategy a ``TrainConfig`` asks for (``trainer.strategy``, ``devices``, ``plan``, ``dist_timeout_s``), every
    setting checked before any process is launched; ``None`` for the default single process."""
    t = cfg.trainer
    if t.strategy != "torchrec":
        if t.devices != 1:
            raise ConfigError(f"trainer.devices={t.devices} needs trainer.strategy=torchrec (sharded tables, "
                              f"data-parallel dense part)")
        return None
    from recsparse.pipelines.optim import fused_optimizer

    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    check_backends(cfg.model.backend, accelerator)
    check_devices(t.devices, accelerator)
    if t.batch_size % t.devices:
        raise ConfigError(f"trainer.batch_size={t.batch_size} does not split over trainer.devices={t.devices}: make "
                          f"it a multiple")
    fused_optimizer(t, accelerator)  # the sharded tables' fused optimizer must follow the trainer
    return TorchRecStrategy(plan=t.plan, timeout_s=t.dist_timeout_s)
