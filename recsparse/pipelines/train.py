"""Fit + test one config with Lightning: loggers, checkpoints (resume, ``weights_only``), early stopping, metrics.

``run(cfg)`` writes under ``cfg.output_dir``: ``checkpoints/`` (``last.ckpt`` every epoch, ``best.ckpt`` by the
validation monitor), ``csv/version_N/`` (CSVLogger), ``tb/version_N/`` (TensorBoard; one version per (re)start), and ``metrics.json`` (test metrics, best
validation metrics, epochs, wall time, training throughput, table rows/bytes, the resolved config).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import Strategy

from recsparse.io import write_json
from recsparse.pipelines.config import TrainConfig
from recsparse.pipelines.data import RecDataModule, RecSplit
from recsparse.pipelines.modules import RankingModule, build_module
from recsparse.pipelines.strategy import strategy_devices


class Throughput(Callback):
    """Training examples per second of each epoch (wall time of the epoch's training batches, no evaluation)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._t = 0.0
        self._n = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t, self._n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._n += int(batch["user"].numel())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dt = time.perf_counter() - self._t
        eps = self._n / dt if dt > 0 else 0.0
        self.epochs.append({"epoch": trainer.current_epoch, "seconds": dt, "examples": self._n,
                            "examples_per_s": eps})
        pl_module.log("train/examples_per_s", eps, on_epoch=True, batch_size=1)


def resolve_resume(cfg: TrainConfig) -> str | None:
    r = cfg.trainer.resume
    if r is None:
        return None
    if r == "last":
        p = cfg.output_dir / "checkpoints" / "last.ckpt"
        return str(p) if p.is_file() else None
    if not Path(r).is_file():
        raise FileNotFoundError(f"trainer.resume: checkpoint {r} not found")
    return r


def build_trainer(cfg: TrainConfig, has_val: bool, extra_callbacks: list[Callback] | None = None,
                  strategy: Strategy | None = None) -> tuple[L.Trainer, ModelCheckpoint | None, Throughput]:
    out = cfg.output_dir
    monitor = f"val/{cfg.eval.monitor}"
    thr = Throughput()
    callbacks: list[Callback] = [thr]
    best = None
    if has_val:
        best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode="max",
                               save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
        callbacks += [best, EarlyStopping(monitor=monitor, mode="max", patience=cfg.trainer.patience)]
    # latest epoch -> epoch<N>.ckpt + last.ckpt every epoch (save_last alone only copies when a file is saved).
    # It comes AFTER best/early-stopping so the checkpoint holds their state already updated for this epoch.
    callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", filename="epoch{epoch}", save_top_k=1,
                                     save_last=True, auto_insert_metric_name=False))
    if cfg.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    callbacks += list(extra_callbacks or [])
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs, accelerator="cpu", deterministic=cfg.trainer.deterministic,
        # several processes (TorchRecStrategy): every rank reads the whole global batch and keeps its slice
        **({"devices": 1} if strategy is None else {"strategy": strategy, "devices": strategy_devices(),
                                                     "use_distributed_sampler": False}),
        # versioned log dirs (csv/version_N): a resumed run adds a version instead of overwriting the history
        logger=[CSVLogger(out, name="csv"), TensorBoardLogger(out, name="tb")],
        callbacks=callbacks, enable_progress_bar=cfg.trainer.progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1.0 if has_val else 0,
        check_val_every_n_epoch=cfg.trainer.check_val_every_n_epoch,
        limit_train_batches=cfg.trainer.limit_train_batches, log_every_n_steps=10,
        default_root_dir=str(out))
    return trainer, best, thr


def run(cfg: TrainConfig, split: RecSplit | None = None, extra_callbacks: list[Callback] | None = None,
        test: bool = True, strategy: Strategy | None = None) -> dict[str, Any]:
    """Fit (resuming if asked) and test; returns (and writes ``metrics.json``) the results record.
    ``strategy``: a :class:`~recsparse.pipelines.strategy.TorchRecStrategy` trains on several processes."""
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    dm = RecDataModule(cfg, split)
    dm.setup()
    assert dm.split is not None
    module: RankingModule = build_module(cfg, dm.split)
    has_val = dm.split.val is not None
    trainer, best, thr = build_trainer(cfg, has_val, extra_callbacks, strategy)
    ckpt = resolve_resume(cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    fit_s = time.perf_counter() - t0
    rec: dict[str, Any] = {"name": cfg.name, "dataset": dm.split.name, "model": cfg.model.family,
                           "mapper": cfg.model.mapper, "loss": cfg.loss.name, "epochs": trainer.current_epoch,
                           "resumed_from": ckpt, "fit_s": round(fit_s, 2)}
    rec.update(module.table_stats())
    if thr.epochs:
        rec["train_examples_per_s"] = round(sum(e["examples"] for e in thr.epochs)
                                            / sum(e["seconds"] for e in thr.epochs), 1)
    if has_val and best is not None and best.best_model_score is not None:
        rec["best_val"] = {"metric": cfg.eval.monitor, "value": float(best.best_model_score),
                           "checkpoint": best.best_model_path}
    if test:
        t1 = time.perf_counter()
        use_best = has_val and best is not None and best.best_model_path
        trainer.test(module, datamodule=dm, ckpt_path=best.best_model_path if use_best else None, weights_only=True,
                     verbose=False)
        rec["eval_s"] = round(time.perf_counter() - t1, 2)
        rec["test"] = module.last_metrics["test"]
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    rec["config"] = cfg.to_dict()
    write_json(cfg.output_dir / "metrics.json", rec)
    return rec


def summary(rec: dict[str, Any]) -> str:
    t = rec.get("test", {})
    keys = [k for k in t if k != "num_users"]
    return json.dumps({k: round(t[k], 4) for k in keys} | {"epochs": rec["epochs"], "wall_s": rec["wall_s"]})
