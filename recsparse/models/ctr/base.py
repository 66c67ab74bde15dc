"""The shared anatomy of every CTR model: embeddings -> interaction -> head.

:class:`FeatureEmbeddings` turns the sparse ``KeyedJaggedTensor`` of a fitted
:class:`~recsparse.embeddings.features.FeatureSpec` into one ``[B, F, d]`` tensor (F sparse features, one pooled
``d``-vector each) through :class:`~recsparse.embeddings.MappedEmbeddingBagCollection` (each feature behind its fitted
id-mapper: vocabulary + OOV, hashing, GraphHash) and/or :class:`~recsparse.embeddings.unified.UnifiedEmbedding` (the
features whose mapper is ``unified`` share one table). :class:`CTRModel` adds the optional first-order term
(:class:`LinearTerms`: a ``d = 1`` twin of the embeddings + a linear map of the dense features) and leaves the
middle to each model: ``interact(emb [B, F, d], dense [B, n]) -> logit [B]``.

``forward(sparse, dense) -> logits [B]`` (pre-sigmoid); ``embed(sparse) -> [B, F, d]`` and
``forward_embedded(emb, dense, sparse)`` let an auxiliary loss (SSL feature masking) work on the embedding layer.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from recsparse.embeddings import MappedEmbeddingBagCollection
from recsparse.embeddings.features import FittedFeatureSpec
from recsparse.embeddings.unified import UnifiedEmbedding
from recsparse.types import check_positive


def dnn(in_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> tuple[nn.Module, int]:
    """ReLU MLP ``in_dim -> hidden...`` (TorchRec's ``MLP``); returns the module and its output width."""
    if not hidden:
        return nn.Identity(), in_dim
    from torchrec.modules.mlp import MLP

    for h in hidden:
        check_positive("hidden size", h)
    mlp = MLP(in_dim, list(hidden), activation="relu")
    if dropout > 0:
        layers: list[nn.Module] = []
        for p in mlp._mlp:
            layers += [p, nn.Dropout(dropout)]
        return nn.Sequential(*layers), hidden[-1]
    return mlp, hidden[-1]


class FeatureEmbeddings(nn.Module):
    """Sparse KJT (keys = the spec's sparse features) -> ``[B, F, dim]`` in spec order.

    Features with ``mapper='unified'`` go to one :class:`UnifiedEmbedding` of ``c · spec.unified_rows`` rows of
    ``dim / c`` (``c = spec.unified_chunks`` salted chunks per feature, concatenated); the others to one
    :class:`MappedEmbeddingBagCollection`."""

    def __init__(self, fitted: FittedFeatureSpec, dim: int, backend: str = "torch", seed: int = 0,
                 init_std: float | None = None) -> None:
        super().__init__()
        check_positive("dim", dim)
        self.names = fitted.sparse_names
        configs = fitted.feature_configs(dim)
        uni = {f.name for f in fitted.spec.sparse if f.mapper == "unified"}
        mapped = [c for c in configs if c.name not in uni]
        unified = [c for c in configs if c.name in uni]
        self.dim = dim
        self.mapped = (MappedEmbeddingBagCollection(mapped, backend=backend, init_std=init_std, seed=seed)
                       if mapped else None)
        self.unified: UnifiedEmbedding | None = None
        if unified:
            c = fitted.spec.unified_chunks
            if dim > 1 and dim % c:
                raise ValueError(f"FeatureSpec.unified_chunks={c} must divide the embedding dim {dim}")
            # a dim-1 table (the first-order weights of LinearTerms) cannot be split: one salted lookup per feature
            c = c if dim > 1 else 1
            assert fitted.spec.unified_rows is not None
            # unified_rows counts rows of width dim: c chunks of dim/c keep the parameters (c·rows × dim/c)
            self.unified = UnifiedEmbedding(unified, fitted.spec.unified_rows * c, dim // c,
                                            backend="torch" if backend == "fbgemm" else backend,
                                            seed=fitted.spec.unified_seed, init_std=init_std)
        self._order: list[tuple[int, int]] = []  # (source 0=mapped/1=unified, position)
        mi = [c.name for c in mapped]
        ui = [c.name for c in unified]
        for n in self.names:
            self._order.append((0, mi.index(n)) if n in mi else (1, ui.index(n)))

    @property
    def num_features(self) -> int:
        return len(self.names)

    def forward(self, sparse: Any) -> torch.Tensor:
        parts: list[torch.Tensor | None] = [None, None]
        if self.mapped is not None:
            parts[0] = self.mapped(sparse).values().view(-1, len(self.mapped.features), self.dim)
        if self.unified is not None:
            parts[1] = self.unified(sparse).values().view(-1, len(self.unified.features), self.dim)
        if self.unified is None:
            return parts[0]  # type: ignore[return-value]
        if self.mapped is None:
            return parts[1]  # type: ignore[return-value]
        return torch.stack([parts[s][:, i] for s, i in self._order], dim=1)  # type: ignore[index]

    def num_bytes(self) -> int:
        """Bytes of all tables (+ mapper state)."""
        return int((self.mapped.num_bytes() if self.mapped is not None else 0)
                   + (self.unified.num_bytes() if self.unified is not None else 0))

    def num_rows(self) -> int:
        return int((sum(self.mapped.num_rows().values()) if self.mapped is not None else 0)
                   + (self.unified.num_rows_total if self.unified is not None else 0))


class LinearTerms(nn.Module):
    """First-order term: ``Σ_f w[row(x_f)] + <v, dense> + b`` — a ``dim = 1`` :class:`FeatureEmbeddings` (same
    mappers as the vector tables) plus a linear map of the dense features. ``[B]`` out."""

    def __init__(self, fitted: FittedFeatureSpec, backend: str = "torch", seed: int = 0) -> None:
        super().__init__()
        self.weights = FeatureEmbeddings(fitted, 1, backend, seed + 7, init_std=1e-4)
        n = len(fitted.dense_names)
        self.dense = nn.Linear(n, 1, bias=True) if n else None
        self.bias = None if n else nn.Parameter(torch.zeros(1))

    def forward(self, sparse: Any, dense: torch.Tensor) -> torch.Tensor:
        out = self.weights(sparse).sum(dim=(1, 2))
        if self.dense is not None:
            return out + self.dense(dense).squeeze(-1)
        assert self.bias is not None
        return out + self.bias


class CTRModel(nn.Module):
    """Base of the zoo. Subclasses implement :meth:`interact`; ``linear=True`` adds :class:`LinearTerms`.
    ``vectors=False`` (logistic regression) builds no ``d``-dimensional tables at all."""

    name = "ctr"

    def __init__(self, fitted: FittedFeatureSpec, dim: int = 16, backend: str = "torch", seed: int = 0,
                 linear: bool = False, vectors: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.num_sparse = len(fitted.sparse_names)
        self.num_dense = len(fitted.dense_names)
        self.embeddings = FeatureEmbeddings(fitted, dim, backend, seed) if vectors else None
        self.linear = LinearTerms(fitted, backend, seed) if linear else None

    def embed(self, sparse: Any) -> torch.Tensor:
        """Sparse KJT -> ``[B, F, dim]`` (the feature-embedding layer)."""
        if self.embeddings is None:
            raise ValueError(f"{self.name} has no embedding vectors")
        return self.embeddings(sparse)

    def interact(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``emb [B, F, dim]``, ``dense [B, num_dense]`` -> logit ``[B]`` (the model's own middle + head)."""
        raise NotImplementedError

    def forward_embedded(self, emb: torch.Tensor | None, dense: torch.Tensor, sparse: Any) -> torch.Tensor:
        out = self.interact(emb, dense) if emb is not None else torch.zeros(dense.shape[0], device=dense.device)
        if self.linear is not None:
            out = out + self.linear(sparse, dense)
        return out

    def forward(self, sparse: Any, dense: torch.Tensor) -> torch.Tensor:
        """Sparse KJT of encoded ids (stride B) + dense ``[B, num_dense]`` -> logits ``[B]``."""
        emb = self.embed(sparse) if self.embeddings is not None else None
        return self.forward_embedded(emb, dense, sparse)

    def table_bytes(self) -> int:
        return int(sum(m.num_bytes() for m in (self.embeddings, self.linear.weights if self.linear else None)
                       if m is not None))

    def table_rows(self) -> int:
        return int(sum(m.num_rows() for m in (self.embeddings, self.linear.weights if self.linear else None)
                       if m is not None))

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.parameters()))
