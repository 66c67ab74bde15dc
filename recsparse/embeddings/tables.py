"""Mapped embedding tables: TorchRec ``EmbeddingBagCollection`` (or FBGEMM TBE, or plain ``nn.EmbeddingBag``) behind
per-feature id-mappers, so a model never sees which compression method is used.

``KeyedJaggedTensor`` of RAW ids in -> every feature's values go through its :class:`~recsparse.types.IdMapper`
(``[L] -> [L, k]``, flattened, jagged lengths multiplied by ``k``) -> one pooled lookup of all tables ->
``KeyedTensor`` ``[B, sum(dims)]`` out. ``k > 1`` rows of an id (multi-hash, QR, DoubleGraphHash) are summed by the
bag itself; ``pooling='mean'`` averages over *ids* (sum-pool, then divide by the raw lengths), identical on every
backend.

Backends (``backend=``):

* ``"torchrec"`` — ``torchrec.EmbeddingBagCollection`` (one ``EmbeddingBagConfig`` per feature, table
  ``t_<feature>``). Dense gradients on ``ebc.embedding_bags[t].weight``; under ``DistributedModelParallel``
  (:mod:`recsparse.embeddings.sharding`) TorchRec swaps in FBGEMM TBE with a fused optimizer.
* ``"fbgemm"`` — :class:`recsparse.kernels.FusedTBE`: all tables in one FBGEMM kernel, the optimizer
  (``tbe_config``: SGD / row-wise Adagrad / Adagrad, learning rate) fused into ``backward``. Its weights are updated
  by the kernel: leave them out of the model's optimizer (``dense_parameters()`` gives the rest of a model).
* ``"torch"`` — ``nn.EmbeddingBag(mode='sum')`` per feature, dense gradients (``sparse=True`` optional).
* ``"auto"`` — ``"torchrec"`` when TorchRec imports, else ``"torch"``.

Mapper state travels inside ``state_dict()`` (``_extra_state``: plain ints/strings/tensors), so
``torch.save(m.state_dict())`` + ``torch.load(..., weights_only=True)`` restores tables and mappers together.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsparse.embeddings.mappers import MapperStateError, build_mapper, mapper_from_state
from recsparse.kernels.tbe import TBEConfig, fbgemm_available
from recsparse.types import IdMapper, check_choice, check_positive

BACKENDS = ("auto", "torchrec", "fbgemm", "torch")


def torchrec_available() -> bool:
    try:
        import torchrec  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def resolve_backend(backend: str) -> str:
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "torchrec" if torchrec_available() else "torch"
    if backend == "torchrec" and not torchrec_available():
        raise ImportError("backend='torchrec' needs torchrec (scripts/install.sh installs it)")
    if backend == "fbgemm" and not fbgemm_available():
        raise ImportError("backend='fbgemm' needs fbgemm-gpu-cpu (or fbgemm-gpu)")
    return backend


@dataclass
class FeatureConfig:
    """One sparse feature and its table.

    ``mapper``: an :class:`~recsparse.types.IdMapper` instance (fitted already — GraphHash, Full-with-vocab,
    FrequencyHash need ``fit``) or a registry name (``"full"``, ``"modulo"``, ``"universal"``, ``"qr"`` ...) built
    with ``num_rows`` and ``mapper_kwargs``. ``pooling``: ``'sum'`` or ``'mean'`` over the ids of a bag.
    ``table``: name of a table shared with other features (TorchRec's several ``feature_names`` on one
    ``EmbeddingBagConfig``; same rows and dim required) — default: the feature's own table ``t_<name>``.
    """

    name: str
    num_ids: int
    embedding_dim: int
    mapper: Any = "full"
    pooling: str = "sum"
    num_rows: int | None = None
    mapper_kwargs: dict[str, Any] = field(default_factory=dict)
    table: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.table is not None and (not isinstance(self.table, str) or not self.table):
            raise ValueError(f"table must be a non-empty string or None, got {self.table!r}")
        check_positive("num_ids", self.num_ids)
        check_positive("embedding_dim", self.embedding_dim)
        check_choice("pooling", self.pooling, ("sum", "mean"))
        if isinstance(self.mapper, str):
            self.mapper = build_mapper(self.mapper, self.num_ids, self.num_rows, **self.mapper_kwargs)
        elif not isinstance(self.mapper, IdMapper):
            raise ValueError(f"mapper must be an IdMapper or a registered name, got {type(self.mapper).__name__}")

    @property
    def table_name(self) -> str:
        return self.table if self.table is not None else f"t_{self.name}"


def map_kjt(features: Sequence[FeatureConfig], kjt: Any) -> tuple[Any, torch.Tensor]:
    """Raw-id KJT (keys ⊇ feature names, stride B) -> (row KJT with ``features``' key order, each feature's values
    through its mapper ``[L] -> [L, k]`` flattened and its lengths × k; raw lengths ``[T·B]``). The one KJT mapping
    of every table module (mapped, unified, sparse-exported)."""
    from torchrec import KeyedJaggedTensor

    jts = kjt.to_dict()
    missing = [f.name for f in features if f.name not in jts]
    if missing:
        raise ValueError(f"KeyedJaggedTensor lacks features {missing} (has {list(kjt.keys())})")
    values, lengths, raw = [], [], []
    unchanged = kjt.keys() == [f.name for f in features]  # stays True while every feature maps id -> same id
    for f in features:
        jt = jts[f.name]
        v = jt.values()
        rows = f.mapper.transform(v)
        k = rows.shape[-1]
        # an identity mapping (Full mapper, all ids in its vocabulary) returns a view of its input
        unchanged = unchanged and k == 1 and rows.data_ptr() == v.data_ptr() and rows.numel() == v.numel()
        values.append(rows.reshape(-1))
        raw.append(jt.lengths())
        lengths.append(jt.lengths() * k)
    if unchanged and sum(v.numel() for v in values) == kjt.values().numel():
        # the row KJT is the input KJT: skip concatenating the values again (a full copy of every id)
        return kjt, kjt.lengths()
    return (KeyedJaggedTensor(keys=[f.name for f in features], values=torch.cat(values), lengths=torch.cat(lengths)),
            torch.cat(raw))


def mean_pool(pooled: torch.Tensor, features: Sequence[FeatureConfig], raw_lengths: torch.Tensor) -> torch.Tensor:
    """Sum-pooled ``[B, sum dims]`` -> divide the columns of every ``pooling='mean'`` feature by its bags' RAW id
    counts (``raw_lengths [T·B]``, empty bag -> 0 vector), so k rows per id still average over ids."""
    if not any(f.pooling == "mean" for f in features):
        return pooled
    B = pooled.shape[0]
    cols, start = [], 0
    for t, f in enumerate(features):
        block = pooled[:, start:start + f.embedding_dim]
        if f.pooling == "mean":
            block = block / raw_lengths[t * B:(t + 1) * B].clamp(min=1).unsqueeze(1).to(block.dtype)
        cols.append(block)
        start += f.embedding_dim
    return torch.cat(cols, dim=1)


@torch.no_grad()
def init_table_(w: torch.Tensor, init_std: float | None, seed: int) -> None:
    """N(0, init_std) (or TorchRec's U(±1/sqrt(rows)) when None), deterministic in ``seed``; a ``meta`` tensor has no
    storage to fill and is left alone (DistributedModelParallel materialises and initialises the shards)."""
    if w.is_meta:
        return
    g = torch.Generator().manual_seed(seed)
    if init_std is not None:
        new = torch.randn(w.shape, generator=g) * init_std
    else:
        bound = 1.0 / math.sqrt(w.shape[0])
        new = torch.rand(w.shape, generator=g) * (2 * bound) - bound
    w.copy_(new.to(w.dtype))


class MappedEmbeddingBagCollection(nn.Module):
    """Pooled embedding tables behind id-mappers. ``forward(KJT of raw ids, batch B) -> KeyedTensor [B, sum dims]``.

    ``embed(feature, ids [N]) -> [N, dim]``: the un-pooled embedding of each id (its mapper rows summed), fast and
    differentiable — what MF/LightGCN call for all users/items every step. ``init_std`` -> N(0, std) init (LightGCN
    uses 0.1), else TorchRec's U(±1/sqrt(rows)); ``seed`` makes the init deterministic.
    """

    def __init__(self, features: Sequence[FeatureConfig], backend: str = "auto", tbe_config: TBEConfig | None = None,
                 init_std: float | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 sparse: bool = False) -> None:
        super().__init__()
        if not features:
            raise ValueError("features must list at least one FeatureConfig")
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {names}")
        if init_std is not None:
            check_positive("init_std", init_std)
        if tbe_config is not None and tbe_config.pooling != "sum":
            raise ValueError("tbe_config.pooling must be 'sum': per-feature mean pooling is FeatureConfig.pooling")
        self.features = list(features)
        self.backend = resolve_backend(backend)
        self._quant_kernel: tuple[nn.Module, nn.Module | None] | None = None  # (ebc it was found in, kernel)
        self.device = torch.device(device)
        self._index = {f.name: i for i, f in enumerate(self.features)}
        # table name -> (rows, dim, feature names), in first-use order
        self._tables: dict[str, tuple[int, int, list[str]]] = {}
        for f in self.features:
            r, d = f.mapper.num_rows, f.embedding_dim
            if f.table_name not in self._tables:
                self._tables[f.table_name] = (r, d, [f.name])
                continue
            r0, d0, names_ = self._tables[f.table_name]
            if (r0, d0) != (r, d):
                raise ValueError(f"features sharing table {f.table_name!r} need equal rows and dim: {names_[0]!r} has "
                                 f"{r0} x {d0}, {f.name!r} has {r} x {d}")
            names_.append(f.name)
        shared = len(self._tables) < len(self.features)
        # fbgemm, one table for all F features: TBE sees the F·B bags as one batch of its single table
        self._folded = shared and self.backend == "fbgemm"
        if self.device.type == "meta" and self.backend == "fbgemm":
            raise ValueError("device='meta' builds tables without storage for sharding (backend='torchrec'); "
                             "backend='fbgemm' allocates its kernel buffers at once")
        if self.backend == "torchrec":
            from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

            self.ebc = EmbeddingBagCollection(
                tables=[EmbeddingBagConfig(name=t, embedding_dim=d, num_embeddings=r, feature_names=fs,
                                           pooling=PoolingType.SUM)
                        for t, (r, d, fs) in self._tables.items()], device=self.device)
        elif self.backend == "fbgemm":
            from recsparse.kernels.tbe import FusedTBE

            if shared and len(self._tables) > 1:
                raise ValueError("shared tables (FeatureConfig.table) on backend 'fbgemm': ALL features on one "
                                 "table (unified embedding) or none; other sharing runs on backend 'torchrec' or "
                                 "'torch'")
            # every index comes from a mapper, whose rows are in [0, num_rows) by construction (and whose state is
            # validated on load): the kernel's per-call bounds check would only re-check that
            cfg = dataclasses.replace(tbe_config or TBEConfig(), bounds_check=False)
            self.tbe = FusedTBE([r for r, _, _ in self._tables.values()], [d for _, d, _ in self._tables.values()],
                                cfg, self.device, table_names=list(self._tables))
        else:
            self.bags = nn.ModuleDict({t: nn.EmbeddingBag(r, d, mode="sum", sparse=sparse, device=self.device)
                                       for t, (r, d, _) in self._tables.items()})
        self.reset_parameters(init_std, seed)

    # ---- tables ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, init_std: float | None = None, seed: int = 0) -> None:
        """Re-draw every table (see :func:`init_table_`; table i uses seed ``seed·1_000_003 + i``)."""
        for i, fs in enumerate(t[2] for t in self._tables.values()):
            init_table_(self.table_weight(fs[0]), init_std, seed * 1_000_003 + i)

    def table_weight(self, feature: str) -> torch.Tensor:
        """The ``[num_rows, dim]`` weight of a feature's table (a Parameter, or a view into the TBE buffer)."""
        f = self.feature(feature)
        if self.backend == "torchrec":
            return self.ebc.embedding_bags[f.table_name].weight
        if self.backend == "fbgemm":
            return self.tbe.weights(0 if self._folded else self._index[feature])  # else table t = feature t
        return self.bags[f.table_name].weight

    def feature(self, name: str) -> FeatureConfig:
        if name not in self._index:
            raise KeyError(f"unknown feature {name!r}; features: {list(self._index)}")
        return self.features[self._index[name]]

    def mapper(self, name: str) -> IdMapper:
        return self.feature(name).mapper

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def embedding_dims(self) -> list[int]:
        return [f.embedding_dim for f in self.features]

    def num_rows(self) -> dict[str, int]:
        return {f.name: f.mapper.num_rows for f in self.features}

    @property
    def table_names(self) -> list[str]:
        """Distinct tables (a shared table once), in first-use order."""
        return list(self._tables)

    def num_bytes(self) -> int:
        """Bytes of all table weights (fp32 -> 4 B per value; a shared table once) plus the mappers' own state."""
        n = 0
        for rows, dim, fs in self._tables.values():
            if self.is_sharded:  # the whole table (fp32), not this rank's shards
                n += rows * dim * 4
                continue
            w = self.table_weight(fs[0])
            n += w.numel() * w.element_size()
        return int(n + sum(getattr(f.mapper, "num_bytes_state", 0) for f in self.features))

    # ---- mapping -----------------------------------------------------------------------------------------
    def map_kjt(self, kjt: Any) -> tuple[Any, torch.Tensor]:
        """Raw-id KJT -> (row KJT with this module's key order and lengths × k, raw lengths ``[T·B]``)."""
        return map_kjt(self.features, kjt)

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(self, features: Any) -> Any:
        """``KeyedJaggedTensor`` (raw ids, keys ⊇ feature names, stride B) -> ``KeyedTensor`` ``[B, sum(dims)]``."""
        from torchrec import KeyedTensor

        mapped, raw_lengths = self.map_kjt(features)
        kernel = self.quantized_kernel()
        if kernel is not None:
            # quantized inference: the IntN kernel straight on the row KJT (torchrec's wrapper would permute and
            # copy the KJT every call)
            pooled = kernel(mapped.values(), mapped.offsets())
        elif self.backend == "torchrec":
            out = self.ebc(mapped)
            out = out.wait() if hasattr(out, "wait") else out  # sharded EBCs return an awaitable
            # a sharded EBC may emit its keys in shard order: put them back in feature order
            pooled = out.values() if out.keys() == self.feature_names else torch.cat(
                [out[n] for n in self.feature_names], dim=1)
        elif self.backend == "fbgemm":
            pooled = self.tbe(mapped.values(), mapped.offsets())
            if self._folded:  # [F·B, d] (feature-major bags) -> [B, F·d]
                pooled = pooled.view(len(self.features), mapped.stride(), -1).transpose(0, 1).reshape(
                    mapped.stride(), -1)
        else:
            B = mapped.stride()
            off = mapped.offsets()
            vals = mapped.values()
            outs = []
            for t, f in enumerate(self.features):
                lo = off[t * B]
                outs.append(self.bags[f.table_name](vals[lo:off[(t + 1) * B]], off[t * B:(t + 1) * B] - lo))
            pooled = torch.cat(outs, dim=1)
        pooled = mean_pool(pooled, self.features, raw_lengths)
        return KeyedTensor(keys=self.feature_names, length_per_key=self.embedding_dims, values=pooled)

    def quantized_kernel(self) -> nn.Module | None:
        """The FBGEMM ``IntNBitTableBatchedEmbeddingBagsCodegen`` of a quantized copy (``quantize_tables``) when that
        one kernel holds every table, one feature each, in feature order — the layout of the row KJT; else None."""
        cached = self._quant_kernel
        if cached is not None and cached[0] is self.ebc:  # re-checked once the EBC is swapped (quantize_embeddings)
            return cached[1]
        kernel = None
        if self.backend == "torchrec" and len(self._tables) == len(self.features):
            from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

            if isinstance(self.ebc, QuantEBC) and len(self.ebc._emb_modules) == 1:
                k = self.ebc._emb_modules[0]
                if [spec[0] for spec in k.embedding_specs] == list(self._tables):
                    kernel = k
        if self.backend == "torchrec":
            self._quant_kernel = (self.ebc, kernel)
        return kernel

    def embed(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """``ids [N]`` (raw) -> ``[N, dim]``: each id's mapper rows summed. Differentiable w.r.t. the table."""
        if feature not in self._index:
            self.feature(feature)  # raises the KeyError naming the features
        t = self._index[feature]
        rows = self.features[t].mapper.transform(ids.reshape(-1))  # [N, k]
        if rows.device != self.device:
            rows = rows.to(self.device)
        if self.backend == "fbgemm":  # backward (with grad) = the fused optimizer update
            return self.tbe.lookup(0 if self._folded else t, rows)
        if self.backend == "torchrec" and self.is_sharded:
            return self._embed_sharded(feature, rows)
        w = self.table_weight(feature)
        if rows.shape[1] == 1:
            return F.embedding(rows[:, 0], w)
        return F.embedding(rows, w).sum(dim=1)

    @property
    def is_sharded(self) -> bool:
        """True once DistributedModelParallel has replaced the inner EBC by a sharded one."""
        if self.backend != "torchrec":
            return False
        from torchrec import EmbeddingBagCollection

        return not isinstance(self.ebc, EmbeddingBagCollection)

    def _embed_sharded(self, feature: str, rows: torch.Tensor) -> torch.Tensor:
        # collective: every rank must call embed; one bag per id for `feature`, empty bags for the others
        from torchrec import KeyedJaggedTensor

        N, k = rows.shape
        lengths = torch.zeros(len(self.features) * N, dtype=torch.long, device=rows.device)
        t = self._index[feature]
        lengths[t * N:(t + 1) * N] = k
        kjt = KeyedJaggedTensor(keys=self.feature_names, values=rows.reshape(-1), lengths=lengths)
        out = self.ebc(kjt)
        out = out.wait() if hasattr(out, "wait") else out
        return out[feature]

    # ---- mapper state inside state_dict --------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {f.name: f.mapper.state_dict() for f in self.features}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        loaded = []
        for f in self.features:  # validate every feature's state before changing any mapper
            if f.name not in state:
                raise MapperStateError(f"checkpoint has no mapper state for feature {f.name!r}")
            s = state[f.name]
            new = mapper_from_state(dict(s))  # validated: ids can only map inside [0, num_rows)
            rows = self._tables[f.table_name][0]
            if new.num_rows != rows:
                raise MapperStateError(f"mapper state of feature {f.name!r} ({s.get('mapper')}) has "
                                       f"{new.num_rows} rows but its table has {rows}")
            loaded.append(new)
        for f, new in zip(self.features, loaded):
            if type(f.mapper) is type(new):
                f.mapper.__dict__.update(new.__dict__)  # keep the instance others may hold
            else:
                f.mapper = new
