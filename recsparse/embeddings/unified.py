"""Unified embedding (feature multiplexing): ALL categorical features of a model share ONE table.

Coleman et al., "Unified Embedding: Battle-Tested Feature Representations for Web-Scale ML Systems", NeurIPS 2023.
Each feature hashes its ids into the shared ``num_rows × chunk_dim`` table with its own *salt* (a per-feature seed
of the universal hash family), so features collide with each other only pseudo-randomly and the total budget is
shared where it is needed. A feature of dimension ``c · chunk_dim`` takes ``c`` chunks: ``c`` independently salted
lookups whose vectors are *concatenated* (not summed).

Built on TorchRec: one ``EmbeddingBagConfig`` named ``"unified"`` serving the virtual features ``<name>#<j>`` (chunk
j of feature ``name``) — TorchRec's own way of letting several features share a table — so the module shards with
:func:`recsparse.embeddings.sharding.shard_model` like any EBC. ``forward``: KJT of raw ids -> KeyedTensor
``[B, sum(dims)]`` keyed by the real feature names; ``embed(feature, ids [N]) -> [N, dim]``.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsparse.embeddings.mappers import UniversalHashMapper
from recsparse.embeddings.tables import FeatureConfig, resolve_backend
from recsparse.types import check_positive

TABLE = "unified"


def feature_salt(name: str, seed: int = 0) -> int:
    """Deterministic per-feature salt (seed of the universal hash) from the feature name and a global seed."""
    return (zlib.crc32(name.encode()) + 1_000_003 * int(seed)) % (2**31 - 1)


class UnifiedEmbedding(nn.Module):
    """One shared table ``[num_rows, chunk_dim]`` for all ``features``; feature f uses ``dim_f / chunk_dim`` salted
    chunks (``UniversalHashMapper(num_rows, num_hashes=c, seed=salt(f))``; ``FeatureConfig.mapper`` is ignored).
    ``backend``: ``"torchrec"`` | ``"torch"`` | ``"auto"``."""

    def __init__(self, features: Sequence[FeatureConfig], num_rows: int, chunk_dim: int, backend: str = "auto",
                 seed: int = 0, init_std: float | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__()
        check_positive("num_rows", num_rows)
        check_positive("chunk_dim", chunk_dim)
        if not features:
            raise ValueError("features must list at least one FeatureConfig")
        for f in features:
            if f.embedding_dim % chunk_dim:
                raise ValueError(f"embedding_dim of feature {f.name!r} ({f.embedding_dim}) must be a multiple of "
                                 f"chunk_dim={chunk_dim}")
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {names}")
        self.backend = resolve_backend(backend)
        if self.backend == "fbgemm":
            raise ValueError("UnifiedEmbedding runs on backend 'torchrec' (TBE when sharded) or 'torch'")
        self.features, self.num_rows_total, self.chunk_dim, self.seed = list(features), int(num_rows), chunk_dim, seed
        self.device = torch.device(device)
        self.mappers = {f.name: UniversalHashMapper(num_rows, f.embedding_dim // chunk_dim, feature_salt(f.name, seed))
                        for f in self.features}
        self.virtual = [f"{f.name}#{j}" for f in self.features for j in range(self.chunks(f.name))]
        if self.backend == "torchrec":
            from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

            self.ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
                name=TABLE, embedding_dim=chunk_dim, num_embeddings=num_rows, feature_names=self.virtual,
                pooling=PoolingType.SUM)], device=self.device)
        else:
            self.bag = nn.EmbeddingBag(num_rows, chunk_dim, mode="sum", device=self.device)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            w = self.weight
            new = (torch.randn(w.shape, generator=g) * init_std if init_std is not None
                   else (torch.rand(w.shape, generator=g) * 2 - 1) / math.sqrt(num_rows))
            w.copy_(new)

    @property
    def weight(self) -> torch.Tensor:
        """The shared ``[num_rows, chunk_dim]`` table."""
        return self.ebc.embedding_bags[TABLE].weight if self.backend == "torchrec" else self.bag.weight

    def chunks(self, feature: str) -> int:
        return self.mappers[feature].num_hashes

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def num_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def forward(self, features: Any) -> Any:
        """KJT of raw ids (stride B) -> KeyedTensor ``[B, sum(dims)]`` (chunks concatenated per feature)."""
        from torchrec import KeyedJaggedTensor, KeyedTensor

        jts = features.to_dict()
        missing = [n for n in self.feature_names if n not in jts]
        if missing:
            raise ValueError(f"KeyedJaggedTensor lacks features {missing} (has {list(features.keys())})")
        values, lengths, raw = [], [], []
        for f in self.features:
            jt = jts[f.name]
            rows = self.mappers[f.name].transform(jt.values())  # [L, c]: chunk j's row in column j
            values += [rows[:, j] for j in range(rows.shape[1])]
            lengths += [jt.lengths()] * rows.shape[1]
            raw.append(jt.lengths())
        B = features.stride()
        if self.backend == "torchrec":
            kjt = KeyedJaggedTensor(keys=self.virtual, values=torch.cat(values), lengths=torch.cat(lengths))
            out = self.ebc(kjt)
            out = out.wait() if hasattr(out, "wait") else out
            pooled = [out[v] for v in self.virtual]
        else:
            pooled = []
            for v, ln in zip(values, lengths):
                off = torch.zeros(B, dtype=torch.long, device=ln.device)
                off[1:] = ln.cumsum(0)[:-1]
                pooled.append(self.bag(v, off))
        cols, i = [], 0
        for t, f in enumerate(self.features):
            c = self.chunks(f.name)
            block = torch.cat(pooled[i:i + c], dim=1)
            i += c
            if f.pooling == "mean":
                block = block / raw[t].clamp(min=1).unsqueeze(1).to(block.dtype)
            cols.append(block)
        return KeyedTensor(keys=self.feature_names, length_per_key=[f.embedding_dim for f in self.features],
                           values=torch.cat(cols, dim=1))

    def embed(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """``ids [N]`` -> ``[N, c·chunk_dim]``: the feature's c salted chunks, concatenated. Differentiable."""
        if feature not in self.mappers:
            raise KeyError(f"unknown feature {feature!r}; features: {self.feature_names}")
        rows = self.mappers[feature].transform(ids.reshape(-1)).to(self.weight.device)  # [N, c]
        return F.embedding(rows, self.weight).reshape(rows.shape[0], -1)

    def get_extra_state(self) -> dict[str, Any]:
        return {n: m.state_dict() for n, m in self.mappers.items()}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        for n, m in self.mappers.items():
            m.load_state_dict(state[n])
