"""Fit + test one config with Lightning: loggers, checkpoints (resume, ``weights_only``), early stopping, metrics.

The one training entry point of every task: ``task: ranking`` (:class:`~recsparse.pipelines.config.TrainConfig`:
MF, LightGCN, two-tower) and ``task: ctr`` (:class:`~recsparse.pipelines.config.CTRConfig`: the CTR zoo). A task
contributes a data module and a :class:`~recsparse.pipelines.modules.TaskModule` (:func:`build_task`); the run
folder, checkpoints, resume/overwrite rules, strategy (``trainer.strategy=torchrec trainer.devices=N``) and
``metrics.json`` are the same for all.

``run(cfg)`` writes under ``cfg.output_dir``: ``checkpoints/`` (``last.ckpt`` every epoch, ``best.ckpt`` by the
validation monitor), ``csv/version_N/`` (CSVLogger), ``tb/version_N/`` (TensorBoard; one version per (re)start), and ``metrics.json`` (test metrics, best
validation metrics, epochs, wall time, training throughput, table rows/bytes, the resolved config).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import Strategy

from recsparse.errors import ConfigError
from recsparse.io import write_json
from recsparse.pipelines.config import CTRConfig, RunConfig, TrainConfig
from recsparse.pipelines.data import RecDataModule, RecSplit
from recsparse.pipelines.modules import TaskModule, build_module
from recsparse.pipelines.strategy import strategy_devices, strategy_from_config


class Throughput(Callback):
    """Training examples per second of each epoch: from the epoch's start to its last training batch's end, so the
    validation that Lightning runs before ``on_train_epoch_end`` is not counted."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._t = self._last = 0.0
        self._n = 0
        self._loss_sum, self._loss_n = 0.0, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t = self._last = time.perf_counter()
        self._n, self._loss_sum, self._loss_n = 0, 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._n += pl_module.num_examples(batch)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum += float(loss.detach())
            self._loss_n += 1
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dt = self._last - self._t
        eps = self._n / dt if dt > 0 else 0.0
        self.epochs.append({"epoch": trainer.current_epoch, "seconds": dt, "examples": self._n,
                            "examples_per_s": eps,
                            "loss": self._loss_sum / self._loss_n if self._loss_n else float("nan")})
        pl_module.log("train/examples_per_s", eps, on_epoch=True, batch_size=1)


class EpochLog(Callback):
    """One line per epoch when no progress bar is shown (``trainer.progress_bar=false`` or output is not a
    terminal), so a log file shows where a long run is: epoch, mean training loss, examples/s, the validation
    monitor, elapsed wall time. Goes after :class:`Throughput` in the callback list (it reads its last epoch)."""

    def __init__(self, thr: Throughput, monitor: str, max_epochs: int, stream: Any = None) -> None:
        self.thr, self.monitor, self.max_epochs = thr, monitor, max_epochs
        self.stream = stream
        self._t0 = time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:  # several processes: one log, not one per rank
            return
        e = self.thr.epochs[-1]
        val = trainer.callback_metrics.get(f"val/{self.monitor}")
        parts = [f"epoch {trainer.current_epoch + 1}/{self.max_epochs}", f"loss {e['loss']:.4f}",
                 f"{e['examples_per_s']:,.0f} examples/s"]
        if val is not None:
            parts.append(f"val {self.monitor} {float(val):.4f}")
        parts.append(f"elapsed {_hms(time.perf_counter() - self._t0)}")
        print("  ".join(parts), file=self.stream or sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def show_progress_bar(cfg: RunConfig) -> bool:
    """A bar only when asked for and stderr is a terminal: in a log file a bar is noise and hides progress."""
    return cfg.trainer.progress_bar and sys.stderr.isatty()


# what a folder written by run() contains; overwrite only clears folders that look like one
RUN_MARKERS = ("checkpoints", "metrics.json", "csv", "tb")


def launch_rank() -> int:
    """This process's rank as set by the launcher (torchrun: ``RANK``; Lightning's script launcher: ``LOCAL_RANK``
    in the children it starts); 0 for a single process."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def prepare_run_folder(cfg: RunConfig) -> str | None:
    """Check the run folder against ``trainer.resume`` / ``trainer.overwrite``; returns the checkpoint to resume.

    * folder missing or empty: a fresh run (``resume=last`` with nothing to resume starts fresh too);
    * ``resume=last``: ``checkpoints/last.ckpt`` must exist in a non-empty folder; ``resume=PATH``: PATH must exist;
    * ``overwrite=true``: a folder that looks like a run folder is removed first (anything else is refused);
    * otherwise an existing non-empty folder is an error: a second run would mix its checkpoints and metrics with
      the first one's.
    """
    out, t = cfg.output_dir, cfg.trainer
    last = out / "checkpoints" / "last.ckpt"  # a file, or a folder for sharded (DCP) checkpoints
    if launch_rank() != 0:  # rank 0 has checked (and cleared) the folder; the others only follow it
        return t.resume if t.resume not in (None, "last") else (str(last) if t.resume and last.exists() else None)
    used = out.is_dir() and any(out.iterdir())
    if out.exists() and not out.is_dir():
        raise ConfigError(f"trainer.output_dir: {out} exists and is not a folder")
    if t.resume is not None:
        if t.resume != "last":
            if not Path(t.resume).exists():
                raise ConfigError(f"trainer.resume: checkpoint {t.resume} not found")
            return t.resume
        if last.exists():
            return str(last)
        if used:
            raise ConfigError(f"trainer.resume=last: {out} has no checkpoints/last.ckpt to resume; "
                              "use trainer.overwrite=true to start it again")
        return None
    if used:
        if not t.overwrite:
            raise ConfigError(f"run folder {out} already exists: continue it with trainer.resume=last, replace it "
                              "with trainer.overwrite=true, or pick another name=")
        if not any((out / m).exists() for m in RUN_MARKERS):
            raise ConfigError(f"trainer.overwrite: {out} does not look like a run folder (none of "
                              f"{', '.join(RUN_MARKERS)}); not removing it")
        shutil.rmtree(out)
    return None


def build_trainer(cfg: RunConfig, has_val: bool, extra_callbacks: list[Callback] | None = None,
                  strategy: Strategy | None = None) -> tuple[L.Trainer, ModelCheckpoint | None, Throughput]:
    out = cfg.output_dir
    monitor = f"val/{cfg.monitor}"
    thr = Throughput()
    callbacks: list[Callback] = [thr]
    best = None
    if has_val:
        best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=monitor, mode="max",
                               save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
        callbacks += [best, EarlyStopping(monitor=monitor, mode="max", patience=cfg.trainer.patience)]
    # latest epoch -> epoch<N>.ckpt + last.ckpt every epoch (save_last alone only copies when a file is saved).
    # It comes AFTER best/early-stopping so the checkpoint holds their state already updated for this epoch.
    # enable_version_counter=False: never a last-v1.ckpt beside last.ckpt (the folder is fresh or being resumed)
    callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", filename="epoch{epoch}", save_top_k=1,
                                     save_last=True, auto_insert_metric_name=False, enable_version_counter=False))
    bar = show_progress_bar(cfg)
    if bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    else:
        callbacks.append(EpochLog(thr, cfg.monitor if has_val else "", cfg.trainer.max_epochs))
    if isinstance(cfg, TrainConfig) and cfg.model.dsl is not None:  # dynamic sparse learning of the tables (masks saved in the checkpoints)
        from recsparse.embeddings.dsl import dsl_callback

        callbacks.append(dsl_callback(cfg.model.dsl))
    callbacks += list(extra_callbacks or [])
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs, accelerator="cpu", deterministic=cfg.trainer.deterministic,
        # several processes (TorchRecStrategy): every rank reads the whole global batch and keeps its slice
        **({"devices": 1} if strategy is None else {"strategy": strategy, "devices": strategy_devices(cfg.trainer.devices),
                                                     "use_distributed_sampler": False}),
        # versioned log dirs (csv/version_N): a resumed run adds a version instead of overwriting the history
        logger=[CSVLogger(out, name="csv"), TensorBoardLogger(out, name="tb")],
        callbacks=callbacks, enable_progress_bar=bar, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1.0 if has_val else 0,
        check_val_every_n_epoch=cfg.trainer.check_val_every_n_epoch,
        limit_train_batches=cfg.trainer.limit_train_batches, log_every_n_steps=10,
        default_root_dir=str(out))
    return trainer, best, thr


def build_task(cfg: RunConfig, data: Any = None, defer: bool = False) -> tuple[L.LightningDataModule, TaskModule]:
    """The data module and LightningModule of ``cfg``'s task. ``data``: a prepared
    :class:`~recsparse.pipelines.data.RecSplit` (ranking) or :class:`~recsparse.pipelines.ctr.CTRData` (CTR), else
    loaded from the config. ``defer``: build the ranking model once
    the process group exists (id-mappers fitted on rank 0 only)."""
    if isinstance(cfg, CTRConfig):
        from recsparse.pipelines.ctr import build_ctr

        return build_ctr(cfg, data)
    dm = RecDataModule(cfg, data)
    dm.setup()
    assert dm.split is not None
    return dm, build_module(cfg, dm.split, defer=defer)


def run(cfg: RunConfig, data: Any = None, extra_callbacks: list[Callback] | None = None, test: bool = True,
        strategy: Strategy | None = None, keep: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    """Fit (resuming if asked) and test; returns (and writes ``metrics.json``) the results record.
    ``data``: see :func:`build_task`. ``strategy``: a :class:`~recsparse.pipelines.strategy.TorchRecStrategy` trains
    on several processes (default: from ``trainer.strategy``). ``keep`` (a dict) receives the trained ``module``
    (best-validation weights when tested) and the ``trainer``."""
    t0 = time.perf_counter()
    strategy = strategy or strategy_from_config(cfg)  # a bad trainer.strategy/devices/plan fails before any work
    ckpt = prepare_run_folder(cfg)  # before anything writes into it
    torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    dm, module = build_task(cfg, data, defer=strategy is not None)
    has_val = module.has_validation()
    trainer, best, thr = build_trainer(cfg, has_val, extra_callbacks, strategy)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    fit_s = time.perf_counter() - t0
    rec: dict[str, Any] = {"name": cfg.name, "task": cfg.task, **module.describe(), "epochs": trainer.current_epoch,
                           "resumed_from": ckpt, "fit_s": round(fit_s, 2)}
    rec.update(module.table_stats())
    if thr.epochs:
        rec["train_examples_per_s"] = round(sum(e["examples"] for e in thr.epochs)
                                            / sum(e["seconds"] for e in thr.epochs), 1)
    if has_val and best is not None and best.best_model_score is not None:
        rec["best_val"] = {"metric": cfg.monitor, "value": float(best.best_model_score),
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
    if isinstance(cfg, CTRConfig) and trainer.global_rank == 0:  # serving needs the fitted feature spec
        from recsparse.pipelines.ctr import CTRModule

        assert isinstance(module, CTRModule) and module.data is not None
        module.data.fitted.save(cfg.output_dir / "feature_spec")
    write_json(cfg.output_dir / "metrics.json", rec)
    if keep is not None:
        keep.update(module=module, trainer=trainer)
    return rec


def summary(rec: dict[str, Any]) -> str:
    t = rec.get("test", {})
    keys = [k for k in t if k != "num_users"]
    return json.dumps({k: round(t[k], 4) for k in keys} | {"epochs": rec["epochs"], "wall_s": rec["wall_s"]})
