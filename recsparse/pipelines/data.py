"""Training data from the registry: splits, side-feature stores (-> ``KeyedJaggedTensor``), and a batch loader that
samples negatives.

* :func:`build_split` — ``ImplicitFeedback`` (Gowalla: its own train/test files) or ``AtomicDataset`` (ML-100K:
  leave-last-out by timestamp) -> :class:`RecSplit` with dense ids, a train frame and validation/test
  :class:`~recsparse.pipelines.evaluation.Interactions`.
* :class:`FeatureStore` — per-entity jagged features; ``kjt(ids)`` builds the tower input.
* :class:`InteractionBatches` + :class:`EpochBatchSampler` — whole batches per ``__getitem__`` (vectorised; a
  per-example loader is far too slow for 810k interactions on CPU). Batch ``b`` of epoch ``e`` is a pure function of
  ``(seed, e, b)``: a resumed run sees exactly the batches and negatives of an uninterrupted one.
* :class:`RecDataModule` — the Lightning DataModule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import lightning.pytorch as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from recsparse.errors import ConfigError
from recsparse.pipelines.config import TrainConfig
from recsparse.pipelines.evaluation import Interactions


# ------------------------------------------------------------------------------------------------------ features
@dataclass
class FeatureStore:
    """Jagged features of ``num`` entities: ``feature -> (lengths [num], values [nnz])`` (vocab indices) and
    ``vocab_sizes``. ``kjt(ids [B])`` -> KeyedJaggedTensor (keys = features, stride B) of those entities."""

    lengths: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    vocab_sizes: dict[str, int]

    @property
    def names(self) -> list[str]:
        return list(self.lengths)

    def kjt(self, ids: torch.Tensor) -> Any:
        from torchrec import KeyedJaggedTensor

        vals, lens = [], []
        for f in self.names:
            ln, v = self.lengths[f], self.values[f]
            offs = torch.cumsum(ln, 0) - ln
            li = ln[ids]
            starts = torch.repeat_interleave(offs[ids], li)
            within = torch.arange(int(li.sum())) - torch.repeat_interleave(torch.cumsum(li, 0) - li, li)
            vals.append(v[starts + within])
            lens.append(li)
        return KeyedJaggedTensor(keys=self.names, values=torch.cat(vals), lengths=torch.cat(lens))

    @classmethod
    def from_columns(cls, columns: dict[str, list[list[int]] | np.ndarray], vocab_sizes: dict[str, int]) -> "FeatureStore":
        lengths, values = {}, {}
        for f, col in columns.items():
            if isinstance(col, np.ndarray):  # one id per entity
                lengths[f] = torch.ones(len(col), dtype=torch.long)
                values[f] = torch.as_tensor(col, dtype=torch.long)
            else:
                lengths[f] = torch.tensor([len(x) for x in col], dtype=torch.long)
                values[f] = torch.tensor([v for x in col for v in x], dtype=torch.long)
        return cls(lengths, values, dict(vocab_sizes))


def _codes(series: pl.Series) -> tuple[np.ndarray, int]:
    """Value column -> dense codes by sorted distinct value (vectorised), and the number of distinct values."""
    uniq = series.unique().sort()
    codes = series.replace_strict(uniq, pl.Series(range(uniq.len()), dtype=pl.Int64), return_dtype=pl.Int64)
    return codes.to_numpy().copy(), uniq.len()


# --------------------------------------------------------------------------------------------------------- split
@dataclass
class RecSplit:
    """Dense-id split. ``train``: frame ``(user_id, item_id)``; ``val``/``test``: held-out interactions (``val`` may
    be ``None``); ``user_features``/``item_features`` only for datasets with side information."""

    name: str
    num_users: int
    num_items: int
    train: pl.DataFrame
    val: Interactions | None
    test: Interactions
    user_features: FeatureStore | None = None
    item_features: FeatureStore | None = None

    def train_interactions(self) -> Interactions:
        return Interactions.from_pairs(self.train["user_id"].to_numpy(), self.train["item_id"].to_numpy(),
                                       self.num_users, self.num_items)


def build_split(cfg: TrainConfig) -> RecSplit:
    from recsparse.data import AtomicDataset, ImplicitFeedback, load

    ds = load(cfg.data.dataset)
    if isinstance(ds, ImplicitFeedback):
        if cfg.data.split != "given":
            raise ConfigError(f"data.split={cfg.data.split!r} needs timestamps; {ds.name} has given train/test files "
                              "(use data.split=given)")
        if cfg.data.min_rating is not None:
            raise ConfigError(f"data.min_rating: {ds.name} is implicit feedback (no ratings); drop data.min_rating")
        train = ds.train.select("user_id", "item_id")
        val = None
        if cfg.data.val_fraction > 0:
            # per-user random fraction of the training items (at least one kept for training)
            rng = np.random.default_rng(cfg.data.seed)
            r = rng.random(train.height)
            train = train.with_columns(pl.Series("_r", r))
            train = train.with_columns(pl.col("_r").rank("ordinal").over("user_id").alias("_rank"),
                                       pl.len().over("user_id").alias("_n"))
            n_val = (pl.col("_n").cast(pl.Float64) * cfg.data.val_fraction).floor().clip(0, pl.col("_n") - 1)
            is_val = pl.col("_rank") <= n_val
            v = train.filter(is_val)
            train = train.filter(~is_val).select("user_id", "item_id")
            val = Interactions.from_pairs(v["user_id"].to_numpy(), v["item_id"].to_numpy(), ds.num_users,
                                          ds.num_items)
        test = Interactions.from_pairs(ds.test["user_id"].to_numpy(), ds.test["item_id"].to_numpy(), ds.num_users,
                                       ds.num_items)
        return RecSplit(ds.name, ds.num_users, ds.num_items, train, val, test)
    if isinstance(ds, AtomicDataset):
        return _split_atomic(ds, cfg)
    raise ConfigError(f"data.dataset={cfg.data.dataset!r} is not a recommendation dataset (got {type(ds).__name__})")


def _split_atomic(ds: Any, cfg: TrainConfig) -> RecSplit:
    if cfg.data.split != "leave_last_out":
        raise ConfigError(f"data.split must be 'leave_last_out' for {ds.name} (no given test file)")
    inter = ds.inter
    if cfg.data.min_rating is not None:
        if "rating" not in inter.columns:
            raise ConfigError(f"data.min_rating: {ds.name} has no rating column (implicit feedback); "
                              "drop data.min_rating")
        inter = inter.filter(pl.col("rating") >= cfg.data.min_rating)
    users = sorted(set(inter["user_id"].to_list()) | set(ds.user["user_id"].to_list() if ds.user is not None else []),
                   key=lambda s: (len(s), s))
    items = sorted(set(inter["item_id"].to_list()) | set(ds.item["item_id"].to_list() if ds.item is not None else []),
                   key=lambda s: (len(s), s))
    uidx = {u: i for i, u in enumerate(users)}
    iidx = {t: i for i, t in enumerate(items)}
    f = pl.DataFrame({"user_id": [uidx[u] for u in inter["user_id"].to_list()],
                      "item_id": [iidx[t] for t in inter["item_id"].to_list()],
                      "ts": inter["timestamp"] if "timestamp" in inter.columns else np.zeros(inter.height)})
    # leave-last-out: per user by (timestamp, item id) — last -> test, second last -> validation
    f = f.sort(["user_id", "ts", "item_id"]).with_columns(
        pl.int_range(pl.len()).reverse().over("user_id").alias("_from_end"))
    test_f = f.filter(pl.col("_from_end") == 0)
    val_f = f.filter(pl.col("_from_end") == 1)
    train = f.filter(pl.col("_from_end") >= 2).select("user_id", "item_id")
    nu, ni = len(users), len(items)
    test = Interactions.from_pairs(test_f["user_id"].to_numpy(), test_f["item_id"].to_numpy(), nu, ni)
    val = Interactions.from_pairs(val_f["user_id"].to_numpy(), val_f["item_id"].to_numpy(), nu, ni)
    uf, itf = _feature_stores(ds, uidx, iidx)
    return RecSplit(ds.name, nu, ni, train, val, test, uf, itf)


# users: id + MovieLens age group, gender, occupation; items: id + genres (a bag) + release half-decade.
# Which of them a model uses is the model's choice (two-tower: model.side_features); the split builds them all.
USER_SIDE = {"age": "age_bucket", "gender": "gender", "occupation": "occupation"}
ITEM_SIDE = {"genre": "genres", "year": "year_bucket"}


def _feature_stores(ds: Any, uidx: dict[str, int], iidx: dict[str, int]) -> tuple[FeatureStore, FeatureStore]:
    """Id + side-feature stores of every user and item (side columns from :mod:`recsparse.data.movielens`, when
    the dataset has them); the same for every model family."""
    from recsparse.data.movielens import item_features, user_features

    nu, ni = len(uidx), len(iidx)
    ucols: dict[str, Any] = {"user_id": np.arange(nu)}
    usizes = {"user_id": nu}
    icols: dict[str, Any] = {"item_id": np.arange(ni)}
    isizes = {"item_id": ni}
    if ds.user is not None:
        ut = _dense_order(user_features(ds.user), "user_id", uidx, f"{ds.name}.user", "user")
        for name, col in USER_SIDE.items():
            if col in ut.columns:
                ucols[name], usizes[name] = _codes(ut[col])
    if ds.item is not None:
        it = _dense_order(item_features(ds.item), "item_id", iidx, f"{ds.name}.item", "item")
        if "genres" in it.columns:
            g = it["genres"].fill_null([])
            flat = g.explode().drop_nulls()
            uniq = flat.unique().sort()
            codes = g.list.eval(pl.element().replace_strict(uniq, pl.Series(range(uniq.len()), dtype=pl.Int64),
                                                            return_dtype=pl.Int64))
            icols["genre"], isizes["genre"] = codes.to_list(), uniq.len()
        if "year_bucket" in it.columns:
            icols["year"], isizes["year"] = _codes(it["year_bucket"])
    return FeatureStore.from_columns(ucols, usizes), FeatureStore.from_columns(icols, isizes)


def _dense_order(frame: pl.DataFrame, key: str, index: dict[str, int], source: str, what: str) -> pl.DataFrame:
    """Side-feature rows in dense-id order; every entity exactly once."""
    out = frame.with_columns(pl.col(key).replace_strict(index, return_dtype=pl.Int64, default=None).alias("_i")) \
        .drop_nulls("_i").sort("_i")
    if out.height != len(index):
        raise ValueError(f"{source} must list every {what} once ({out.height} rows, {len(index)} {what}s)")
    return out


# ------------------------------------------------------------------------------------------------------ batches
class EpochBatchSampler(Sampler):
    """Yields ``(epoch, batch_index)``; ``epoch`` counts the passes started over the data. The count is checkpoint
    state (via :class:`RecDataModule`'s ``state_dict``): Lightning's own epoch counters disagree after resuming from a
    checkpoint written at validation end, so the sampler keeps its own."""

    def __init__(self, num_batches: int, epoch: int = 0) -> None:
        self.num_batches = int(num_batches)
        self.epoch = int(epoch)  # the next pass

    def __iter__(self) -> Iterator[tuple[int, int]]:
        e = self.epoch
        self.epoch += 1
        return iter([(e, b) for b in range(self.num_batches)])

    def __len__(self) -> int:
        return self.num_batches


class InteractionBatches(Dataset):
    """Batches of training pairs with negatives. Item ``(epoch, b)`` -> dict:

    * ``user [B]``, ``item [B]`` — positives (a fresh permutation of all training pairs per epoch; the last partial
      batch is dropped so in-batch softmax always sees ``B`` candidates);
    * ``neg [B]`` (``num_neg_per_pos=1``, BPR) — per-row uniform item that is not a training item of that user
      (vectorised rejection sampling; rows still rejected after a few rounds, users with almost every item, draw
      exactly from the user's complement);
    * ``uniform [M]`` (``num_uniform > 0``) — items drawn uniformly from the catalog, shared by the batch.
    """

    def __init__(self, train: Interactions, batch_size: int, seed: int = 0, num_neg_per_pos: int = 0,
                 num_uniform: int = 0) -> None:
        self.train = train
        self.users = torch.repeat_interleave(torch.arange(train.num_users), train.lengths())
        self.items = train.indices
        self.keys = self.users * train.num_items + self.items  # sorted (CSR order)
        self.batch_size = int(min(batch_size, self.users.numel()))
        self.seed, self.num_neg, self.num_uniform = int(seed), int(num_neg_per_pos), int(num_uniform)
        self._perm_epoch: int | None = None
        self._perm: torch.Tensor | None = None
        if self.num_neg:
            full = torch.nonzero(train.lengths() >= train.num_items).flatten()
            if full.numel():
                from recsparse.data.errors import DataError

                raise DataError(f"BPR negatives: user {int(full[0])} has a training interaction with every one of "
                                f"the {train.num_items} items, so no negative exists ({full.numel()} such users); "
                                "drop those users or use loss.name=softmax")

    def __len__(self) -> int:
        return self.users.numel() // self.batch_size

    def _generator(self, *parts: int) -> torch.Generator:
        s = self.seed
        for p in parts:
            s = (s * 1_000_003 + p + 1) % (2**62)
        return torch.Generator().manual_seed(s)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            self._perm = torch.randperm(self.users.numel(), generator=self._generator(epoch))
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, b = key
        idx = self._permutation(epoch)[b * self.batch_size:(b + 1) * self.batch_size]
        out = {"user": self.users[idx], "item": self.items[idx]}
        g = self._generator(epoch, b, 7)
        n_items = self.train.num_items
        if self.num_neg:
            u = out["user"]
            neg = torch.randint(0, n_items, (u.numel(),), generator=g)
            for _ in range(20):
                bad = _isin(u * n_items + neg, self.keys)
                if not bool(bad.any()):
                    break
                neg[bad] = torch.randint(0, n_items, (int(bad.sum()),), generator=g)
            else:
                bad = _isin(u * n_items + neg, self.keys)
                for row in torch.nonzero(bad).flatten().tolist():
                    neg[row] = self._complement_draw(int(u[row]), g)
            out["neg"] = neg
        if self.num_uniform:
            out["uniform"] = torch.randint(0, n_items, (self.num_uniform,), generator=g)
        return out


    def _complement_draw(self, user: int, g: torch.Generator) -> int:
        """A uniform item that ``user`` has no training interaction with: the r-th item of the complement, with
        r uniform in [0, num_items - degree). With sorted positives p_j, the answer is r + #{j: p_j - j <= r}."""
        pos = self.train.indices[self.train.indptr[user]:self.train.indptr[user + 1]]
        r = int(torch.randint(0, self.train.num_items - pos.numel(), (1,), generator=g))
        gaps = pos - torch.arange(pos.numel())  # non-positives before p_j, non-decreasing
        return r + int(torch.searchsorted(gaps, torch.tensor([r]), right=True))


def _isin(x: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    pos = torch.searchsorted(sorted_keys, x).clamp_(max=max(sorted_keys.numel() - 1, 0))
    return sorted_keys[pos] == x


class RecDataModule(L.LightningDataModule):
    """Lightning DataModule: builds the split once (``setup`` is idempotent), serves training batches with sampled
    negatives and a one-step validation/test loader (the module runs full-ranking evaluation in that step)."""

    def __init__(self, cfg: TrainConfig, split: RecSplit | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.split = split
        self._train_inter: Interactions | None = None
        self._sampler: EpochBatchSampler | None = None
        self._epochs_started = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_started": self._sampler.epoch if self._sampler is not None else self._epochs_started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epochs_started = int(state["epochs_started"])
        if self._sampler is not None:
            self._sampler.epoch = self._epochs_started

    def setup(self, stage: str | None = None) -> None:
        if self.split is None:
            self.split = build_split(self.cfg)
        if self._train_inter is None:
            self._train_inter = self.split.train_interactions()

    @property
    def train_interactions(self) -> Interactions:
        self.setup()
        assert self._train_inter is not None
        return self._train_inter

    def train_dataloader(self) -> DataLoader:
        self.setup()
        loss = self.cfg.loss
        ds = InteractionBatches(self.train_interactions, self.cfg.trainer.batch_size, self.cfg.trainer.seed,
                                num_neg_per_pos=1 if loss.name == "bpr" else 0,
                                num_uniform=loss.num_uniform_negatives if loss.name == "softmax" else 0)
        self._sampler = EpochBatchSampler(len(ds), self._epochs_started)
        return DataLoader(ds, sampler=self._sampler, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([torch.zeros(1)], batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader([torch.zeros(1)], batch_size=None)
