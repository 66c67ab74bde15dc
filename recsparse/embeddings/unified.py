"""Unified embedding (feature multiplexing): ALL categorical features of a model share ONE table.

Coleman et al., "Unified Embedding: Battle-Tested Feature Representations for Web-Scale ML Systems", NeurIPS 2023.
Each feature hashes its ids into the shared ``num_rows × chunk_dim`` table with its own *salt* (a per-feature seed
of the universal hash family), so features collide with each other only pseudo-randomly and the total budget is
shared where it is needed. A feature of dimension ``c · chunk_dim`` takes ``c`` chunks: ``c`` independently salted
lookups whose vectors are *concatenated* (not summed).

Built on :class:`~recsparse.embeddings.tables.MappedEmbeddingBagCollection`: one shared table named ``"unified"``
(``FeatureConfig.table``; on TorchRec one ``EmbeddingBagConfig`` with several ``feature_names``) serving the virtual
features ``<name>#<j>`` (chunk j of feature ``name``), so the module shards with
:func:`recsparse.embeddings.sharding.shard_model` like any EBC. ``forward``: KJT of raw ids -> KeyedTensor
``[B, sum(dims)]`` keyed by the real feature names; ``embed(feature, ids [N]) -> [N, dim]``.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from recsparse.embeddings.mappers import MapperStateError, UniversalHashMapper
from recsparse.embeddings.tables import FeatureConfig, MappedEmbeddingBagCollection, resolve_backend
from recsparse.types import check_positive

TABLE = "unified"


def feature_salt(name: str, seed: int = 0) -> int:
    """Deterministic per-feature salt (seed of the universal hash) from the feature name and a global seed."""
    return (zlib.crc32(name.encode()) + 1_000_003 * int(seed)) % (2**31 - 1)


class UnifiedEmbedding(nn.Module):
    """One shared table ``[num_rows, chunk_dim]`` for all ``features``; feature f uses ``dim_f / chunk_dim`` salted
    chunks (``UniversalHashMapper(num_rows, num_hashes=c, seed=salt(f))``; ``FeatureConfig.mapper`` is ignored).
    ``backend``: ``"torchrec"`` | ``"torch"`` | ``"fbgemm"`` | ``"auto"``.

    Update paths of the shared table (at web scale it is large and a batch touches few rows): ``"torch"`` with
    ``sparse=True`` gives it a sparse gradient (only the looked-up rows; use ``torch.optim.SGD``/``SparseAdam``);
    ``"fbgemm"`` runs it in one FBGEMM TBE kernel with the optimizer (``tbe_config``) fused into ``backward`` — leave
    its weights out of the model's optimizer. The default dense gradient touches every row every step.

    The table is a :class:`~recsparse.embeddings.tables.MappedEmbeddingBagCollection` (``self.tables``) whose
    features are the chunks ``<name>#<j>``, all on the shared table ``"unified"``, chunk j mapped by hash j of the
    feature's salted mapper — so KJT mapping, pooling (mean over raw ids), init and ``device="meta"`` are that
    module's."""

    def __init__(self, features: Sequence[FeatureConfig], num_rows: int, chunk_dim: int, backend: str = "auto",
                 seed: int = 0, init_std: float | None = None, device: str | torch.device = "cpu",
                 sparse: bool = False, tbe_config: Any = None) -> None:
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
        if sparse and resolve_backend(backend) != "torch":
            raise ValueError("sparse=True (sparse gradients) is a backend='torch' option; backend='fbgemm' fuses the "
                             "update into backward instead")
        self.features, self.num_rows_total, self.chunk_dim, self.seed = list(features), int(num_rows), chunk_dim, seed
        self.mappers = {f.name: UniversalHashMapper(num_rows, f.embedding_dim // chunk_dim, feature_salt(f.name, seed))
                        for f in self.features}
        chunks = [FeatureConfig(f"{f.name}#{j}", f.num_ids, chunk_dim, mapper=_chunk_mapper(self.mappers[f.name], j),
                                pooling=f.pooling, table=TABLE)
                  for f in self.features for j in range(self.chunks(f.name))]
        self.virtual = [c.name for c in chunks]
        self.tables = MappedEmbeddingBagCollection(chunks, backend=backend, init_std=init_std, seed=seed,
                                                   device=device, sparse=sparse, tbe_config=tbe_config)
        self.backend, self.device = self.tables.backend, self.tables.device

    @property
    def weight(self) -> torch.Tensor:
        """The shared ``[num_rows, chunk_dim]`` table."""
        return self.tables.table_weight(self.virtual[0])

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
        values, lengths = [], []
        for f in self.features:  # each chunk feature reads the feature's raw ids
            jt = jts[f.name]
            values += [jt.values()] * self.chunks(f.name)
            lengths += [jt.lengths()] * self.chunks(f.name)
        kjt = KeyedJaggedTensor(keys=self.virtual, values=torch.cat(values), lengths=torch.cat(lengths),
                                stride=features.stride())
        # chunk features are laid out feature by feature, chunk by chunk: the columns are already concatenated
        return KeyedTensor(keys=self.feature_names, length_per_key=[f.embedding_dim for f in self.features],
                           values=self.tables(kjt).values())

    def embed(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """``ids [N]`` -> ``[N, c·chunk_dim]``: the feature's c salted chunks, concatenated. Differentiable."""
        if feature not in self.mappers:
            raise KeyError(f"unknown feature {feature!r}; features: {self.feature_names}")
        return torch.cat([self.tables.embed(f"{feature}#{j}", ids) for j in range(self.chunks(feature))], dim=1)

    def get_extra_state(self) -> dict[str, Any]:
        return {n: m.state_dict() for n, m in self.mappers.items()}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        for n, m in self.mappers.items():
            if n not in state:
                raise MapperStateError(f"unified embedding checkpoint has no mapper state for feature {n!r}")
            m.load_state_dict(state[n])
            if m.num_rows != self.num_rows_total or m.num_hashes != self.chunks(n):
                raise MapperStateError(f"unified mapper state of feature {n!r}: m={m.num_rows}, "
                                       f"num_hashes={m.num_hashes}; the table needs m={self.num_rows_total}, "
                                       f"num_hashes={self.chunks(n)}")
            for j in range(self.chunks(n)):
                chunk = self.tables.mapper(f"{n}#{j}")
                chunk.a, chunk.b = m.a[j:j + 1].clone(), m.b[j:j + 1].clone()


def _chunk_mapper(m: UniversalHashMapper, j: int) -> UniversalHashMapper:
    """The one-hash mapper of chunk j: hash j of the feature's salted family (same (a_j, b_j), same rows)."""
    c = UniversalHashMapper(m.num_rows, 1, m.seed)
    c.a, c.b = m.a[j:j + 1].clone(), m.b[j:j + 1].clone()
    return c
