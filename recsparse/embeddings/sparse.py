"""Sparse embedding tables: a masked / pruned table stored row-compressed (CSR) and served from that storage.

What dynamic sparse learning (:mod:`recsparse.embeddings.dsl`) or one-shot magnitude pruning produces is a table
whose zeros are structural; :func:`export_sparse` keeps only the non-zeros. Per table: ``indptr [rows+1]`` (int32
when the non-zeros fit, else int64), column ``indices [nnz]`` in the smallest unsigned/signed integer type that holds
``dim - 1`` (uint8 up to dim 256), ``values [nnz]`` (fp32). ``num_bytes()`` is the byte count of exactly those
buffers plus the mappers' state — the memory a server holds (dense fp32 at density d costs ``4·rows·dim``, CSR
``≈ (4 + 1)·d·rows·dim + 4·rows`` at dim ≤ 256).

:class:`SparseEmbeddingTables` serves the same calls as :class:`~recsparse.embeddings.tables.MappedEmbeddingBagCollection`
(``embed(feature, ids) -> [N, dim]`` and ``forward(KJT of raw ids) -> KeyedTensor``), reading rows straight from
the CSR buffers (no dense table is ever rebuilt). It is an inference artefact (no gradients).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from recsparse.embeddings.mappers import MapperStateError, mapper_from_state
from recsparse.embeddings.tables import FeatureConfig, MappedEmbeddingBagCollection, map_kjt, mean_pool
from recsparse.io import atomic_write


def _index_dtype(dim: int) -> torch.dtype:
    return torch.uint8 if dim <= 256 else torch.int16 if dim <= 2**15 else torch.int32


def csr_from_dense(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w [rows, dim]`` -> (indptr ``[rows+1]``, column indices ``[nnz]``, values ``[nnz]``) of its non-zeros."""
    w = w.detach().cpu()
    nz = w != 0
    counts = nz.sum(1)
    nnz = int(counts.sum())
    ptr_dtype = torch.int32 if nnz < 2**31 else torch.int64
    indptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    _, cols = nz.nonzero(as_tuple=True)  # row-major order = CSR order
    return indptr.to(ptr_dtype), cols.to(_index_dtype(w.shape[1])), w[nz].contiguous()


class SparseEmbeddingTables(nn.Module):
    """CSR tables behind the features' mappers. Build with :func:`export_sparse`; ``save`` / ``load`` round-trip
    through ``torch.load(weights_only=True)``."""

    def __init__(self, features: Sequence[FeatureConfig], csr: Mapping[str, tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.features = list(features)
        self._index = {f.name: i for i, f in enumerate(self.features)}
        self.dims = {}
        for f in self.features:
            indptr, indices, values = csr[f.table_name]
            rows = indptr.numel() - 1
            if rows != f.mapper.num_rows:
                raise MapperStateError(f"sparse table {f.table_name!r} has {rows} rows but the mapper of feature "
                                       f"{f.name!r} maps to {f.mapper.num_rows}")
            if f.table_name in self.dims:
                continue
            self.dims[f.table_name] = f.embedding_dim
            key = _buf(f.table_name)
            self.register_buffer(f"{key}_indptr", indptr)
            self.register_buffer(f"{key}_indices", indices)
            self.register_buffer(f"{key}_values", values)

    def _csr(self, table: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = _buf(table)
        return getattr(self, f"{key}_indptr"), getattr(self, f"{key}_indices"), getattr(self, f"{key}_values")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> FeatureConfig:
        if name not in self._index:
            raise KeyError(f"unknown feature {name!r}; features: {self.feature_names}")
        return self.features[self._index[name]]

    def nnz(self) -> int:
        return int(sum(self._csr(t)[2].numel() for t in self.dims))

    def num_bytes(self) -> int:
        """Bytes of the CSR buffers of every table plus the mappers' own state."""
        n = sum(b.numel() * b.element_size() for t in self.dims for b in self._csr(t))
        return int(n + sum(getattr(f.mapper, "num_bytes_state", 0) for f in self.features))

    @torch.no_grad()
    def rows(self, feature: str, rows: torch.Tensor) -> torch.Tensor:
        """Table rows ``rows [M]`` of a feature's table as dense ``[M, dim]`` (zeros where nothing is stored)."""
        f = self.feature(feature)
        indptr, indices, values = self._csr(f.table_name)
        rows = rows.reshape(-1).long()
        start, end = indptr[rows].long(), indptr[rows + 1].long()
        counts = end - start
        out = torch.zeros(rows.numel(), f.embedding_dim, dtype=values.dtype)
        total = int(counts.sum())
        if total:
            which = torch.repeat_interleave(torch.arange(rows.numel()), counts)  # output row of each stored value
            first = torch.cumsum(counts, 0) - counts
            pos = start[which] + (torch.arange(total) - first[which])  # position inside the CSR buffers
            out[which, indices[pos].long()] = values[pos]
        return out

    def dense_weight(self, feature: str) -> torch.Tensor:
        """The whole ``[num_rows, dim]`` table (for checks; serving never needs it)."""
        return self.rows(feature, torch.arange(self.feature(feature).mapper.num_rows))

    @torch.no_grad()
    def embed(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """``ids [N]`` (raw) -> ``[N, dim]``: each id's mapper rows summed."""
        r = self.feature(feature).mapper.transform(ids.reshape(-1))  # [N, k]
        return self.rows(feature, r.reshape(-1)).view(r.shape[0], r.shape[1], -1).sum(1)

    @torch.no_grad()
    def forward(self, features: Any) -> Any:
        """``KeyedJaggedTensor`` of raw ids (stride B) -> ``KeyedTensor [B, sum(dims)]``, pooled like the dense
        module (sum, or mean over raw ids)."""
        from torchrec import KeyedTensor

        mapped, raw_lengths = map_kjt(self.features, features)
        B = mapped.stride()
        off, vals = mapped.offsets(), mapped.values()
        cols = []
        for t, f in enumerate(self.features):
            lo, hi = int(off[t * B]), int(off[(t + 1) * B])
            lengths = off[t * B + 1:(t + 1) * B + 1] - off[t * B:(t + 1) * B]
            bag = torch.repeat_interleave(torch.arange(B), lengths)
            pooled = torch.zeros(B, f.embedding_dim)
            pooled.index_add_(0, bag, self.rows(f.name, vals[lo:hi]))
            cols.append(pooled)
        pooled = mean_pool(torch.cat(cols, dim=1), self.features, raw_lengths)
        return KeyedTensor(keys=self.feature_names, length_per_key=[f.embedding_dim for f in self.features],
                           values=pooled)

    # ---- artefact ---------------------------------------------------------------------------------------------
    def artefact(self) -> dict[str, Any]:
        """Plain tensors/ints/strings: loadable with ``torch.load(weights_only=True)``."""
        return {"format": "recsparse-csr-v1",
                "features": [{"name": f.name, "num_ids": f.num_ids, "embedding_dim": f.embedding_dim,
                              "pooling": f.pooling, "table": f.table_name, "mapper": f.mapper.state_dict()}
                             for f in self.features],
                "tables": {t: dict(zip(("indptr", "indices", "values"), self._csr(t))) for t in self.dims}}

    def save(self, path: str | Path) -> None:
        with atomic_write(path, "wb") as fh:
            torch.save(self.artefact(), fh)

    @classmethod
    def from_artefact(cls, art: Mapping[str, Any]) -> "SparseEmbeddingTables":
        if art.get("format") != "recsparse-csr-v1":
            raise MapperStateError(f"not a recsparse sparse-table artefact (format {art.get('format')!r})")
        feats = [FeatureConfig(d["name"], d["num_ids"], d["embedding_dim"], mapper=mapper_from_state(d["mapper"]),
                               pooling=d["pooling"], table=d["table"]) for d in art["features"]]
        csr = {t: (b["indptr"], b["indices"], b["values"]) for t, b in art["tables"].items()}
        for t, (indptr, indices, values) in csr.items():
            dim = next(f.embedding_dim for f in feats if f.table_name == t)
            ok = (indptr.dim() == 1 and indptr.numel() >= 1 and int(indptr[0]) == 0
                  and int(indptr[-1]) == values.numel() == indices.numel()
                  and bool((indptr[1:] >= indptr[:-1]).all())
                  and (indices.numel() == 0 or int(indices.long().max()) < dim))
            if not ok:
                raise MapperStateError(f"sparse table {t!r}: inconsistent CSR buffers (indptr / indices / values)")
        return cls(feats, csr)

    @classmethod
    def load(cls, path: str | Path) -> "SparseEmbeddingTables":
        return cls.from_artefact(torch.load(path, weights_only=True))


def _buf(table: str) -> str:
    return "csr_" + "".join(c if c.isalnum() else "_" for c in table)


def export_sparse(tables: MappedEmbeddingBagCollection,
                  masks: Mapping[str, torch.Tensor] | None = None) -> SparseEmbeddingTables:
    """CSR copy of ``tables`` keeping the entries of ``masks`` (``table name -> bool [rows, dim]``, e.g.
    :attr:`DynamicSparsity.masks`) or, without masks, every non-zero. Mappers are copied by state."""
    csr = {}
    for name in tables.table_names:
        f = next(f for f in tables.features if f.table_name == name)
        w = tables.table_weight(f.name).detach()
        if masks is not None:
            w = w * masks[name]
        csr[name] = csr_from_dense(w)
    feats = [FeatureConfig(f.name, f.num_ids, f.embedding_dim, mapper=mapper_from_state(f.mapper.state_dict()),
                           pooling=f.pooling, table=f.table_name) for f in tables.features]
    return SparseEmbeddingTables(feats, csr)
