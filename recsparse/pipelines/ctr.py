"""The CTR task of the training pipeline (``task: ctr``, :class:`~recsparse.pipelines.config.CTRConfig`): the feature
spec fitted on train, a CTR model from the zoo, BCE loss, early stopping on validation AUC, test AUC / logloss of the
best-validation checkpoint. :func:`recsparse.pipelines.train.run` trains it like every other task: the same run
folder, checkpoints, resume/overwrite rules, ``metrics.json`` and ``trainer.strategy=torchrec trainer.devices=N``.

* :func:`prepare` — load the dataset and fit its spec for ``model.mapper``/``model.budget`` -> :class:`CTRData`.
* :class:`CTRDataModule` — encodes the three frames once and serves
  :class:`~recsparse.embeddings.features.Batch` es: a fresh permutation per epoch (a pure function of ``(seed,
  epoch)``; the epoch count is checkpoint state, so a resumed run sees the same batches), validation/test in order.
* :class:`CTRModule` — the LightningModule (a :class:`~recsparse.pipelines.modules.TaskModule`), BCE plus the optional
  ``loss.ssl`` term (:class:`~recsparse.models.ssl.EmbeddingLayerSSL`): ``val/auc``,
  ``val/logloss``, ``test/auc``, ``test/logloss`` from torchmetrics (``BinaryAUROC`` exact, logloss as the
  ``MeanMetric`` of per-example binary cross-entropy). On several processes every rank reads the global batch and
  keeps its slice (:func:`local_ctr_batch`), so N processes × B/N train as 1 × B.
* :func:`fit_ctr` — :func:`~recsparse.pipelines.train.run` in a temporary run folder, returning the flat record the
  benchmarks tabulate (AUC, logloss, parameters, table bytes, training examples/s, epochs).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any

import lightning.pytorch as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from recsparse.embeddings.features import Batch, EncodedFrame, FeatureSpec, FittedFeatureSpec
from recsparse.models.ssl import EmbeddingLayerSSL, ctr_ssl
from recsparse.pipelines.config import CTRConfig
from recsparse.pipelines.data import EpochBatchSampler
from recsparse.pipelines.modules import TaskModule
from recsparse.pipelines.strategy import local_range, slice_kjt


def budget_spec(spec: FeatureSpec, full_rows: dict[str, int], mapper: str, budget: float,
                unified_chunks: int | None = None) -> FeatureSpec:
    """``spec`` with every sparse feature on ``mapper`` at ``budget`` × the full-vocabulary rows (per feature for
    hashing; summed for ``unified``, looked up in ``unified_chunks`` salted chunks, default: the spec's).
    ``full`` -> the spec unchanged."""
    if mapper == "full":
        return spec
    feats = []
    for f in spec.features:
        if f.name not in full_rows:
            feats.append(f)
            continue
        if mapper == "unified":
            feats.append(replace(f, mapper="unified", num_rows=None))
        else:
            feats.append(replace(f, mapper=mapper, num_rows=max(1, math.ceil(budget * full_rows[f.name]))))
    rows = max(1, math.ceil(budget * sum(full_rows.values()))) if mapper == "unified" else None
    chunks = spec.unified_chunks if unified_chunks is None else unified_chunks
    return FeatureSpec(feats, label=spec.label, unified_rows=rows, unified_seed=spec.unified_seed,
                       unified_chunks=chunks)


@dataclass
class CTRData:
    """A loaded CTR dataset (:class:`~recsparse.data.ctr.CTRDataset`) and the feature spec fitted on its training
    frame for the run's mapper and budget."""

    dataset: Any
    fitted: FittedFeatureSpec


class _EpochBatches(Dataset):
    """Batch ``(epoch, b)`` of a shuffled pass over an :class:`EncodedFrame` (permutation seeded by seed, epoch)."""

    def __init__(self, data: EncodedFrame, batch_size: int, seed: int) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        epoch, b = key
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.data), generator=g))
        return self.data.batch(self._perm[1][b * self.batch_size:(b + 1) * self.batch_size])


class _Ordered(Dataset):
    def __init__(self, data: EncodedFrame, batch_size: int) -> None:
        self.data, self.batch_size = data, batch_size

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int) -> Batch:
        return self.data.batch(slice(b * self.batch_size, (b + 1) * self.batch_size))


def _collate(b: Batch) -> Batch:
    return b


class CTRDataModule(L.LightningDataModule):
    """Encodes the train/validation/test frames of ``data`` with its fitted spec (once) and serves global batches of
    ``trainer.batch_size`` (validation/test: 4×); every rank reads the same global batch."""

    def __init__(self, cfg: CTRConfig, data: CTRData) -> None:
        super().__init__()
        self.cfg, self.data = cfg, data
        ds = data.dataset
        self.train_data = data.fitted.encode(ds.train)
        self.valid_data = data.fitted.encode(ds.valid)
        self.test_data = data.fitted.encode(ds.test)
        self._sampler: EpochBatchSampler | None = None
        self._epochs_started = 0

    def state_dict(self) -> dict[str, Any]:  # the epoch count seeds the permutation: a resumed run continues it
        return {"epochs_started": self._sampler.epoch if self._sampler is not None else self._epochs_started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epochs_started = int(state["epochs_started"])
        if self._sampler is not None:
            self._sampler.epoch = self._epochs_started

    def train_dataloader(self) -> DataLoader:
        t = self.cfg.trainer
        ds = _EpochBatches(self.train_data, t.batch_size, t.seed)
        self._sampler = EpochBatchSampler(len(ds), self._sampler.epoch if self._sampler is not None
                                          else self._epochs_started)
        return DataLoader(ds, sampler=self._sampler, batch_size=None, collate_fn=_collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Ordered(self.valid_data, 4 * self.cfg.trainer.batch_size), batch_size=None,
                          collate_fn=_collate)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Ordered(self.test_data, 4 * self.cfg.trainer.batch_size), batch_size=None,
                          collate_fn=_collate)


def local_ctr_batch(batch: Batch, rank: int, world: int) -> Batch:
    """Rank ``rank``'s contiguous slice of a global batch (:func:`~recsparse.pipelines.strategy.local_range`)."""
    if world == 1:
        return batch
    start, end = local_range(len(batch), rank, world)
    return Batch(slice_kjt(batch.sparse, start, end), batch.dense[start:end],
                 None if batch.label is None else batch.label[start:end])


class CTRModule(TaskModule):
    """BCE-with-logits training of a :class:`~recsparse.models.ctr.CTRModel`; AUC/logloss on validation and test.

    ``cfg``: the run's :class:`CTRConfig` (its trainer section: optimiser, lr, weight decay; default
    ``CTRConfig()``). ``ssl``: the ``loss.ssl`` term (already weighted) added to the training loss; it sees this
    rank's slice of the batch. :func:`build_ctr` builds it from ``cfg.loss.ssl``."""

    def __init__(self, model: torch.nn.Module, cfg: CTRConfig | None = None, data: CTRData | None = None,
                 ssl: EmbeddingLayerSSL | None = None) -> None:
        super().__init__(cfg if cfg is not None else CTRConfig())
        from torchmetrics import MeanMetric
        from torchmetrics.classification import BinaryAUROC

        self.model = model
        self.ssl = ssl
        self.data = data
        # every rank evaluates its slice of each batch; the metrics gather all slices at compute()
        self.metrics = torch.nn.ModuleDict({s: torch.nn.ModuleDict({"auc": BinaryAUROC(), "logloss": MeanMetric()})
                                            for s in ("val", "test")})

    def num_examples(self, batch: Batch) -> int:
        return len(batch)

    def table_stats(self) -> dict[str, int]:
        return {"rows": self.model.table_rows(), "bytes": self.model.table_bytes()}

    def describe(self) -> dict[str, Any]:
        m = self.cfg.model
        out = {"dataset": self.cfg.data.dataset, "model": m.name, "mapper": m.mapper, "budget": m.budget,
               "dim": m.dim, "params": self.model.num_parameters()}
        if self.data is not None:
            out["split"] = self.data.dataset.split_rule
        return out

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        if device.type == "cpu":
            return batch
        return Batch(batch.sparse.to(device), batch.dense.to(device),
                     None if batch.label is None else batch.label.to(device))

    def _local(self, batch: Batch) -> Batch:
        return local_ctr_batch(batch, self.global_rank, self.trainer.world_size)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        assert batch.label is not None
        B, world = len(batch), self.trainer.world_size
        local = self._local(batch)
        assert local.label is not None
        bce_sum = F.binary_cross_entropy_with_logits(self.model(local.sparse, local.dense), local.label,
                                                     reduction="sum")
        # world × (this slice's share of the global mean): DDP and TorchRec average the ranks' gradients, so the
        # update is that of the mean BCE over the whole global batch, as on one process
        loss = bce_sum * (world / B)
        if world > 1:
            total = bce_sum.detach().clone()
            dist.all_reduce(total)
            mean = total / B
            loss = loss + (mean - loss.detach())  # the value is the global mean (logged, returned); grads as above
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=B)
        if self.ssl is not None:
            aux = self.ssl(self, local)
            self.log("train/ssl", aux.detach(), on_step=False, on_epoch=True, batch_size=B)
            loss = loss + aux
        return loss

    def _eval(self, stage: str, batch: Batch) -> None:
        local = self._local(batch) if self._trainer is not None else batch
        assert local.label is not None
        logits = self.model(local.sparse, local.dense)
        m = self.metrics[stage]
        m["auc"].update(torch.sigmoid(logits), local.label.long())
        m["logloss"].update(F.binary_cross_entropy_with_logits(logits, local.label, reduction="none"))

    def _eval_end(self, stage: str) -> None:
        m = self.metrics[stage]
        out = {"auc": float(m["auc"].compute()), "logloss": float(m["logloss"].compute())}
        for k, v in out.items():
            self.log(f"{stage}/{k}", v, prog_bar=(k == "auc"), batch_size=1)
            m[k].reset()
        self.last_metrics[stage] = out

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")


def prepare(cfg: CTRConfig, ds: Any = None) -> tuple[Any, FittedFeatureSpec]:
    """Load the dataset (unless given) and fit its spec for ``model.mapper``/``model.budget`` (budgets are fractions
    of the FULL spec's rows, so the full spec is fitted first) -> ``(dataset, fitted spec)``."""
    from recsparse.data.ctr import load_ctr

    ds = ds if ds is not None else load_ctr(cfg.data.dataset)
    full = ds.spec.fit(ds.train)
    if cfg.model.mapper == "full":
        return ds, full
    spec = budget_spec(ds.spec, full.table_rows(), cfg.model.mapper, cfg.model.budget, cfg.model.unified_chunks)
    return ds, spec.fit(ds.train)


def build_ctr(cfg: CTRConfig, data: CTRData | None = None) -> tuple[CTRDataModule, CTRModule]:
    """The data module and LightningModule of a CTR run (:func:`recsparse.pipelines.train.run` calls this); the
    ``loss.ssl`` term, when on, is built over the fitted spec (CFM's mutual information from the training frame)."""
    from recsparse.models.ctr import build_ctr_model

    if data is None:
        data = CTRData(*prepare(cfg))
    m, s = cfg.model, cfg.loss.ssl
    model = build_ctr_model(m.name, data.fitted, m.dim, m.backend, cfg.trainer.seed, **m.kwargs)
    ssl = ctr_ssl(s, data.fitted, data.dataset.train, m.dim, cfg.trainer.seed) if s.enabled else None
    return CTRDataModule(cfg, data), CTRModule(model, cfg, data, ssl)


def fit_ctr(cfg: CTRConfig, ds: Any = None, fitted: FittedFeatureSpec | None = None,
            keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """One CTR run through :func:`~recsparse.pipelines.train.run` in a temporary run folder (benchmarks: many runs,
    no folders kept); returns the flat record (``test_auc``, ``test_logloss``, ``val_auc``, ``epochs``, ``params``,
    ``table_rows``, ``table_bytes``, ``train_examples_per_s``, ``fit_s``, ``split``, ``config``). ``keep`` (a dict)
    receives the trained ``model`` (best-validation weights) and the ``fitted`` spec."""
    from recsparse.pipelines.train import run

    t0 = time.perf_counter()
    if fitted is None:
        ds, fitted = prepare(cfg, ds)
    data = CTRData(ds, fitted)
    with tempfile.TemporaryDirectory(prefix="recsparse-ctr-") as tmp:
        cfg = replace(cfg, trainer=replace(cfg.trainer, output_dir=tmp, overwrite=True, resume=None))
        held: dict[str, Any] = {}
        rec = run(cfg, data, keep=held)
    if keep is not None:
        keep.update(model=held["module"].model, fitted=fitted)
    best = rec.get("best_val", {}).get("value", float("nan"))
    out = {k: rec[k] for k in ("dataset", "model", "mapper", "budget", "dim", "params", "split")}
    out.update(seed=cfg.trainer.seed, test_auc=round(rec["test"]["auc"], 5),
               test_logloss=round(rec["test"]["logloss"], 5), val_auc=round(best, 5), epochs=rec["epochs"],
               table_rows=rec["rows"], table_bytes=rec["bytes"],
               train_examples_per_s=rec.get("train_examples_per_s", 0.0), fit_s=round(time.perf_counter() - t0, 2),
               config=rec["config"])
    return out
