"""Training configuration: dataclasses validated on construction, loaded from YAML with ``a.b=value`` overrides.

A config has five sections (``data``, ``model``, ``loss``, ``trainer``, ``eval``) plus a ``name``. Unknown keys and
out-of-range values raise ``ValueError`` naming the field (``trainer.batch_size must be > 0, got 0``). Overrides are
parsed as YAML scalars: ``trainer.max_epochs=3``, ``model.mapper=modulo``, ``eval.ks=[20,50]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from recsparse.models.ssl import SSLConfig
from recsparse.types import check_choice, check_positive

FAMILIES = ("mf", "lightgcn", "two_tower")
LOSSES = ("bpr", "softmax")
OPTIMIZERS = ("adam", "adagrad", "sgd")
LR_SCHEDULES = ("constant", "cosine")
SPLITS = ("given", "leave_last_out")


def _pos(section: str, name: str, value: float) -> None:
    check_positive(f"{section}.{name}", value)


@dataclass
class DataConfig:
    """``dataset``: registered name or folder. ``split``: ``given`` (the dataset's train/test files, Gowalla) or
    ``leave_last_out`` (per user, by timestamp: last interaction -> test, second last -> validation; ML-100K).
    ``val_fraction`` (``given`` only): fraction of each user's training items held out for validation / early
    stopping; 0 -> no validation set (fixed epoch budget). ``min_rating``: keep interactions rated at least this."""

    dataset: str = "gowalla"
    split: str = "given"
    val_fraction: float = 0.0
    min_rating: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"data.dataset must be a dataset name or folder, got {self.dataset!r}")
        check_choice("data.split", self.split, SPLITS)
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction!r}")


@dataclass
class ModelConfig:
    """``family``: mf | lightgcn | two_tower. ``mapper``: id-mapper of the user/item id tables (``recsparse
    embeddings mappers``); ``mapper_kwargs`` go to it (``resolution`` for GraphHash, ``num_hashes`` ...). Row budget
    of hashing mappers: ``user_rows``/``item_rows`` or ``budget_resolution`` (GraphHash's rows at that resolution).
    ``normalize``: cosine scores (MF, LightGCN). ``item_bias``: add a learned per-item bias to every score (MF,
    LightGCN; :class:`~recsparse.models.ItemBias`). ``hidden``/``out_dim``/``side_features``: two-tower towers."""

    family: str = "mf"
    dim: int = 64
    mapper: str = "full"
    mapper_kwargs: dict[str, Any] = field(default_factory=dict)
    user_rows: int | None = None
    item_rows: int | None = None
    budget_resolution: float | None = None
    num_layers: int = 3
    normalize: bool = False
    item_bias: bool = False
    init_std: float | None = 0.1
    backend: str = "torch"
    hidden: list[int] = field(default_factory=lambda: [128])
    out_dim: int = 64
    side_features: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        from recsparse.embeddings import BACKENDS, MAPPERS

        check_choice("model.family", self.family, FAMILIES)
        check_choice("model.mapper", self.mapper, sorted(MAPPERS))
        check_choice("model.backend", self.backend, BACKENDS)
        _pos("model", "dim", self.dim)
        _pos("model", "out_dim", self.out_dim)
        for n in ("user_rows", "item_rows", "budget_resolution", "init_std"):
            if getattr(self, n) is not None:
                _pos("model", n, getattr(self, n))
        if self.num_layers < 0:
            raise ValueError(f"model.num_layers must be >= 0, got {self.num_layers}")
        if not isinstance(self.mapper_kwargs, dict):
            raise ValueError(f"model.mapper_kwargs must be a mapping, got {self.mapper_kwargs!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        self.hidden = list(self.hidden)


@dataclass
class LossConfig:
    """``name``: ``bpr`` (one uniform negative per positive, not a training item of the user) or ``softmax``
    (in-batch sampled softmax + ``num_uniform_negatives`` shared uniform negatives; ``logq`` subtracts
    ``log q(item)`` estimated from the training stream); ``in_batch: false`` -> own positive + the uniform negatives
    only (no in-batch candidates: ``B·(1+M)`` logits; logQ is then a constant and has no effect). ``reg_weight``: L2 on the batch's layer-0 embeddings."""

    name: str = "bpr"
    temperature: float = 1.0
    logq: bool = True
    num_uniform_negatives: int = 0
    in_batch: bool = True
    reg_weight: float = 0.0
    ssl: SSLConfig = field(default_factory=SSLConfig)

    def __post_init__(self) -> None:
        if isinstance(self.ssl, Mapping):
            self.ssl = SSLConfig(**self.ssl)
        check_choice("loss.name", self.name, LOSSES)
        if self.name == "softmax" and not self.in_batch and self.num_uniform_negatives == 0:
            raise ValueError("loss.in_batch=false needs loss.num_uniform_negatives > 0")
        _pos("loss", "temperature", self.temperature)
        if self.num_uniform_negatives < 0:
            raise ValueError(f"loss.num_uniform_negatives must be >= 0, got {self.num_uniform_negatives}")
        if self.reg_weight < 0:
            raise ValueError(f"loss.reg_weight must be >= 0, got {self.reg_weight}")


@dataclass
class TrainerConfig:
    """Optimisation and Lightning settings. ``resume``: ``"last"`` (``<output_dir>/checkpoints/last.ckpt`` if it
    exists) or a checkpoint path; checkpoints are loaded with ``weights_only=True``. ``lr_schedule``: ``constant``
    or ``cosine`` (per epoch from ``lr`` down to ``lr * lr_final_ratio`` at ``max_epochs``; a resumed run keeps the
    schedule of the checkpoint's ``max_epochs``)."""

    max_epochs: int = 10
    batch_size: int = 2048
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_final_ratio: float = 0.01
    seed: int = 0
    deterministic: bool = True
    num_threads: int = 2
    patience: int = 3
    check_val_every_n_epoch: int = 1
    limit_train_batches: float = 1.0
    progress_bar: bool = True
    output_dir: str = "runs/{name}"
    resume: str | None = None

    def __post_init__(self) -> None:
        for n in ("max_epochs", "batch_size", "lr", "num_threads", "patience", "check_val_every_n_epoch",
                  "limit_train_batches"):
            _pos("trainer", n, getattr(self, n))
        check_choice("trainer.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("trainer.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not 0.0 <= self.lr_final_ratio <= 1.0:
            raise ValueError(f"trainer.lr_final_ratio must be in [0, 1], got {self.lr_final_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"trainer.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class EvalConfig:
    """Full-ranking evaluation (:mod:`recsparse.pipelines.evaluation`). ``monitor``: the validation metric for early
    stopping and best checkpoint. ``backend``: ``torch`` (dense score blocks) or ``faiss``."""

    ks: list[int] = field(default_factory=lambda: [20])
    monitor: str = "recall@20"
    chunk_size: int = 1024
    backend: str = "torch"
    head_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.head_fraction < 1.0:
            raise ValueError(f"eval.head_fraction must be in [0, 1), got {self.head_fraction!r}")
        self.ks = [int(k) for k in (self.ks if isinstance(self.ks, (list, tuple)) else [self.ks])]
        if not self.ks or min(self.ks) <= 0:
            raise ValueError(f"eval.ks must be a non-empty list of positive integers, got {self.ks!r}")
        _pos("eval", "chunk_size", self.chunk_size)
        check_choice("eval.backend", self.backend, ("torch", "faiss"))
        metric, _, k = self.monitor.partition("@")
        if metric not in ("recall", "recall_plain", "ndcg", "precision", "hit") or not k.isdigit() \
                or int(k) not in self.ks:
            raise ValueError(f"eval.monitor must be METRIC@K with K in eval.ks={self.ks}, got {self.monitor!r}")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "trainer": TrainerConfig,
            "eval": EvalConfig}


@dataclass
class TrainConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.model.family == "two_tower" and self.loss.name != "softmax":
            raise ValueError("loss.name must be 'softmax' for model.family='two_tower' (in-batch sampled softmax)")
        if self.model.item_bias and self.model.family not in ("mf", "lightgcn"):
            raise ValueError(f"model.item_bias is for model.family 'mf' or 'lightgcn', got {self.model.family!r}")
        if self.model.family == "lightgcn" and self.model.mapper in ("universal", "qr", "double_graphhash") \
                and self.model.backend == "fbgemm":
            raise ValueError("model.backend='fbgemm' is not supported for LightGCN (whole-table embed per step)")

    @property
    def output_dir(self) -> Path:
        return Path(self.trainer.output_dir.format(name=self.name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"config must be a mapping of sections, got {type(d).__name__}")
        unknown = set(d) - set(SECTIONS) - {"name"}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected name, {', '.join(SECTIONS)}")
        kw: dict[str, Any] = {}
        for sec, typ in SECTIONS.items():
            body = d.get(sec) or {}
            if not isinstance(body, Mapping):
                raise ValueError(f"{sec} must be a mapping, got {body!r}")
            names = {f.name for f in dataclasses.fields(typ)}
            bad = set(body) - names
            if bad:
                raise ValueError(f"unknown key(s) {', '.join(f'{sec}.{b}' for b in sorted(bad))}; "
                                 f"{sec} has {', '.join(sorted(names))}")
            try:
                kw[sec] = typ(**body)
            except TypeError as e:  # e.g. a str where a number was expected, compared in __post_init__
                raise ValueError(f"{sec}: {e}") from None
        return cls(name=d.get("name", "run"), **kw)


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["trainer.max_epochs=3", "model.mapper=modulo"]`` -> nested dict updated in place (values parsed as YAML)."""
    for ov in overrides:
        key, sep, raw = ov.partition("=")
        if not sep or not key:
            raise ValueError(f"override {ov!r} must be KEY=VALUE (e.g. trainer.max_epochs=3)")
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {ov!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return d


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config, apply ``overrides``, validate. ``name`` defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: top level must be a mapping of sections")
    raw.setdefault("name", path.stem)
    return TrainConfig.from_dict(apply_overrides(raw, overrides))
