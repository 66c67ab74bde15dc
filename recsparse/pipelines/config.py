"""Training configuration: the schema of ``recsparse train`` as typed dataclasses (:mod:`recsparse.config`).

Two tasks share the one training pipeline (:func:`recsparse.pipelines.train.run`) and its :class:`TrainerConfig`:

* ``task: ranking`` (the default; :class:`TrainConfig`): MF, LightGCN, two-tower with full-ranking evaluation. Five
  sections (``data``, ``model``, ``loss``, ``trainer``, ``eval``) plus a ``name``.
* ``task: ctr`` (:class:`CTRConfig`): a CTR model of the zoo (:mod:`recsparse.models.ctr`) on a CTR dataset, BCE
  loss, validation AUC as the monitor. Sections ``data`` (:class:`CTRDataConfig`), ``model``
  (:class:`CTRModelConfig`), ``trainer`` (:class:`CTRTrainerConfig`: the same trainer with CTR defaults).

:func:`load_config` reads ``task`` and builds the matching class. Every value is
checked against its field's annotation and ``validate()`` rules on construction; unknown keys, wrong types and
out-of-range values raise :class:`~recsparse.errors.ConfigError` naming the dotted field and the file/line or
override (``trainer.batch_size must be > 0, got 0 (c.yaml:7)``). Overrides are YAML values: ``trainer.max_epochs=3``,
``trainer.lr=1e-3``, ``model.mapper=modulo``, ``eval.ks=[20,50]``. To add an option, add a typed field with a
default to its section: loading, overrides and type checks follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from recsparse.config import Config, apply_overrides, build, check_name, load_yaml
from recsparse.errors import ConfigError
from recsparse.embeddings.dsl import DSLConfig
from recsparse.models.ssl import SSLConfig
from recsparse.types import check_choice, check_positive

__all__ = ["DataConfig", "ModelConfig", "LossConfig", "TrainerConfig", "EvalConfig", "TrainConfig", "CTRDataConfig",
           "CTRModelConfig", "CTRTrainerConfig", "CTRConfig", "RunConfig", "load_config", "apply_overrides"]


def _pos(section: str, name: str, value: float) -> None:
    check_positive(f"{section}.{name}", value)


# mappers whose row count is not a budget the user sets
ROWS_FIXED_BY_MAPPER = {"full": "one row per id", "graphhash": "one row per cluster"}


@dataclass
class DataConfig(Config):
    """``dataset``: registered name or folder. ``split``: ``given`` (the dataset's train/test files, Gowalla) or
    ``leave_last_out`` (per user, by timestamp: last interaction -> test, second last -> validation; ML-100K).
    ``val_fraction`` (``given`` only): fraction of each user's training items held out for validation / early
    stopping; 0 -> no validation set (fixed epoch budget). ``min_rating``: keep interactions rated at least this."""

    dataset: str = "gowalla"
    split: Literal["given", "leave_last_out"] = "given"
    val_fraction: float = 0.0
    min_rating: float | None = None
    seed: int = 0

    def validate(self) -> None:
        if not self.dataset:
            raise ValueError("data.dataset must be a dataset name or folder, got ''")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.split == "leave_last_out" and self.val_fraction > 0:
            raise ValueError("data.val_fraction is for data.split=given; leave_last_out already holds out each "
                             "user's second-last interaction for validation: drop data.val_fraction")


@dataclass
class ModelConfig(Config):
    """``family``: mf | lightgcn | two_tower. ``mapper``: id-mapper of the user/item id tables (``recsparse
    embeddings mappers``); ``mapper_kwargs`` go to it (``resolution`` for GraphHash, ``num_hashes`` ...). Row budget
    of hashing mappers: ``user_rows``/``item_rows`` or ``budget_resolution`` (GraphHash's rows at that resolution).
    ``normalize``: cosine scores (MF, LightGCN). ``item_bias``: add a learned per-item bias to every score (MF,
    LightGCN; :class:`~recsparse.models.ItemBias`). ``hidden``/``out_dim``/``side_features``: two-tower towers.
    ``dsl``: train the user/item tables under a fixed density (``model.dsl.density=0.2 model.dsl.interval=25``;
    :class:`~recsparse.embeddings.dsl.DSLConfig`)."""

    family: Literal["mf", "lightgcn", "two_tower"] = "mf"
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
    dsl: DSLConfig | None = None  # dynamic sparse learning of the user/item tables (MF, LightGCN)

    def validate(self) -> None:
        from recsparse.embeddings import BACKENDS, MAPPERS

        check_choice("model.mapper", self.mapper, sorted(MAPPERS))
        check_choice("model.backend", self.backend, BACKENDS)
        _pos("model", "dim", self.dim)
        _pos("model", "out_dim", self.out_dim)
        for n in ("user_rows", "item_rows", "budget_resolution", "init_std"):
            if getattr(self, n) is not None:
                _pos("model", n, getattr(self, n))
        if self.num_layers < 0:
            raise ValueError(f"model.num_layers must be >= 0, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.mapper in ROWS_FIXED_BY_MAPPER:  # their row count is the catalogue / the clustering: no budget
            for n in ("user_rows", "item_rows", "budget_resolution"):
                if getattr(self, n) is not None:
                    raise ValueError(f"model.{n} does not apply to model.mapper={self.mapper} "
                                     f"({ROWS_FIXED_BY_MAPPER[self.mapper]}); drop it or pick a hashing mapper")


@dataclass
class LossConfig(Config):
    """``name``: ``bpr`` (one uniform negative per positive, not a training item of the user) or ``softmax``
    (in-batch sampled softmax + ``num_uniform_negatives`` shared uniform negatives; ``logq`` subtracts
    ``log q(item)`` estimated from the training stream); ``in_batch: false`` -> own positive + the uniform negatives
    only (no in-batch candidates: ``B·(1+M)`` logits; logQ is then a constant and has no effect). ``reg_weight``: L2 on the batch's layer-0 embeddings. ``ssl``: the self-supervised auxiliary term on
    the two-tower item tower (:class:`~recsparse.models.ssl.SSLConfig`; off while ``ssl.weight`` is 0)."""

    name: Literal["bpr", "softmax"] = "bpr"
    temperature: float = 1.0
    logq: bool = True
    num_uniform_negatives: int = 0
    in_batch: bool = True
    reg_weight: float = 0.0
    ssl: SSLConfig = field(default_factory=SSLConfig)

    def validate(self) -> None:
        if self.name == "softmax" and not self.in_batch and self.num_uniform_negatives == 0:
            raise ValueError("loss.in_batch=false needs loss.num_uniform_negatives > 0")
        _pos("loss", "temperature", self.temperature)
        if self.num_uniform_negatives < 0:
            raise ValueError(f"loss.num_uniform_negatives must be >= 0, got {self.num_uniform_negatives}")
        if self.reg_weight < 0:
            raise ValueError(f"loss.reg_weight must be >= 0, got {self.reg_weight}")


@dataclass
class TrainerConfig(Config):
    """Optimisation and Lightning settings. ``resume``: ``"last"`` (``<output_dir>/checkpoints/last.ckpt`` if it
    exists) or a checkpoint path; checkpoints are loaded with ``weights_only=True``. ``lr_schedule``: ``constant``
    or ``cosine`` (per epoch from ``lr`` down to ``lr * lr_final_ratio`` at ``max_epochs``; a resumed run keeps the
    schedule of the checkpoint's ``max_epochs``)."""

    max_epochs: int = 10
    batch_size: int = 2048
    lr: float = 1e-3
    optimizer: Literal["adam", "adagrad", "sgd"] = "adam"
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_final_ratio: float = 0.01
    seed: int = 0
    deterministic: bool = True
    num_threads: int = 2
    patience: int = 3
    check_val_every_n_epoch: int = 1
    limit_train_batches: int | float = 1.0  # int: that many batches; float: that fraction of the epoch
    progress_bar: bool = True
    output_dir: str = "runs/{name}"
    resume: str | None = None
    overwrite: bool = False
    # several processes (recsparse.pipelines.strategy): TorchRec-sharded tables, data-parallel dense part
    strategy: Literal["auto", "torchrec"] = "auto"
    devices: int = 1  # processes on this machine (under torchrun: its --nproc-per-node)
    plan: Literal["auto", "table_wise", "row_wise", "column_wise"] = "auto"  # auto: TorchRec's planner
    dist_timeout_s: float = 300.0  # a collective waiting longer (a dead or stuck rank) fails the job

    def validate(self) -> None:
        for n in ("max_epochs", "batch_size", "lr", "num_threads", "patience", "check_val_every_n_epoch",
                  "limit_train_batches", "devices", "dist_timeout_s"):
            _pos("trainer", n, getattr(self, n))
        if isinstance(self.limit_train_batches, float) and self.limit_train_batches > 1.0:
            raise ValueError("trainer.limit_train_batches must be a fraction in (0, 1] or a whole number of batches, "
                             f"got {self.limit_train_batches}")
        if self.resume is not None and self.overwrite:
            raise ValueError("trainer.overwrite=true clears the run folder, trainer.resume continues it: set one")
        try:
            self.output_dir.format(name="x")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"trainer.output_dir may use {{name}} and no other placeholder, got {self.output_dir!r}"
                             ) from None
        if not 0.0 <= self.lr_final_ratio <= 1.0:
            raise ValueError(f"trainer.lr_final_ratio must be in [0, 1], got {self.lr_final_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"trainer.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class EvalConfig(Config):
    """Full-ranking evaluation (:mod:`recsparse.pipelines.evaluation`). ``monitor``: the validation metric for early
    stopping and best checkpoint. ``backend``: ``torch`` (dense score blocks) or ``faiss``. ``head_fraction`` > 0:
    every metric also on the test interactions whose item is in the training popularity head (that fraction of the
    items, by training count) and on the tail (``head_recall@K``, ``tail_ndcg@K`` ...)."""

    ks: list[int] = field(default_factory=lambda: [20])
    monitor: str = "recall@20"
    chunk_size: int = 1024
    backend: Literal["torch", "faiss"] = "torch"
    head_fraction: float = 0.0

    def validate(self) -> None:
        if not 0.0 <= self.head_fraction < 1.0:
            raise ValueError(f"eval.head_fraction must be in [0, 1), got {self.head_fraction!r}")
        if not self.ks or min(self.ks) <= 0:
            raise ValueError(f"eval.ks must be a non-empty list of positive integers, got {self.ks!r}")
        _pos("eval", "chunk_size", self.chunk_size)
        metric, _, k = self.monitor.partition("@")
        if metric not in ("recall", "recall_capped", "ndcg", "precision", "hit") or not k.isdigit() \
                or int(k) not in self.ks:
            raise ValueError(f"eval.monitor must be METRIC@K with K in eval.ks={self.ks}, got {self.monitor!r}")


@dataclass
class TrainConfig(Config):
    name: str = "run"
    task: Literal["ranking"] = "ranking"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        check_name("name", self.name)
        if self.model.family == "two_tower" and self.loss.name != "softmax":
            raise ValueError("loss.name must be 'softmax' for model.family='two_tower' (in-batch sampled softmax)")
        if self.model.item_bias and self.model.family not in ("mf", "lightgcn"):
            raise ValueError(f"model.item_bias is for model.family 'mf' or 'lightgcn', got {self.model.family!r}")
        if self.model.dsl is not None and self.model.family not in ("mf", "lightgcn"):
            raise ValueError(f"model.dsl is for model.family 'mf' or 'lightgcn' (their user/item tables), got "
                             f"{self.model.family!r}")
        if self.model.dsl is not None and self.trainer.strategy == "torchrec":
            raise ValueError("model.dsl does not run under trainer.strategy=torchrec: its masks act on whole tables, "
                             "not on TorchRec shards; train DSL on one process")
        if self.model.dsl is not None and self.model.backend == "fbgemm":
            raise ValueError("model.dsl does not run on model.backend=fbgemm: the fused backward never materialises "
                             "the gradient DSL regrows by; use model.backend=torch or torchrec")
        if self.model.family == "lightgcn" and self.model.mapper in ("universal", "qr", "double_graphhash") \
                and self.model.backend == "fbgemm":
            raise ValueError("model.backend='fbgemm' is not supported for LightGCN (whole-table embed per step)")
        if self.loss.ssl.enabled and self.model.family != "two_tower":
            raise ValueError(f"loss.ssl needs item features: it is for model.family='two_tower', got "
                             f"{self.model.family!r} (set loss.ssl.weight=0)")

    @property
    def output_dir(self) -> Path:
        return Path(self.trainer.output_dir.format(name=self.name))

    @property
    def monitor(self) -> str:
        """The validation metric of early stopping and the best checkpoint (logged as ``val/<monitor>``)."""
        return self.eval.monitor

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Nested mappings -> a validated config (:func:`recsparse.config.build`)."""
        return build(cls, d)


# ---- task: ctr ---------------------------------------------------------------------------------------------------
@dataclass
class CTRDataConfig(Config):
    """``dataset``: a registered in-memory CTR dataset (``recsparse.data.ctr``: ``ml-100k-ctr``, ``adult``); its
    default feature spec and split rule come with it."""

    dataset: str = "ml-100k-ctr"

    def validate(self) -> None:
        from recsparse.data.ctr import CTR_DATASETS

        check_choice("data.dataset", self.dataset, sorted(CTR_DATASETS))


@dataclass
class CTRModelConfig(Config):
    """``name``: a model of :data:`recsparse.models.ctr.CTR_MODELS`; ``kwargs`` go to its constructor
    (``{cross_layers: 3, hidden: [256, 128]}``). ``mapper``: ``full`` (vocabulary + OOV per feature),
    ``modulo``/``universal`` (per-feature hashing, ``ceil(budget · rows_full(f))`` rows each) or ``unified`` (ONE
    table of ``ceil(budget · Σ rows_full)`` rows). ``budget``: that fraction of the summed full-vocabulary rows.
    ``backend``: the tables' backend (``torchrec`` for ``trainer.strategy=torchrec``). ``unified_chunks``: with
    ``mapper: unified``, c salted lookups of width ``dim / c`` per feature, concatenated, from a table of c times the
    rows (same parameters for every c; Coleman et al.'s multi-probe layout)."""

    name: str = "deepfm"
    kwargs: dict[str, Any] = field(default_factory=dict)
    dim: int = 16
    mapper: Literal["full", "modulo", "universal", "unified"] = "full"
    budget: float = 1.0
    backend: str = "torch"
    unified_chunks: int = 1

    def validate(self) -> None:
        from recsparse.embeddings import BACKENDS
        from recsparse.models.ctr import CTR_MODELS

        check_choice("model.name", self.name, sorted(CTR_MODELS))
        check_choice("model.backend", self.backend, BACKENDS)
        _pos("model", "dim", self.dim)
        if self.backend == "fbgemm":  # the zoo builds its tables without the trainer's TBE optimizer settings
            raise ValueError("model.backend=fbgemm is not wired for CTR models (their fused tables would not follow "
                             "the trainer's optimizer): use torch, or torchrec (needed by trainer.strategy=torchrec)")
        if not 0 < self.budget <= 1:
            raise ValueError(f"model.budget must be in (0, 1], got {self.budget!r}")
        _pos("model", "unified_chunks", self.unified_chunks)
        if self.unified_chunks != 1 and self.mapper != "unified":
            raise ValueError(f"model.unified_chunks={self.unified_chunks} needs model.mapper=unified "
                             f"(got {self.mapper!r})")
        if self.dim % self.unified_chunks:
            raise ValueError(f"model.unified_chunks={self.unified_chunks} must divide model.dim={self.dim}")


@dataclass
class CTRTrainerConfig(TrainerConfig):
    """:class:`TrainerConfig` with the CTR defaults (batch 1024, patience 2, one thread, no progress bar)."""

    batch_size: int = 1024
    patience: int = 2
    num_threads: int = 1
    progress_bar: bool = False


@dataclass
class CTRLossConfig(Config):
    """The CTR loss is binary cross-entropy on the click label; ``ssl``: the self-supervised auxiliary term over the
    model's feature-embedding layer (:class:`~recsparse.models.ssl.SSLConfig`, masked views of the first
    ``ssl.batch_size`` rows of each training batch; off while ``ssl.weight`` is 0)."""

    ssl: SSLConfig = field(default_factory=SSLConfig)


@dataclass
class CTRConfig(Config):
    """``task: ctr``: one CTR run through :func:`recsparse.pipelines.train.run` (early stopping on validation AUC,
    test AUC / logloss of the best-validation checkpoint)."""

    name: str = "run"
    task: Literal["ctr"] = "ctr"
    data: CTRDataConfig = field(default_factory=CTRDataConfig)
    model: CTRModelConfig = field(default_factory=CTRModelConfig)
    loss: CTRLossConfig = field(default_factory=CTRLossConfig)
    trainer: CTRTrainerConfig = field(default_factory=CTRTrainerConfig)

    def validate(self) -> None:
        check_name("name", self.name)

    @property
    def output_dir(self) -> Path:
        return Path(self.trainer.output_dir.format(name=self.name))

    @property
    def monitor(self) -> str:
        return "auc"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CTRConfig":
        return build(cls, d)


RunConfig = TrainConfig | CTRConfig
TASKS: dict[str, type[TrainConfig] | type[CTRConfig]] = {"ranking": TrainConfig, "ctr": CTRConfig}


def config_class(task: Any, where: str = "config") -> type[TrainConfig] | type[CTRConfig]:
    """The config class of ``task`` (``None`` -> ranking); an unknown task is a :class:`ConfigError`."""
    if task is None:
        return TrainConfig
    if task not in TASKS:
        raise ConfigError(f"task: must be one of {', '.join(repr(t) for t in TASKS)}; got {task!r} ({where})")
    return TASKS[task]


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``overrides``, validate against the class of its ``task`` (:class:`TrainConfig` or
    :class:`CTRConfig`). ``name`` defaults to the file's stem."""
    data, where = load_yaml(path)
    data.setdefault("name", Path(path).stem)
    apply_overrides(data, overrides, where)
    cls = config_class(data.get("task"), where.get("task", str(path)))
    return build(cls, data, where=where)
