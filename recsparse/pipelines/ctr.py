"""CTR training with Lightning: the feature spec fitted on train, a CTR model from the zoo, BCE loss, early stopping
on validation AUC, test AUC / logloss of the best-validation checkpoint.

* :class:`CTRRunConfig` — dataset, model (+ kwargs), embedding dim, mapper (``full`` | hashing | ``unified``),
  row budget, optimiser, epochs, patience, batch size, seed.
* :class:`CTRDataModule` — fits the spec on the training frame once and serves :class:`~recsparse.embeddings.
  features.Batch` es: a fresh permutation per epoch (a pure function of ``(seed, epoch)``), validation/test in order.
* :class:`CTRModule` — the LightningModule beside the ranking modules of :mod:`recsparse.pipelines.modules`:
  ``val/auc``, ``val/logloss``, ``test/auc``, ``test/logloss`` from torchmetrics (``BinaryAUROC`` exact, logloss as
  the ``MeanMetric`` of per-example binary cross-entropy).
* :func:`fit_ctr` — fit + test one config, returning the results record (AUC, logloss, parameters, table bytes,
  training examples/s, epochs).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

from recsparse.embeddings.features import Batch, EncodedFrame, FeatureSpec, FittedFeatureSpec
from recsparse.config import check_name, check_value
from recsparse.errors import ConfigError
from recsparse.pipelines.data import EpochBatchSampler
from recsparse.types import check_choice

HASH_MAPPERS = ("modulo", "universal")


@dataclass
class CTRRunConfig:
    """One CTR run. ``mapper``: ``full`` (vocabulary + OOV per feature), ``modulo``/``universal`` (per-feature
    hashing; each feature gets ``ceil(budget · rows_full(f))`` rows) or ``unified`` (ONE table of
    ``ceil(budget · Σ rows_full)`` rows). ``budget`` is that fraction of the summed full-vocabulary rows."""

    dataset: str = "ml-100k-ctr"
    model: str = "deepfm"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dim: int = 16
    mapper: str = "full"
    budget: float = 1.0
    max_epochs: int = 10
    patience: int = 2
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    backend: str = "torch"
    num_threads: int = 1

    def __post_init__(self) -> None:
        from recsparse.models.ctr import CTR_MODELS

        try:
            check_choice("model", self.model, sorted(CTR_MODELS))
            check_choice("mapper", self.mapper, ("full", *HASH_MAPPERS, "unified"))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for n in ("dim", "max_epochs", "patience", "batch_size", "lr", "num_threads"):
            if not getattr(self, n) > 0:
                raise ConfigError(f"{n} must be > 0, got {getattr(self, n)!r}")
        if not 0 < self.budget <= 1:
            raise ConfigError(f"budget must be in (0, 1], got {self.budget!r}")


def budget_spec(spec: FeatureSpec, full_rows: dict[str, int], mapper: str, budget: float) -> FeatureSpec:
    """``spec`` with every sparse feature on ``mapper`` at ``budget`` × the full-vocabulary rows (per feature for
    hashing; summed for ``unified``). ``full`` -> the spec unchanged."""
    import math
    from dataclasses import replace

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
    return FeatureSpec(feats, label=spec.label, unified_rows=rows, unified_seed=spec.unified_seed,
                       unified_chunks=spec.unified_chunks)


# YAML layout of a CTR config (``task: ctr``): section.key -> CTRRunConfig field
CONFIG_FIELDS = {"data.dataset": "dataset", "model.name": "model", "model.kwargs": "model_kwargs", "model.dim": "dim",
                 "model.mapper": "mapper", "model.budget": "budget", "model.backend": "backend",
                 "trainer.max_epochs": "max_epochs", "trainer.patience": "patience",
                 "trainer.batch_size": "batch_size", "trainer.lr": "lr", "trainer.weight_decay": "weight_decay",
                 "trainer.seed": "seed", "trainer.num_threads": "num_threads"}
RUN_FIELDS = ("trainer.output_dir", "trainer.overwrite", "trainer.progress_bar")


def is_ctr_config(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("task") == "ctr"


def ctr_config_from_dict(raw: dict[str, Any], source: str = "config") -> tuple[CTRRunConfig, dict[str, Any]]:
    """A ``task: ctr`` YAML mapping -> (:class:`CTRRunConfig`, run options ``name``/``output_dir``/``overwrite``/
    ``progress_bar``). Every value is type-checked against the field it fills; errors name ``source`` and the
    dotted key (``trainer.lr``)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(CTRRunConfig)
    kw: dict[str, Any] = {}
    run = {"name": raw.get("name", "run"), "output_dir": "runs/{name}", "overwrite": False, "progress_bar": False}
    for sec, body in raw.items():
        if sec in ("name", "task"):
            continue
        if sec not in ("data", "model", "trainer") or not isinstance(body, dict):
            raise ConfigError(f"{source}: unknown or malformed section {sec!r} (a CTR config has name, task, data, "
                              "model, trainer)")
        for k, v in body.items():
            key = f"{sec}.{k}"
            if key in RUN_FIELDS:
                run[k] = check_value(str if k == "output_dir" else bool, v, key, source)
                continue
            if key not in CONFIG_FIELDS:
                raise ConfigError(f"{source}: unknown key {key}; known: {', '.join(sorted([*CONFIG_FIELDS, *RUN_FIELDS]))}")
            field_name = CONFIG_FIELDS[key]
            kw[field_name] = check_value(hints[field_name], v, key, source)
    name = check_value(str, run["name"], "name", source)
    try:
        check_name("name", name)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    known = {f.name for f in dataclasses.fields(CTRRunConfig)}
    assert set(kw) <= known
    try:
        return CTRRunConfig(**kw), run
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_ctr_config(path: str | Any, overrides: Any = ()) -> tuple[CTRRunConfig, dict[str, Any]]:
    """Read a ``task: ctr`` YAML file, apply ``a.b=value`` overrides, validate (see :func:`ctr_config_from_dict`)."""
    from pathlib import Path

    from recsparse.config import apply_overrides, load_yaml

    path = Path(path)
    raw, _ = load_yaml(path)  # the one YAML reader: file:line:col for malformed YAML, duplicate keys
    if not is_ctr_config(raw):
        raise ConfigError(f"{path}: not a CTR config (needs task: ctr)")
    raw.setdefault("name", path.stem)
    apply_overrides(raw, list(overrides))
    return ctr_config_from_dict(raw, str(path))


def run_ctr(cfg: CTRRunConfig, name: str, output_dir: str = "runs/{name}", overwrite: bool = False,
            progress_bar: bool = False) -> dict[str, Any]:
    """``recsparse train`` for a CTR config: fit + test, then write into the run folder ``metrics.json``, the fitted
    feature spec (``feature_spec/``: JSON + safetensors) and the best-validation weights (``model.safetensors``).
    An existing run folder is an error unless ``overwrite`` (then it is cleared first)."""
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    from recsparse.io import write_json

    out = Path(output_dir.format(name=name))
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"run folder {out} exists; choose another name or set trainer.overwrite=true")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    ds, fitted = prepare(cfg)
    holder: dict[str, Any] = {}
    rec = fit_ctr(cfg, ds, fitted, progress=progress_bar, keep=holder)
    fitted.save(out / "feature_spec")
    save_file({k: v.contiguous() for k, v in holder["model"].state_dict().items()
               if isinstance(v, torch.Tensor)}, str(out / "model.safetensors"))
    rec["name"] = name
    write_json(out / "metrics.json", rec)
    return rec


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
    """Fits ``spec`` on ``train`` (once) and encodes the three frames to tensors."""

    def __init__(self, fitted: FittedFeatureSpec, train: Any, valid: Any, test: Any, batch_size: int = 1024,
                 seed: int = 0) -> None:
        super().__init__()
        self.fitted = fitted
        self.train_data = fitted.encode(train)
        self.valid_data = fitted.encode(valid)
        self.test_data = fitted.encode(test)
        self.batch_size, self.seed = batch_size, seed
        self._sampler: EpochBatchSampler | None = None

    def train_dataloader(self) -> DataLoader:
        ds = _EpochBatches(self.train_data, self.batch_size, self.seed)
        self._sampler = EpochBatchSampler(len(ds), self._sampler.epoch if self._sampler is not None else 0)
        return DataLoader(ds, sampler=self._sampler, batch_size=None, collate_fn=_collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Ordered(self.valid_data, 4 * self.batch_size), batch_size=None, collate_fn=_collate)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Ordered(self.test_data, 4 * self.batch_size), batch_size=None, collate_fn=_collate)


class CTRModule(L.LightningModule):
    """BCE-with-logits training of a :class:`~recsparse.models.ctr.CTRModel`; AUC/logloss on validation and test.

    ``aux_loss`` (optional): ``callable(module, batch) -> scalar`` added to the training loss (e.g. an SSL term
    over ``model.embed``)."""

    def __init__(self, model: torch.nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 aux_loss: Any = None) -> None:
        super().__init__()
        from torchmetrics import MeanMetric
        from torchmetrics.classification import BinaryAUROC

        self.model = model
        self.lr, self.weight_decay, self.aux_loss = lr, weight_decay, aux_loss
        self.metrics = torch.nn.ModuleDict({s: torch.nn.ModuleDict({"auc": BinaryAUROC(), "logloss": MeanMetric()})
                                            for s in ("val", "test")})
        self.last_metrics: dict[str, dict[str, float]] = {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # fused: one multi-tensor kernel per step instead of a Python loop over parameters (CPU and CUDA)
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        if device.type == "cpu":
            return batch
        return Batch(batch.sparse.to(device), batch.dense.to(device),
                     None if batch.label is None else batch.label.to(device))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        assert batch.label is not None
        logits = self.model(batch.sparse, batch.dense)
        loss = F.binary_cross_entropy_with_logits(logits, batch.label)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch))
        if self.aux_loss is not None:
            loss = loss + self.aux_loss(self, batch)
        return loss

    def _eval(self, stage: str, batch: Batch) -> None:
        assert batch.label is not None
        logits = self.model(batch.sparse, batch.dense)
        m = self.metrics[stage]
        m["auc"].update(torch.sigmoid(logits), batch.label.long())
        m["logloss"].update(F.binary_cross_entropy_with_logits(logits, batch.label, reduction="none"))

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


class CTRThroughput(Callback):
    """Training examples/s of each epoch (the training batches' wall time; no validation)."""

    def __init__(self) -> None:
        self.seconds, self.examples = 0.0, 0
        self._t = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Batch,
                           batch_idx: int) -> None:
        self.examples += len(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._t

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else 0.0


def prepare(cfg: CTRRunConfig, ds: Any = None) -> tuple[Any, FittedFeatureSpec]:
    """Load the dataset and fit its spec for ``cfg.mapper``/``cfg.budget`` (budgets are fractions of the FULL spec's
    rows, so the full spec is fitted first)."""
    from recsparse.data.ctr import load_ctr

    ds = ds if ds is not None else load_ctr(cfg.dataset)
    full = ds.spec.fit(ds.train)
    if cfg.mapper == "full":
        return ds, full
    spec = budget_spec(ds.spec, full.table_rows(), cfg.mapper, cfg.budget)
    return ds, spec.fit(ds.train)


def fit_ctr(cfg: CTRRunConfig, ds: Any = None, fitted: FittedFeatureSpec | None = None,
            progress: bool = False, aux_loss: Any = None, keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit with early stopping on validation AUC, test the best-validation weights; returns the record.
    ``keep`` (a dict) receives the trained ``model`` (best-validation weights) and ``fitted`` spec."""
    from recsparse.models.ctr import build_ctr_model

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.num_threads)
    if fitted is None:
        ds, fitted = prepare(cfg, ds)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_ctr_model(cfg.model, fitted, cfg.dim, cfg.backend, cfg.seed, **cfg.model_kwargs)
    module = CTRModule(model, cfg.lr, cfg.weight_decay, aux_loss)
    dm = CTRDataModule(fitted, ds.train, ds.valid, ds.test, cfg.batch_size, cfg.seed)
    thr = CTRThroughput()
    with tempfile.TemporaryDirectory(prefix="recsparse-ctr-") as tmp:
        best = ModelCheckpoint(dirpath=tmp, filename="best", monitor="val/auc", mode="max", save_top_k=1,
                               auto_insert_metric_name=False, enable_version_counter=False)
        trainer = L.Trainer(max_epochs=cfg.max_epochs, accelerator="cpu", devices=1, logger=False,
                            callbacks=[thr, best, EarlyStopping("val/auc", mode="max", patience=cfg.patience)],
                            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                            deterministic=True, default_root_dir=tmp)
        trainer.fit(module, datamodule=dm)
        best_val = float(best.best_model_score) if best.best_model_score is not None else float("nan")
        trainer.test(module, datamodule=dm, ckpt_path=best.best_model_path, weights_only=True, verbose=False)
    test = module.last_metrics["test"]
    if keep is not None:
        keep.update(model=model, fitted=fitted)
    return {"dataset": ds.name, "model": cfg.model, "mapper": cfg.mapper, "budget": cfg.budget, "seed": cfg.seed,
            "dim": cfg.dim, "test_auc": round(test["auc"], 5), "test_logloss": round(test["logloss"], 5),
            "val_auc": round(best_val, 5), "epochs": trainer.current_epoch, "params": model.num_parameters(),
            "table_rows": model.table_rows(), "table_bytes": model.table_bytes(),
            "train_examples_per_s": round(thr.examples_per_s, 1), "fit_s": round(time.perf_counter() - t0, 2),
            "split": ds.split_rule, "config": asdict(cfg)}
