"""LightningModules, one per model family, sharing the optimiser set-up and full-ranking validation/test.

* :class:`MFModule` — :class:`~recsparse.models.MatrixFactorization`, BPR or sampled softmax.
* :class:`LightGCNModule` — :class:`~recsparse.models.LightGCN`, propagates the whole graph each step.
* :class:`TwoTowerModule` — :class:`~recsparse.models.TwoTower` on ``KeyedJaggedTensor`` inputs.

Validation and test each run one step that evaluates every held-out user (:func:`full_ranking_metrics`) and logs
``val/<metric>`` / ``test/<metric>``. Hyper-parameters are saved as a plain dict (checkpoints load with
``weights_only=True``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch

from recsparse.models import (ItemBias, ItemFrequency, LightGCN, MatrixFactorization, TwoTower, bpr_loss,
                              build_cf_mappers, cf_tables, sampled_softmax_loss, table_stats)
from recsparse.models.ssl import SSLConfig, SSLLoss, build_ssl, jagged_frame, mutual_information
from recsparse.pipelines.config import TrainConfig
from recsparse.pipelines.data import RecSplit
from recsparse.pipelines.evaluation import Interactions, full_ranking_metrics, head_tail_metrics, popularity_head
from recsparse.pipelines.optim import dense_parameters, lr_at_epoch, set_fused_learning_rate, tbe_config
from recsparse.pipelines.strategy import fit_once, gather_rows, local_batch


class TaskModule(L.LightningModule):
    """The contract :func:`recsparse.pipelines.train.run` trains through, shared by every task (ranking: MF, LightGCN,
    two-tower; CTR: :class:`recsparse.pipelines.ctr.CTRModule`): ``cfg`` (its ``trainer`` section drives the
    optimiser, the fused TBE tables and the strategy), the trainer's optimiser over the dense parameters, the fused
    tables' lr schedule, ``last_metrics[stage]`` after validation/test, and three methods the pipeline reads."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.save_hyperparameters({"config": cfg.to_dict()})
        self.last_metrics: dict[str, dict[str, float]] = {}

    def num_examples(self, batch: Any) -> int:  # pragma: no cover - abstract
        """Examples in a (global) training batch, for examples/s."""
        raise NotImplementedError

    def table_stats(self) -> dict[str, int]:  # pragma: no cover - abstract
        """``rows`` and ``bytes`` of the whole embedding tables (all shards)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """The task's fields of the results record (dataset, model, mapper ...)."""
        raise NotImplementedError

    def has_validation(self) -> bool:
        """Whether there is a validation set (early stopping and the best checkpoint follow ``val/<monitor>``)."""
        return True

    def fused_tbe_config(self) -> Any:
        """TBE optimizer of ``model.backend=fbgemm`` tables: the trainer's rule and lr (ConfigError if impossible)."""
        return tbe_config(self.cfg.trainer) if self.cfg.model.backend == "fbgemm" else None

    def on_train_epoch_start(self) -> None:
        # fused TBE tables (fbgemm backend, TorchRec-sharded tables) follow the trainer's lr schedule per epoch
        set_fused_learning_rate(self, lr_at_epoch(self.cfg.trainer, self.current_epoch))

    def configure_optimizers(self) -> Any:
        t = self.cfg.trainer
        params = dense_parameters(self)  # fused TBE weights are updated inside backward, with the same settings
        if not params:  # every parameter is a fused table: nothing left for a torch optimizer
            return None
        if t.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        elif t.optimizer == "adagrad":
            opt = torch.optim.Adagrad(params, lr=t.lr, weight_decay=t.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)
        if t.lr_schedule == "constant":
            return opt
        # cosine, stepped once per epoch: the last epoch trains at lr * lr_final_ratio
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t.max_epochs - 1),
                                                           eta_min=t.lr * t.lr_final_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class RankingModule(TaskModule):
    """Shared: optimiser, logQ counter, evaluation. Subclasses set ``self.model`` and implement ``batch_vectors``
    (training vectors) and ``eval_vectors`` (user-vector function, all item vectors)."""

    def __init__(self, cfg: TrainConfig, split: RecSplit) -> None:
        super().__init__(cfg)
        self.split = split
        self.item_freq = ItemFrequency(split.num_items)
        self._train_inter: Interactions | None = None

    def num_examples(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["user"].numel())

    def has_validation(self) -> bool:
        return self.split.val is not None

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.split.name, "model": self.cfg.model.family, "mapper": self.cfg.model.mapper,
                "loss": self.cfg.loss.name}

    def batch_vectors(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        """-> ``user [B, d]``, ``item [B, d]``, optional ``neg [B, d]``, ``uniform [M, d]``, ``reg`` (scalar)."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        lc = self.cfg.loss
        # several processes: each computes the vectors of its slice of the global batch, and the loss is that of the
        # whole batch on every rank (gathered, gradient-carrying): N x B/N trains as 1 x B (recsparse.pipelines.strategy)
        v = self.batch_vectors(local_batch(batch, self.global_rank, self.trainer.world_size))
        v.update({k: gather_rows(v[k]) for k in ("user", "item", "neg") if k in v})
        B = batch["user"].numel()
        if lc.name == "bpr":
            pos = (v["user"] * v["item"]).sum(-1)
            neg = (v["user"] * v["neg"]).sum(-1)
            loss = bpr_loss(pos, neg)
        else:
            # the stream estimate includes this batch (Yi et al. update counts, then correct)
            self.item_freq.update(batch["item"])
            M = batch["uniform"].numel() if "uniform" in batch else 0
            logq = self.item_freq.log_q(batch["item"], B, M) if lc.logq else None
            neg_logq = self.item_freq.log_q(batch["uniform"], B, M) if (lc.logq and M) else None
            loss = sampled_softmax_loss(v["user"], v["item"], lc.temperature, logq, batch["item"],
                                        v.get("uniform"), neg_logq, batch.get("uniform"), in_batch=lc.in_batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=B)
        if lc.reg_weight > 0 and "reg" in v:
            loss = loss + lc.reg_weight * v["reg"]
        aux = self.auxiliary_loss(batch)
        if aux is not None:
            self.log("train/ssl", aux, on_step=True, on_epoch=True, batch_size=B)
            loss = loss + aux
        return loss

    def auxiliary_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """An extra (already weighted) loss term added to the main loss, or ``None`` (the default)."""
        return None

    # ---- evaluation ---------------------------------------------------------------------------------------
    def eval_vectors(self) -> tuple[Any, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def train_interactions(self) -> Interactions:
        if self._train_inter is None:
            self._train_inter = self.split.train_interactions()
        return self._train_inter

    @torch.no_grad()
    def evaluate(self, stage: str) -> dict[str, float]:
        """Full-ranking metrics on ``stage`` ('val' or 'test'); masks training items (and validation items at test)."""
        truth = self.split.val if stage == "val" else self.split.test
        if truth is None:
            raise ValueError("no validation split (set data.val_fraction > 0 or use a leave_last_out dataset)")
        exclude = self.train_interactions()
        if stage == "test" and self.split.val is not None:
            exclude = exclude.union(self.split.val)
        was = self.training
        self.eval()
        user_fn, items = self.eval_vectors()
        e = self.cfg.eval
        m = full_ranking_metrics(user_fn, items, truth, exclude, e.ks, e.chunk_size, e.backend)
        if e.head_fraction > 0:  # the same metrics on the popularity head / tail of the test interactions
            head = popularity_head(self.train_interactions(), e.head_fraction)
            m.update(head_tail_metrics(user_fn, items, truth, head, exclude, e.ks, e.chunk_size, e.backend))
        self.train(was)
        return m

    def _eval_step(self, stage: str) -> None:
        m = self.evaluate(stage)
        self.last_metrics[stage] = m
        for k, v in m.items():
            if not k.endswith("num_users"):
                self.log(f"{stage}/{k}", float(v), prog_bar=(k == self.cfg.eval.monitor), batch_size=1)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("test")


class _CFModule(RankingModule):
    """MF / LightGCN: user and item tables from the embedding core, optional learned item bias."""

    def __init__(self, cfg: TrainConfig, split: RecSplit, defer: bool = False) -> None:
        super().__init__(cfg, split)
        self.item_bias = ItemBias(split.num_items) if cfg.model.item_bias else None
        # defer (several processes): the model is built in configure_model, once the process group exists, so the
        # id-mappers (GraphHash's clustering ...) are fitted on rank 0 only and broadcast
        self.model: Any = None if defer else self.build_model()

    def build_model(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.build_model()

    def _bias_user_constant(self) -> float:
        # softmax divides the whole inner product by the temperature: a user constant of τ leaves b_j unscaled
        return self.cfg.loss.temperature if self.cfg.loss.name == "softmax" else 1.0

    def _with_bias(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fold the item bias into the training vectors (no-op without ``model.item_bias``)."""
        if self.item_bias is None:
            return out
        ib = self.item_bias
        out["user"] = ib.user(out["user"], self._bias_user_constant())
        for k in ("item", "neg", "uniform"):  # each vector set is indexed by the batch's ids of the same name
            if k in out:
                out[k] = ib.item(out[k], batch[k])
        return out

    def _eval_with_bias(self, users: Any, items: torch.Tensor) -> tuple[Any, torch.Tensor]:
        if self.item_bias is None:
            return users, items
        ib, c = self.item_bias, self._bias_user_constant()
        return (lambda ids: ib.user(users(ids), c)), ib.item(items)

    def _tables(self) -> Any:
        s, m = self.split, self.cfg.model
        um, im = fit_once(lambda: build_cf_mappers(m.mapper, s.train, s.num_users, s.num_items, m.user_rows,
                                                   m.item_rows, m.budget_resolution, self.cfg.trainer.seed,
                                                   m.mapper_kwargs))
        return cf_tables(um, im, s.num_users, s.num_items, m.dim, m.backend, m.init_std, self.cfg.trainer.seed,
                         tbe_config=self.fused_tbe_config())

    def table_stats(self) -> dict[str, int]:
        st = table_stats(self.model.tables)
        if self.cfg.model.dsl is not None:  # DSL tables are stored as CSR: count the actual sparse artefact
            from recsparse.embeddings.sparse import export_sparse

            sp = export_sparse(self.model.tables)
            st.update(dense_bytes=st["bytes"], bytes=sp.num_bytes(), nnz=sp.nnz())
        if self.item_bias is not None:  # one fp32 per raw item, outside the id-mapped tables
            st["bytes"] += self.item_bias.bias.numel() * self.item_bias.bias.element_size()
        return st


class MFModule(_CFModule):
    def build_model(self) -> MatrixFactorization:
        s = self.split
        return MatrixFactorization(self._tables(), s.num_users, s.num_items, self.cfg.model.normalize)

    def batch_vectors(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mf = self.model
        # ONE lookup per table per step: a fused TBE optimizer (fbgemm backend, sharded tables) updates at every
        # backward of a lookup, and two Adagrad updates are not one update with the summed gradient
        keys = [k for k in ("item", "neg", "uniform") if k in batch]
        ru = mf.raw_user(batch["user"])
        raw = dict(zip(keys, mf.raw_item(torch.cat([batch[k] for k in keys])).split(
            [batch[k].numel() for k in keys])))
        out = {"user": mf._out(ru)} | {k: mf._out(raw[k]) for k in keys}
        reg = ru.pow(2).sum() + sum(raw[k].pow(2).sum() for k in keys if k != "uniform")
        out["reg"] = reg / (2 * batch["user"].numel())
        return self._with_bias(out, batch)

    def eval_vectors(self) -> tuple[Any, torch.Tensor]:
        return self._eval_with_bias(self.model.user_vectors, self.model.item_vectors())


class LightGCNModule(_CFModule):
    def build_model(self) -> LightGCN:
        s = self.split
        return LightGCN.from_frame(self._tables(), s.train, s.num_users, s.num_items, self.cfg.model.num_layers)

    def batch_vectors(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g = self.model
        ego = g.ego()
        pu, pi = g.propagate(ego)
        U = g.num_users
        out = {"user": pu[batch["user"]], "item": pi[batch["item"]]}
        reg = ego[batch["user"]].pow(2).sum() + ego[U + batch["item"]].pow(2).sum()
        if "neg" in batch:
            out["neg"] = pi[batch["neg"]]
            reg = reg + ego[U + batch["neg"]].pow(2).sum()
        if "uniform" in batch:
            out["uniform"] = pi[batch["uniform"]]
        if self.cfg.model.normalize:
            out = {k: torch.nn.functional.normalize(v, dim=-1) for k, v in out.items()}
        out["reg"] = reg / (2 * batch["user"].numel())
        return self._with_bias(out, batch)

    def eval_vectors(self) -> tuple[Any, torch.Tensor]:
        pu, pi = self.model.propagate()
        if self.cfg.model.normalize:
            pu, pi = torch.nn.functional.normalize(pu, dim=-1), torch.nn.functional.normalize(pi, dim=-1)
        inside = self.model.num_users

        def users(ids: torch.Tensor) -> torch.Tensor:
            # an unseen user (no node in the graph) falls back to its mapped table row
            known = ids < inside
            vec = pu[ids.clamp(max=inside - 1)]
            if not bool(known.all()):
                raw = self.model.tables.embed("user", ids)
                if self.cfg.model.normalize:
                    raw = torch.nn.functional.normalize(raw, dim=-1)
                vec = torch.where(known.unsqueeze(1), vec, raw)
            return vec
        return self._eval_with_bias(users, pi)


class TwoTowerModule(RankingModule):
    def __init__(self, cfg: TrainConfig, split: RecSplit) -> None:
        super().__init__(cfg, split)
        if split.user_features is None or split.item_features is None:
            raise ValueError(f"two_tower needs user/item feature stores; {split.name} has none")
        from recsparse.embeddings import FeatureConfig

        m = cfg.model

        def feats(store: Any, id_feature: str, n_ids: int) -> list[FeatureConfig]:
            out = []
            # the split builds every side feature; the tower uses them with model.side_features (else the id only)
            for f in (store.names if m.side_features else [id_feature]):
                if f == id_feature and m.mapper != "full":
                    rows = m.user_rows if id_feature == "user_id" else m.item_rows
                    out.append(FeatureConfig(f, n_ids, m.dim, mapper=m.mapper, num_rows=rows,
                                             mapper_kwargs=dict(m.mapper_kwargs)))
                else:
                    out.append(FeatureConfig(f, store.vocab_sizes[f], m.dim, mapper="full",
                                             pooling="mean" if f == "genre" else "sum"))
            return out

        self.model = TwoTower(feats(split.user_features, "user_id", split.num_users),
                              feats(split.item_features, "item_id", split.num_items), m.hidden, m.out_dim,
                              m.backend, m.init_std, cfg.trainer.seed, m.dropout, tbe_config=self.fused_tbe_config())
        self.ssl = item_tower_ssl(cfg.loss.ssl, self.model.item_tower, split.item_features)

    def auxiliary_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """SSL term (``loss.ssl``) on items drawn uniformly from the catalogue; the draw is a function of (seed,
        step), so a resumed run sees the same SSL batches."""
        if self.ssl is None:
            return None
        assert self.split.item_features is not None
        g = torch.Generator().manual_seed(self.cfg.trainer.seed * 1_000_003 + int(self.global_step) + 17)
        ids = torch.randint(0, self.split.num_items, (self.cfg.loss.ssl.batch_size,), generator=g)
        return self.ssl(self.model.item_tower, self.split.item_features.kjt(ids), ids, g)

    def batch_vectors(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s = self.split
        assert s.user_features is not None and s.item_features is not None
        out = {"user": self.model.user_tower(s.user_features.kjt(batch["user"]))}
        keys = [k for k in ("item", "uniform") if k in batch]  # one item-tower lookup per step (see MFModule)
        items = self.model.item_tower(s.item_features.kjt(torch.cat([batch[k] for k in keys])))
        return out | dict(zip(keys, items.split([batch[k].numel() for k in keys])))

    def eval_vectors(self) -> tuple[Any, torch.Tensor]:
        s = self.split
        assert s.user_features is not None and s.item_features is not None
        items = self.model.item_tower(s.item_features.kjt(torch.arange(s.num_items)))

        def users(ids: torch.Tensor) -> torch.Tensor:
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= s.num_users):
                raise ValueError(f"two_tower: user ids must be in [0, {s.num_users}) (no side features otherwise)")
            return self.model.user_tower(s.user_features.kjt(ids))
        return users, items

    def table_stats(self) -> dict[str, int]:
        return {"rows": sum(sum(t.ebc.num_rows().values()) for t in (self.model.user_tower, self.model.item_tower)),
                "bytes": sum(t.ebc.num_bytes() for t in (self.model.user_tower, self.model.item_tower))}


def item_tower_ssl(cfg: SSLConfig, tower: Any, store: Any) -> SSLLoss | None:
    """The ``loss.ssl`` term over the item tower's features (``None`` when its weight is 0). Multi-hot = any item
    with more than one id in a feature; CFM's mutual information is counted over the catalogue (one row per item:
    the distribution the SSL batch is drawn from)."""
    if not cfg.enabled:
        return None
    names = tower.ebc.feature_names
    multi_hot = [f for f in names if bool((store.lengths[f] != 1).any())]
    mi = mutual_information(jagged_frame(store.lengths, store.values), names) if cfg.augment == "cfm" else None
    return build_ssl(cfg, names, tower.ebc.embedding_dims, multi_hot, mi)


MODULES = {"mf": MFModule, "lightgcn": LightGCNModule, "two_tower": TwoTowerModule}


def build_module(cfg: TrainConfig, split: RecSplit, defer: bool = False) -> RankingModule:
    """The module of ``model.family``. ``defer`` (MF, LightGCN): build the model in ``configure_model`` (after the
    process group exists: the id-mappers are then fitted on rank 0 only and broadcast)."""
    if defer and cfg.model.family in ("mf", "lightgcn"):
        return MODULES[cfg.model.family](cfg, split, defer=True)  # type: ignore[call-arg]
    return MODULES[cfg.model.family](cfg, split)
