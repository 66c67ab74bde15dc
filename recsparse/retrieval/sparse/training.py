"""Training a sparse encoder with sentence-transformers' ``SparseEncoderTrainer`` on BEIR TRAIN splits (never test).

Examples are (query, relevant document) pairs from ``qrels/<split>.tsv`` (score > 0) of one or more collections. Each
query gets ``negatives`` hard negatives drawn from the top ``bm25_depth`` hits of the project's Lucene BM25 (k1 0.9,
b 0.4, same corpus) that are not judged relevant. The loss is ``SpladeLoss`` around

* ``mnrl``: ``SparseMultipleNegativesRankingLoss`` (in-batch InfoNCE with the hard negatives), or
* ``kl``: ``SparseDistillKLDivLoss`` over each query's (positive, negatives) against a teacher, or
* ``margin-mse``: ``SparseMarginMSELoss`` against the teacher's score margins (positive minus each negative),

with the teacher = the dense MiniLM retriever and/or BM25 (the heterogeneous ensemble of Geng et al. 2024, sec. 3.2;
see :func:`teacher_scores` for how the two are put on one scale). The document regulariser is the stack's
``FlopsLoss`` or our :class:`IdfFlopsLoss`; the regulariser weights ramp up with the stack's
``SpladeRegularizerWeightSchedulerCallback``. An inference-free model can also learn its query table (``learn_idf``,
at its own ``idf_lr``), alone (``freeze_document``) or with the document encoder.
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from recsparse.config import Config
from recsparse.data.beir import BeirDataset
from recsparse.errors import ConfigError, UserError
from recsparse.io import atomic_write
from recsparse.retrieval.dense import default_cache_dir
from recsparse.retrieval.sparse.models import (BACKBONES, DEFAULT_MAX_LENGTH, DEFAULT_QUERY_MAX_LENGTH, build_model,
                                               corpus_idf, document_pipeline, document_transformer, max_logit_pooling,
                                               query_table, set_query_idf, text_of, tokenizer_of, variant_of,
                                               vocab_size)


@dataclass
class SparseTrainConfig(Config):
    """``recsparse sparse run``'s training settings, typed by :mod:`recsparse.config` (YAML + ``key=value``).

    Default: inference-free + IDF-FLOPS on splade-tiny, 150 steps of 16 queries."""

    variant: Literal["inference-free", "splade"] = "inference-free"
    backbone: str = "splade-tiny"  # a shipped backbone, or a saved sentence-transformers sparse model to continue
    reg: Literal["idf-flops", "flops", "none"] = "idf-flops"
    loss: Literal["mnrl", "kl", "margin-mse"] = "mnrl"
    teacher: Literal["dense+bm25", "dense", "bm25"] = "dense+bm25"  # kl / margin-mse only
    max_length: int = DEFAULT_MAX_LENGTH
    query_max_length: int = DEFAULT_QUERY_MAX_LENGTH
    doc_windows: int = 1  # indexing only: a trained model is re-indexed with other windows without retraining
    doc_stride: int = 16
    split: str = "train"
    batch_size: int = 16
    negatives: int = 1
    positives_per_query: int = 0  # cap on (query, positive) pairs per query (0: every judged pair)
    bm25_depth: int = 20
    max_steps: int = 150
    lr: float = 5e-5
    weight_decay: float = 0.01
    lr_warmup_steps: int = 10
    lambda_doc: float = 5e-3
    lambda_query: float = 5e-3  # siamese only
    reg_schedule: Literal["quadratic", "linear"] = "quadratic"  # ramp of the regulariser weights
    reg_warmup_ratio: float = 1 / 3
    learn_idf: bool = False
    idf_lr: float = 5e-3  # lr of a learned query table: its entries are IDF-sized, the encoder's lr would not move them
    freeze_document: bool = False  # document encoder fixed: only the query table learns (with learn_idf)
    # the per-term parameters (word embeddings = the tied MLM decoder, decoder bias) fixed, so only the contextual
    # layers train. Adam moves every parameter ~lr per step whatever its gradient's size, so a term row that only the
    # regulariser or in-batch negatives touch drifts steadily; freezing the rows removes that path (not the only one:
    # the document vectors still get sparser through the layers, see results/sparse.md)
    freeze_vocabulary: bool = False
    # the student's logits are scale * dot product (mnrl; kl: student temperature 1 / scale). An inference-free
    # score sums IDF x document weight, ~10 for a positive of splade-tiny at init: at the stack's scale 1 its softmax
    # is confidently wrong, and shrinking every document vector (losing terms) is the loss's steepest way down. Pick
    # the scale that minimises the untrained model's loss: 0.2 for inference-free splade-tiny on SciFact + NFCorpus
    # (the default; at 1 MNRL training collapses, see results/sparse.md). Siamese models: measure it (the stack uses 1)
    scale: float = 0.2
    teacher_temperature: float = 0.1
    seed: int = 13
    num_threads: int = 2

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"sparse train config: {name}={getattr(self, name)!r}: {why}")

        if self.split == "test":
            raise bad("split", "test queries are never used for training or tuning")
        for name in ("batch_size", "bm25_depth", "max_steps", "lr", "idf_lr", "scale", "num_threads", "max_length",
                     "query_max_length", "doc_windows", "teacher_temperature"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        for name in ("negatives", "positives_per_query", "weight_decay", "lr_warmup_steps", "lambda_doc",
                     "lambda_query", "doc_stride"):
            if not getattr(self, name) >= 0:
                raise bad(name, "must be >= 0")
        if not 0 < self.reg_warmup_ratio <= 1:
            raise bad("reg_warmup_ratio", "must be in (0, 1]")
        if self.max_length > 512 or self.query_max_length > 512:
            raise bad("max_length", "max_length and query_max_length must be <= 512 (BERT positions)")
        if self.loss != "mnrl" and self.negatives < 1:
            raise bad("negatives", f"loss={self.loss} needs negatives >= 1 (the teacher ranks each query's candidates)")
        if self.learn_idf and self.variant != "inference-free":
            raise bad("learn_idf", "only an inference-free model has an IDF query table")
        if self.freeze_document and not self.learn_idf:
            raise bad("freeze_document", "with the document encoder frozen only a learned query table (learn_idf) "
                                         "is left to train")


@dataclass
class Examples:
    """The training table: one row per (query, positive) pair; ``negatives`` and ``labels`` aligned with ``rows``."""

    rows: list[tuple[str, str]] = field(default_factory=list)  # (query text, positive text)
    negatives: list[list[str]] = field(default_factory=list)
    labels: list[list[float]] = field(default_factory=list)  # teacher scores (positive, negatives...)

    def extend(self, other: "Examples") -> None:
        self.rows += other.rows
        self.negatives += other.negatives
        self.labels += other.labels

    def to_dataset(self):  # noqa: ANN201 - datasets.Dataset
        from datasets import Dataset

        cols: dict[str, list[Any]] = {"query": [q for q, _ in self.rows], "positive": [p for _, p in self.rows]}
        for j in range(len(self.negatives[0]) if self.negatives else 0):
            cols[f"negative_{j + 1}"] = [n[j] for n in self.negatives]
        if self.labels:
            cols["label"] = self.labels
        return Dataset.from_dict(cols)


def bm25_run(dataset: BeirDataset, queries: dict[str, str], depth: int, index_dir: str | Path):  # noqa: ANN201
    """BM25 top-``depth`` per query from the project's Lucene BM25 (index built once, reused if it matches)."""
    from recsparse.retrieval.lucene import BM25Retriever

    bm25 = BM25Retriever()
    index_dir = Path(index_dir)
    if not (index_dir.is_dir() and bm25.reuse(index_dir, dataset.fingerprint)):
        bm25.index(dataset.corpus, index_dir)
    run = bm25.batch_search(queries, k=depth, threads=1)
    bm25.close()
    return run


def dense_scorer(dataset: BeirDataset, queries: dict[str, str]) -> Callable[[str, Sequence[str]], torch.Tensor]:
    """all-MiniLM-L6-v2 cosine scores ``(qid, [docids]) -> (n,)``: the BEIR harness's dense encoder and its on-disk
    corpus-embedding cache, so a corpus already searched densely is not encoded again."""
    from recsparse.retrieval.dense import Encoder, embed_corpus

    enc = Encoder()
    demb = torch.from_numpy(embed_corpus(enc, dataset.corpus))
    qids = list(queries)
    qemb = torch.from_numpy(enc.encode([queries[q] for q in qids]))
    drow = {d: i for i, d in enumerate(dataset.corpus["_id"].to_list())}
    qrow = {q: i for i, q in enumerate(qids)}
    return lambda qid, docs: demb[[drow[d] for d in docs]] @ qemb[qrow[qid]]


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + 1e-9)


def build_examples(dataset: BeirDataset, cfg: SparseTrainConfig, work_dir: str | Path, rng: random.Random) -> Examples:
    """``dataset``'s ``cfg.split`` pairs with BM25 hard negatives (and teacher scores for kl / margin-mse)."""
    if cfg.split not in dataset.qrels:
        raise UserError(f"{dataset.folder}: no qrels/{cfg.split}.tsv: training needs judged {cfg.split!r} queries "
                        f"(splits here: {', '.join(sorted(dataset.qrels)) or 'none'}); to index without training use "
                        f"`recsparse sparse index --model MODEL --dataset {dataset.folder}`")
    queries = dataset.split_queries(cfg.split)
    rel = dataset.qrels_dict(cfg.split)
    doc_text = {i: text_of(t, x) for i, t, x in zip(dataset.corpus["_id"], dataset.corpus["title"],
                                                    dataset.corpus["text"])}
    pairs = []
    for q, docs in rel.items():
        judged = [(d, s) for d, s in docs.items() if s > 0 and q in queries and d in doc_text]
        if cfg.positives_per_query:  # the most relevant first (random among equals): NFCorpus judges ~43 per query
            rng.shuffle(judged)
            judged = sorted(judged, key=lambda x: -x[1])[:cfg.positives_per_query]
        pairs += [(q, d) for d, _ in judged]
    if not pairs:
        raise UserError(f"{dataset.folder}: split {cfg.split!r} has no (query, relevant document) pair")
    ex = Examples()
    if cfg.negatives == 0:
        ex.rows = [(queries[q], doc_text[d]) for q, d in pairs]
        return ex
    run = bm25_run(dataset, queries, cfg.bm25_depth, Path(work_dir) / f"bm25-{dataset.name}-{dataset.fingerprint[:12]}")
    bm25 = {q: {h.docid: h.score for h in hits} for q, hits in run.items()}
    dense = dense_scorer(dataset, queries) if cfg.loss != "mnrl" and "dense" in cfg.teacher else None
    all_docs = list(doc_text)
    cands: list[tuple[str, list[str]]] = []
    for q, pos in pairs:
        pool = [d for d in bm25.get(q, {}) if rel.get(q, {}).get(d, 0) <= 0]
        if not pool:  # no BM25 negative: random documents
            pool = [d for d in rng.sample(all_docs, k=min(4 * cfg.negatives, len(all_docs))) if d != pos]
        negs = rng.sample(pool, k=min(cfg.negatives, len(pool)))
        while len(negs) < cfg.negatives:  # fewer candidates than asked: repeat (keeps the columns)
            negs.append(negs[-1])
        ex.rows.append((queries[q], doc_text[pos]))
        ex.negatives.append([doc_text[d] for d in negs])
        cands.append((q, [pos, *negs]))
    if cfg.loss != "mnrl":
        ex.labels = teacher_scores(cands, bm25 if "bm25" in cfg.teacher else None, dense, cfg.loss)
    return ex


def teacher_scores(cands: Sequence[tuple[str, list[str]]], bm25: dict[str, dict[str, float]] | None,
                   dense: Callable[[str, Sequence[str]], torch.Tensor] | None, loss: str) -> list[list[float]]:
    """Teacher scores of each query's (positive, negatives...) -> one list per row.

    BM25: the Lucene score (a positive outside the mined top-``bm25_depth`` gets the list's lowest score). ``kl``
    (a softmax over the candidates): each teacher min-max-normalised per query, summed. ``margin-mse`` (the student's
    score DIFFERENCES are regressed on the teacher's, so the teacher must be on the student's scale): raw scores on
    BM25's scale -- an inference-free score is an IDF-weighted sum of document weights, like BM25's -- with the dense
    cosine rescaled by std(BM25) / std(cosine) over all candidates, and the two averaged for ``dense+bm25``.
    """
    parts: list[torch.Tensor] = []  # each (rows, 1 + negatives)
    if bm25 is not None:
        rows = []
        for q, cand in cands:
            b = bm25.get(q, {})
            floor = min(b.values()) if b else 0.0
            rows.append([b.get(d, floor) for d in cand])
        parts.append(torch.tensor(rows, dtype=torch.float32))
    if dense is not None:
        parts.append(torch.stack([dense(q, cand).float() for q, cand in cands]))
    if loss == "kl":
        return torch.stack([torch.stack([_minmax(r) for r in p]) for p in parts]).sum(0).tolist()
    if len(parts) == 2:  # bring the cosine onto BM25's spread
        parts[1] = parts[1] * (parts[0].std() / parts[1].std().clamp(min=1e-9))
    return (torch.stack(parts).sum(0) / len(parts)).tolist()


def make_loss(model, cfg: SparseTrainConfig, idf: torch.Tensor):  # noqa: ANN001, ANN201 - SpladeLoss
    from sentence_transformers.sparse_encoder.losses import (FlopsLoss, SparseDistillKLDivLoss, SparseMarginMSELoss,
                                                             SparseMultipleNegativesRankingLoss, SpladeLoss)

    from recsparse.retrieval.sparse.losses import IdfFlopsLoss

    if cfg.loss == "mnrl":
        base = SparseMultipleNegativesRankingLoss(model, scale=cfg.scale)
    elif cfg.loss == "kl":
        base = SparseDistillKLDivLoss(model, student_temperature=1 / cfg.scale,
                                      teacher_temperature=cfg.teacher_temperature)
    else:
        base = SparseMarginMSELoss(model)
    doc_reg = IdfFlopsLoss(model, idf) if cfg.reg == "idf-flops" else FlopsLoss(model)
    lam_d = 0.0 if cfg.reg == "none" else cfg.lambda_doc  # SpladeLoss always has a document regulariser: weigh it 0
    # an inference-free query side is a table, not model output: no query regulariser
    lam_q = cfg.lambda_query if cfg.variant == "splade" and cfg.reg != "none" else None
    return SpladeLoss(model, loss=base, document_regularizer_weight=lam_d, query_regularizer_weight=lam_q,
                      document_regularizer=doc_reg)


def _log_callback(total: int):  # noqa: ANN202
    """One plain line per trainer log (every ``logging_steps``: loss, regulariser, s/step, elapsed): readable in logs
    without a progress bar."""
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001, ANN201
            if logs and "loss" in logs:
                el = time.perf_counter() - self.t0
                parts = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, (int, float)))
                print(f"step {state.global_step}/{total} {el:.0f}s ({el / max(1, state.global_step):.2f} s/step) "
                      f"{parts}", file=sys.stderr, flush=True)

    return StepLog()


@dataclass
class TrainResult:
    model: Any  # SparseEncoder
    wall_s: float
    steps: int
    examples: int
    model_dir: Path


def train(datasets: Sequence[BeirDataset], cfg: SparseTrainConfig, out_dir: str | Path,
          progress: bool = True) -> TrainResult:
    """Train on the ``cfg.split`` of every collection in ``datasets`` (examples pooled and shuffled); saves the model
    in sentence-transformers format at ``out_dir/model`` (``SparseEncoder(out_dir/'model')`` loads it) and the config
    with wall time at ``out_dir/train_config.json``. Wall time covers the optimisation loop."""
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
    from sentence_transformers.sparse_encoder.callbacks.splade_callbacks import (
        SchedulerType, SpladeRegularizerWeightSchedulerCallback)
    from transformers import set_seed

    torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a shipped backbone becomes a fresh model of cfg.variant; a saved model keeps its own shape and lengths
    model = build_model(cfg.backbone, cfg.variant, max_length=cfg.max_length, query_max_length=cfg.query_max_length)
    if cfg.backbone not in BACKBONES and variant_of(model) != cfg.variant:
        raise ConfigError(f"sparse train config: backbone {cfg.backbone} is a {variant_of(model)} model, "
                          f"variant={cfg.variant!r}")
    tok, v = tokenizer_of(model), vocab_size(model)
    texts = [text_of(t, x) for ds in datasets for t, x in zip(ds.corpus["title"], ds.corpus["text"])]
    idf, _ = corpus_idf(tok, texts, v)  # the training corpora's IDF: IDF-FLOPS and the initial query table
    table = query_table(model)
    lr_map: dict[str, float] = {}
    if table is not None:
        set_query_idf(model, idf)
        table.weight.requires_grad_(cfg.learn_idf)
        table.frozen = not cfg.learn_idf  # indexing refits a frozen table to each corpus and keeps a learned one
        if cfg.learn_idf:  # the trainer matches this pattern against the loss module's parameter names
            name = next(n for n, p in model.named_parameters() if p is table.weight)
            lr_map[re.escape(name) + "$"] = cfg.idf_lr
    if cfg.freeze_document:
        document_pipeline(model).requires_grad_(False)
    if cfg.freeze_vocabulary:
        mlm = document_transformer(model).auto_model
        for p in (mlm.get_input_embeddings().weight, *mlm.get_output_embeddings().parameters()):
            p.requires_grad_(False)
    rng = random.Random(cfg.seed)
    mining = default_cache_dir().parent / "bm25"  # the negatives' BM25 indexes, shared by every run on a corpus
    ex = Examples()
    for ds in datasets:
        ex.extend(build_examples(ds, cfg, mining, rng))
    data = ex.to_dataset().shuffle(seed=cfg.seed)
    loss = make_loss(model, cfg, idf)
    route = {c: ("query" if c == "query" else "document") for c in data.column_names if c != "label"}
    args = SparseEncoderTrainingArguments(
        output_dir=str(out_dir / "checkpoints"), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.lr_warmup_steps,
        lr_scheduler_type="linear", max_grad_norm=1.0, seed=cfg.seed, data_seed=cfg.seed, use_cpu=True,
        dataloader_drop_last=True, logging_steps=10, save_strategy="no", report_to="none",
        disable_tqdm=not progress, router_mapping=route if cfg.variant == "inference-free" else {},
        batch_sampler="no_duplicates", learning_rate_mapping=lr_map)
    sched = SpladeRegularizerWeightSchedulerCallback(
        loss, scheduler_type=SchedulerType(cfg.reg_schedule), warmup_ratio=cfg.reg_warmup_ratio)
    plain_log = not progress or not sys.stderr.isatty()
    callbacks: list[Any] = [sched, _log_callback(cfg.max_steps)] if plain_log else [sched]
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=callbacks)
    if plain_log:  # our one-line log replaces transformers' dict printer (same numbers, printed twice)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    with max_logit_pooling(model):  # same function and gradients as SpladePooling, without (B, L, V) logits
        state = trainer.train()
    wall = time.perf_counter() - t0
    model.eval()
    model.save(str(out_dir / "model"))
    info = {**asdict(cfg), "train_datasets": [ds.name for ds in datasets], "wall_s": round(wall, 2),
            "steps": int(state.global_step), "examples": len(data), "train_loss": round(float(state.training_loss), 5)}
    with atomic_write(out_dir / "train_config.json", "w") as f:  # last: its presence marks a finished training
        f.write(json.dumps(info, indent=2) + "\n")
    return TrainResult(model, wall, int(state.global_step), len(data), out_dir / "model")


__all__ = ["SparseTrainConfig", "TrainResult", "train", "build_examples", "make_loss", "teacher_scores"]
