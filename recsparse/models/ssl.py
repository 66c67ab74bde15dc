"""Self-supervised auxiliary loss over a feature encoder: RFM / CFM feature masking + InfoNCE.

Yao et al., "Self-supervised Learning for Large-scale Item Recommendations" (CIKM 2021). Two augmented *views* of
the same items' features go through the same encoder (the two-tower model's item tower, or a CTR model's
feature-embedding layer + interaction); InfoNCE pulls each item's two views together against the other items of
the batch. The batch is drawn **uniformly from the catalogue** (the paper's choice: tail items get as many
self-supervised updates as head items), and the term is added, times a weight α, to the main loss.

Augmentations (per example, on the ``KeyedJaggedTensor`` + dense features of a batch):

* **RFM** (random feature masking): a random ``⌊F/2⌋`` of the ``F`` features is masked in view 1, the complementary
  ``⌈F/2⌉`` in view 2 — the views share no feature, so neither can copy the other.
* **CFM** (correlated feature masking): a random *seed* feature plus the ``⌊F/2⌋ - 1`` features with the highest
  mutual information with it are masked in view 1, the rest in view 2 — mutually informative features are hidden
  together, so the model cannot recover one from another. Feature-pair mutual information comes from
  :func:`mutual_information` (exact, from Polars group-by counts), computed once on training data.
* **Feature dropout**: inside multi-hot features (genres, title words ...) each id is dropped independently with
  probability ``dropout``, independently in each view.

A masked feature's pooled embedding is replaced by a learned per-feature *default embedding* (what the encoder sees
for "feature unknown").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol, Sequence

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from recsparse.config import Config
from recsparse.types import check_choice, check_positive

AUGMENTS = ("rfm", "cfm")


@dataclass
class SSLConfig(Config):
    """``loss.ssl``: ``augment`` rfm | cfm; ``weight`` α of the auxiliary term (0 = off: nothing is computed);
    ``temperature`` τ of InfoNCE; ``dropout`` per-id dropout inside multi-hot features; ``batch_size`` items drawn
    uniformly from the catalogue per training step (CTR: rows of the training batch)."""

    augment: Literal["rfm", "cfm"] = "rfm"
    weight: float = 0.0
    temperature: float = 0.1
    dropout: float = 0.0
    batch_size: int = 512

    def validate(self) -> None:
        if self.weight < 0:
            raise ValueError(f"loss.ssl.weight must be >= 0, got {self.weight!r}")
        check_positive("loss.ssl.temperature", self.temperature)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"loss.ssl.dropout must be in [0, 1), got {self.dropout!r}")
        check_positive("loss.ssl.batch_size", self.batch_size)

    @property
    def enabled(self) -> bool:
        return self.weight > 0


# ------------------------------------------------------------------------------------------ mutual information
def _categorical(frame: pl.LazyFrame, columns: Sequence[str], num_bins: int) -> pl.DataFrame:
    """Each column as one categorical variable: lists -> their sorted set as one value, floats -> quantile bins,
    everything else (ints, strings, bools, categoricals) as is. Nulls are a category of their own."""
    schema = frame.collect_schema()
    missing = [c for c in columns if c not in schema]
    if missing:
        raise ValueError(f"mutual_information: columns {missing} not in the frame (has {list(schema)})")
    exprs = []
    for c in columns:
        dt = schema[c]
        if isinstance(dt, (pl.List, pl.Array)):
            e = pl.col(c).list.eval(pl.element().cast(pl.String)).list.sort().list.join("\x1f")
        elif dt.is_float():
            e = pl.col(c).qcut(num_bins, allow_duplicates=True).to_physical()
        else:
            e = pl.col(c)
        exprs.append(e.alias(c))
    return frame.select(exprs).collect()


def mutual_information(frame: pl.DataFrame | pl.LazyFrame, columns: Sequence[str],
                       num_bins: int = 10) -> np.ndarray:
    """``[F, F]`` feature-pair mutual information in nats (diagonal: each feature's entropy), exact from counts.

    ``I(X; Y) = Σ_{x,y} p(x,y) log(p(x,y) / (p(x) p(y)))`` with ``p`` the empirical frequencies of ``frame``'s rows:
    one Polars ``group_by(x, y).len()`` per pair, joined with the marginal counts. A list column (multi-hot) is one
    variable whose value is its set of ids; a float column is cut into ``num_bins`` quantile bins first.
    """
    check_positive("num_bins", num_bins)
    df = _categorical(frame.lazy(), list(columns), num_bins)
    n = df.height
    k = len(columns)
    out = np.zeros((k, k))
    if n == 0:
        return out
    logn = math.log(n)
    marg = {c: df.group_by(c).agg(pl.len().alias(f"_n_{i}")) for i, c in enumerate(columns)}
    for i, a in enumerate(columns):
        p = marg[a][f"_n_{i}"].cast(pl.Float64) / n
        out[i, i] = float(-(p * p.log()).sum())
        for j in range(i + 1, k):
            b = columns[j]
            if a == b:
                out[i, j] = out[j, i] = out[i, i]
                continue
            joint = (df.group_by([a, b]).agg(pl.len().alias("_nab"))
                     .join(marg[a], on=a, how="left", nulls_equal=True)
                     .join(marg[b], on=b, how="left", nulls_equal=True))
            nab = pl.col("_nab").cast(pl.Float64)
            mi = joint.select((nab / n * (nab.log() + logn - pl.col(f"_n_{i}").cast(pl.Float64).log()
                                          - pl.col(f"_n_{j}").cast(pl.Float64).log())).sum()).item()
            out[i, j] = out[j, i] = max(float(mi), 0.0)  # clip float round-off below 0
    return out


def jagged_frame(lengths: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> pl.DataFrame:
    """Per-entity jagged features (``name -> lengths [N]``, ``name -> values [nnz]``) as a frame for
    :func:`mutual_information`: an Int64 column where every entity has exactly one id, else a list column."""
    cols: dict[str, pl.Series] = {}
    for name, ln in lengths.items():
        v = values[name].numpy()
        ln_np = ln.numpy()
        if ln_np.size and (ln_np == 1).all():
            cols[name] = pl.Series(name, v, dtype=pl.Int64)
        else:
            offs = np.concatenate([[0], np.cumsum(ln_np)])
            cols[name] = pl.Series(name, [v[offs[i]:offs[i + 1]].tolist() for i in range(ln_np.size)],
                                   dtype=pl.List(pl.Int64))
    return pl.DataFrame(cols)


def cfm_groups(mi: np.ndarray | torch.Tensor, num_masked: int) -> torch.Tensor:
    """``[F, F]`` bool: row ``s`` = the features masked when ``s`` is the seed — ``s`` and the ``num_masked - 1``
    others with the highest ``mi[s]`` (ties -> lower feature index first)."""
    m = torch.as_tensor(np.asarray(mi), dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"mutual information must be a square [F, F] matrix, got shape {tuple(m.shape)}")
    n = m.shape[0]
    if not 1 <= num_masked <= n:
        raise ValueError(f"num_masked must be in [1, {n}], got {num_masked}")
    groups = torch.zeros(n, n, dtype=torch.bool)
    for s in range(n):
        others = [j for j in range(n) if j != s]
        # stable sort on -mi keeps the lower index first among ties
        ranked = sorted(others, key=lambda j: -float(m[s, j]))
        groups[s, [s, *ranked[:num_masked - 1]]] = True
    return groups


# ------------------------------------------------------------------------------------------------ augmentation
class FeatureMasking(nn.Module):
    """Complementary feature masks, multi-hot dropout and the learned default embeddings.

    ``features``: the encoder's feature names in the order of its embedding blocks; ``widths``: each block's width
    in the ``[B, Σ widths]`` feature-embedding output (a sparse feature's embedding dim; a dense column is width 1).
    ``multi_hot``: features whose ids are dropped with probability ``dropout``. ``mi``: ``[F, F]`` mutual information
    (needed for ``augment='cfm'``).
    """

    def __init__(self, features: Sequence[str], widths: Sequence[int], augment: str = "rfm",
                 mi: np.ndarray | torch.Tensor | None = None, dropout: float = 0.0,
                 multi_hot: Sequence[str] = ()) -> None:
        super().__init__()
        check_choice("augment", augment, AUGMENTS)
        if len(features) != len(widths):
            raise ValueError(f"features ({len(features)}) and widths ({len(widths)}) must have the same length")
        if len(features) < 2:
            raise ValueError(f"feature masking needs at least 2 features, got {list(features)}")
        unknown = sorted(set(multi_hot) - set(features))
        if unknown:
            raise ValueError(f"multi_hot features {unknown} are not among {list(features)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.features = list(features)
        self.widths = [int(w) for w in widths]
        self.augment = augment
        self.dropout = float(dropout)
        self.multi_hot = [f for f in self.features if f in set(multi_hot)]
        self.num_masked = len(self.features) // 2  # view 1 hides ⌊F/2⌋ features, view 2 the other ⌈F/2⌉
        self.default = nn.Parameter(torch.zeros(sum(self.widths)))  # learned "feature unknown" embedding per block
        self.register_buffer("column_feature", torch.repeat_interleave(torch.arange(len(self.widths)),
                                                                       torch.tensor(self.widths)), persistent=False)
        if augment == "cfm":
            if mi is None:
                raise ValueError("augment='cfm' needs the feature-pair mutual information (mutual_information())")
            if tuple(np.shape(mi)) != (len(self.features),) * 2:
                raise ValueError(f"mi must be [{len(self.features)}, {len(self.features)}] (one row per feature "
                                 f"{self.features}), got shape {tuple(np.shape(mi))}")
            self.register_buffer("groups", cfm_groups(mi, self.num_masked))
        else:
            self.groups = None

    def masks(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, F]`` bool: features masked in view 1 (view 2 masks the complement ``~mask``)."""
        F_ = len(self.features)
        if self.augment == "rfm":
            order = torch.rand(n, F_, generator=generator).argsort(dim=1)  # a random permutation per row
            mask = torch.zeros(n, F_, dtype=torch.bool)
            mask.scatter_(1, order[:, :self.num_masked], True)
            return mask
        assert self.groups is not None
        seeds = torch.randint(0, F_, (n,), generator=generator)
        return self.groups.cpu()[seeds]

    def drop(self, kjt: Any, generator: torch.Generator | None = None) -> Any:
        """Drop each id of the multi-hot features with probability ``dropout`` (a new KJT; others unchanged)."""
        if self.dropout == 0 or not self.multi_hot:
            return kjt
        from torchrec import KeyedJaggedTensor

        jts = kjt.to_dict()
        values, lengths = [], []
        for key in kjt.keys():
            v, ln = jts[key].values(), jts[key].lengths()
            if key in self.multi_hot and v.numel():
                keep = torch.rand(v.numel(), generator=generator) >= self.dropout
                bag = torch.repeat_interleave(torch.arange(ln.numel()), ln)
                ln = torch.bincount(bag[keep], minlength=ln.numel())
                v = v[keep]
            values.append(v)
            lengths.append(ln)
        return KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(values), lengths=torch.cat(lengths))

    def fill(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``embedded [B, Σ widths]``, ``mask [B, F]`` -> the masked features' blocks replaced by the defaults."""
        cols = mask.to(embedded.device)[:, self.column_feature.to(embedded.device)]  # [B, Σ widths]
        return torch.where(cols, self.default.to(embedded.dtype).expand_as(embedded), embedded)


# ------------------------------------------------------------------------------------------------------- loss
def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, ids: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE between two views: ``a [N, d]``, ``b [N, d]`` (row ``i`` of both = item ``i``).

    ``-1/N Σ_i log softmax_j(cos(a_i, b_j) / τ)_i`` — the positive of ``a_i`` is ``b_i``, the other rows of ``b`` are
    its negatives (one direction, as in Yao et al.). ``ids [N]``: a candidate with the same id as row ``i`` (the
    same item drawn twice) is masked out rather than pushed away.
    """
    check_positive("temperature", temperature)
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    if ids is not None:
        dup = ids.unsqueeze(1) == ids.unsqueeze(0)
        dup.fill_diagonal_(False)
        logits = logits.masked_fill(dup, float("-inf"))
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


class FeatureEncoder(Protocol):
    """What the SSL term needs from a model: its feature-embedding layer and the network above it."""

    def embed_features(self, kjt: Any, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Raw-id ``KeyedJaggedTensor`` (stride B) [+ dense ``[B, n]``] -> ``[B, Σ widths]`` per-feature blocks."""
        ...

    def encode(self, embedded: torch.Tensor) -> torch.Tensor:
        """``[B, Σ widths]`` -> ``[B, d]`` representation compared between views."""
        ...


class SSLLoss(nn.Module):
    """The auxiliary term ``weight · InfoNCE(view 1, view 2)`` for one :class:`FeatureEncoder`.

    ``forward(encoder, kjt, ids)`` -> the weighted scalar. Each view: multi-hot dropout on the KJT ->
    ``encoder.embed_features`` -> masked blocks replaced by the learned defaults -> ``encoder.encode``.
    """

    def __init__(self, masking: FeatureMasking, weight: float = 1.0, temperature: float = 0.1) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        check_positive("temperature", temperature)
        self.masking = masking
        self.weight = float(weight)
        self.temperature = float(temperature)

    def views(self, encoder: FeatureEncoder, kjt: Any, generator: torch.Generator | None = None,
              dense: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views' representations ``[B, d]`` each."""
        mask = self.masking.masks(kjt.stride(), generator)
        out = []
        for m in (mask, ~mask):
            emb = encoder.embed_features(self.masking.drop(kjt, generator), dense)
            out.append(encoder.encode(self.masking.fill(emb, m)))
        return out[0], out[1]

    def forward(self, encoder: FeatureEncoder, kjt: Any, ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None, dense: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.views(encoder, kjt, generator, dense)
        return self.weight * info_nce(a, b, self.temperature, ids)


class EmbeddingLayerEncoder(nn.Module):
    """:class:`FeatureEncoder` for models without a tower (the CTR zoo): the model's feature-embedding layer
    ``embed(kjt) -> [B, F, d]``, flattened, with the dense features appended as width-1 blocks, then a projection
    MLP owned by the SSL term -> ``[B, out_dim]`` unit vectors. The aux loss thus shapes the shared embedding
    tables (and, through the masked views, the defaults) without touching the model's interaction layers."""

    def __init__(self, embed: Any, num_sparse: int, dim: int, num_dense: int = 0, hidden: Sequence[int] = (128,),
                 out_dim: int = 64) -> None:  # embed may be bound later (EmbeddingLayerSSL binds it per call)
        super().__init__()
        from recsparse.models.two_tower import mlp

        self._embed = embed  # a bound method of the model (not a submodule here: the model owns its tables)
        self.num_dense = int(num_dense)
        self.widths = [int(dim)] * int(num_sparse) + [1] * self.num_dense
        self.proj = mlp(sum(self.widths), hidden, out_dim)

    def embed_features(self, kjt: Any, dense: torch.Tensor | None = None) -> torch.Tensor:
        emb = self._embed(kjt).flatten(1)
        if self.num_dense:
            if dense is None or dense.shape[1] != self.num_dense:
                raise ValueError(f"expected dense features [B, {self.num_dense}], got "
                                 f"{None if dense is None else tuple(dense.shape)}")
            emb = torch.cat([emb, dense.to(emb.dtype)], dim=1)
        return emb

    def encode(self, embedded: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(embedded), dim=-1)


def build_ssl(cfg: SSLConfig, features: Sequence[str], widths: Sequence[int], multi_hot: Sequence[str] = (),
              mi: np.ndarray | None = None) -> SSLLoss:
    """The loss term of ``loss.ssl`` for an encoder with these feature blocks (``mi`` for CFM)."""
    masking = FeatureMasking(features, widths, cfg.augment, mi if cfg.augment == "cfm" else None, cfg.dropout,
                             multi_hot)
    return SSLLoss(masking, cfg.weight, cfg.temperature)


class EmbeddingLayerSSL(nn.Module):
    """The ``loss.ssl`` term of the CTR zoo (:class:`~recsparse.pipelines.ctr.CTRModule` adds it to the BCE):
    ``forward(module, batch) -> weight · InfoNCE`` over two masked views of the first ``cfg.batch_size`` examples
    of the (shuffled) training batch (a CTR batch has no item catalogue to draw from), through the model's feature-embedding layer (``module.model.embed``
    -> ``[B, F, d]``) + the dense columns and a projection head (:class:`EmbeddingLayerEncoder`). ``mi``: ``[F, F]``
    over ``sparse_names + dense_names`` (:func:`mutual_information` of the encoded training frame), for CFM. The
    masks are drawn from a generator seeded by ``(seed, global step)``: a resumed run sees the same views."""

    def __init__(self, cfg: SSLConfig, sparse_names: Sequence[str], dim: int, dense_names: Sequence[str] = (),
                 multi_hot: Sequence[str] = (), mi: np.ndarray | None = None, hidden: Sequence[int] = (128,),
                 out_dim: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.encoder = EmbeddingLayerEncoder(None, len(sparse_names), dim, len(dense_names), hidden, out_dim)
        self.loss = build_ssl(cfg, [*sparse_names, *dense_names], self.encoder.widths, multi_hot, mi)
        self.seed = int(seed)
        self.batch_size = int(cfg.batch_size)

    def forward(self, module: Any, batch: Any) -> torch.Tensor:
        self.encoder._embed = module.model.embed  # the model owns the tables; bound per call, not a submodule
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(module.global_step) + 17)
        kjt, dense = first_rows(batch.sparse, self.batch_size), batch.dense[:self.batch_size]
        return self.loss(self.encoder, kjt, None, g, dense)


def first_rows(kjt: Any, n: int) -> Any:
    """The first ``n`` rows of a ``KeyedJaggedTensor`` (all of it when it has ``<= n``); the training batches are
    already shuffled, so these are a uniform sample of the batch."""
    if kjt.stride() <= n:
        return kjt
    from torchrec import KeyedJaggedTensor

    jts = kjt.to_dict()
    values, lengths = [], []
    for key in kjt.keys():
        ln = jts[key].lengths()[:n]
        values.append(jts[key].values()[:int(ln.sum())])
        lengths.append(ln)
    return KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(values), lengths=torch.cat(lengths))


def ctr_ssl(cfg: SSLConfig, fitted: Any, train: pl.DataFrame | pl.LazyFrame, dim: int,
            seed: int = 0) -> EmbeddingLayerSSL:
    """:class:`EmbeddingLayerSSL` for a model on ``fitted`` (a :class:`~recsparse.embeddings.features.
    FittedFeatureSpec`): multi-hot = its ``MultiHot`` features; CFM's mutual information counted on the encoded
    ``train`` frame (the ids the tables see; numeric columns in quantile bins)."""
    from recsparse.embeddings.features import MultiHot

    names = [*fitted.sparse_names, *fitted.dense_names]
    multi_hot = [f.name for f in fitted.spec.sparse if isinstance(f, MultiHot)]
    mi = mutual_information(fitted.encode_frame(train), names) if cfg.augment == "cfm" else None
    return EmbeddingLayerSSL(cfg, fitted.sparse_names, dim, fitted.dense_names, multi_hot, mi, seed=seed)
