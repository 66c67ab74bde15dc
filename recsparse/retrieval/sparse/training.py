"""Training a sparse encoder with Lightning on a BEIR collection's TRAIN split (never its test split).

Examples are (query, relevant document) pairs from ``qrels/train.tsv`` (score > 0). Each query also gets ``n`` hard
negatives drawn per step from the top ``bm25_depth`` BM25 hits (the project's :class:`BM25Retriever`, Lucene BM25
k1 0.9 / b 0.4 over the same corpus) that are not judged relevant. The loss is :class:`SpladeLoss`: in-batch
InfoNCE (+ optional ensemble distillation) wrapped with FLOPS or IDF-aware FLOPS on the document vectors (and FLOPS on
the query vectors for the siamese variant), lambda on a quadratic warm-up.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from recsparse.data.beir import BeirDataset
from recsparse.retrieval.sparse.encoders import VARIANTS, EncoderConfig, SparseModel, corpus_idf, text_of
from recsparse.retrieval.sparse.losses import (DistillationLoss, FlopsRegularizer, IdfFlopsRegularizer,
                                               InfoNCELoss, SpladeLoss, SumLoss, ensemble_teacher)
from recsparse.types import check_choice, check_positive

REGULARIZERS = ("idf-flops", "flops", "none")


@dataclass
class TrainConfig:
    """Default: inference-free + IDF-FLOPS on splade-tiny, ~150 steps of 16 queries (fits well under 1 h on 2 cores)."""

    variant: str = "inference-free"
    reg: str = "idf-flops"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    split: str = "train"
    batch_size: int = 16
    negatives: int = 1
    bm25_depth: int = 20
    max_steps: int = 150
    lr: float = 5e-5
    weight_decay: float = 0.01
    lr_warmup_steps: int = 10
    lambda_doc: float = 5e-3
    lambda_query: float = 5e-3  # siamese only
    reg_warmup_steps: int = 50
    temperature: float = 1.0
    train_idf: bool = False
    distill: bool = False
    distill_weight: float = 1.0
    seed: int = 13
    num_threads: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        check_choice("variant", self.variant, VARIANTS)
        check_choice("reg", self.reg, REGULARIZERS)
        if self.split == "test":
            raise ValueError("split must not be 'test': test queries are never used for training or tuning")
        for name in ("batch_size", "bm25_depth", "max_steps", "lr", "temperature", "num_threads"):
            check_positive(name, getattr(self, name))
        for name in ("negatives", "weight_decay", "lr_warmup_steps", "lambda_doc", "lambda_query", "reg_warmup_steps",
                     "distill_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.distill and self.negatives == 0:
            raise ValueError("distill needs negatives >= 1 (the teacher ranks each query's candidates)")


@dataclass
class TrainingExamples:
    """Everything the data loader needs, built once: texts, positives, BM25 negatives and teacher scores."""

    queries: dict[str, str]
    doc_text: dict[str, str]
    pairs: list[tuple[str, str]]  # (query id, positive doc id)
    negatives: dict[str, list[str]]  # query id -> BM25-ranked non-relevant doc ids
    bm25: dict[str, dict[str, float]]  # query id -> doc id -> BM25 score (depth bm25_depth)
    dense: Any = None  # optional callable (qid, [docids]) -> scores, for distillation


def bm25_negatives(dataset: BeirDataset, queries: dict[str, str], depth: int, index_dir: str | Path,
                   relevant: dict[str, dict[str, int]]) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    """BM25 top-``depth`` per query from the project's Lucene BM25 (index built once, reused if it matches)."""
    from recsparse.retrieval.lucene import BM25Retriever

    bm25 = BM25Retriever()
    index_dir = Path(index_dir)
    if not (index_dir.is_dir() and bm25.reuse(index_dir, dataset.fingerprint)):
        bm25.index(dataset.corpus, index_dir)
    run = bm25.batch_search(queries, k=depth, threads=1)
    bm25.close()
    negs = {q: [h.docid for h in hits if relevant.get(q, {}).get(h.docid, 0) <= 0] for q, hits in run.items()}
    scores = {q: {h.docid: h.score for h in hits} for q, hits in run.items()}
    return negs, scores


def dense_teacher(dataset: BeirDataset, queries: dict[str, str]):  # noqa: ANN201
    """all-MiniLM-L6-v2 cosine scores as a callable ``(qid, [docids]) -> tensor``: the BEIR harness's dense
    encoder and its on-disk corpus-embedding cache, so a corpus already searched densely is not encoded again."""
    from recsparse.retrieval.dense import Encoder, embed_corpus

    enc = Encoder()
    demb = torch.from_numpy(embed_corpus(enc, dataset.corpus))
    qids = list(queries)
    qemb = torch.from_numpy(enc.encode([queries[q] for q in qids]))
    drow = {d: i for i, d in enumerate(dataset.corpus["_id"].to_list())}
    qrow = {q: i for i, q in enumerate(qids)}

    def score(qid: str, docs: Sequence[str]) -> torch.Tensor:
        return demb[[drow[d] for d in docs]] @ qemb[qrow[qid]]

    return score


def build_examples(dataset: BeirDataset, cfg: TrainConfig, work_dir: str | Path) -> TrainingExamples:
    queries = dataset.split_queries(cfg.split)
    rel = dataset.qrels_dict(cfg.split)
    pairs = [(q, d) for q, docs in rel.items() for d, s in docs.items() if s > 0 and q in queries]
    doc_text = {i: text_of(t, x) for i, t, x in zip(dataset.corpus["_id"], dataset.corpus["title"],
                                                    dataset.corpus["text"])}
    pairs = [(q, d) for q, d in pairs if d in doc_text]
    if not pairs:
        raise ValueError(f"{dataset.folder}: split {cfg.split!r} has no (query, relevant document) pair")
    negs, scores = bm25_negatives(dataset, queries, cfg.bm25_depth, Path(work_dir) / "bm25-index", rel)
    ex = TrainingExamples(queries, doc_text, pairs, negs, scores)
    if cfg.distill:
        ex.dense = dense_teacher(dataset, queries)
    return ex


class PairDataset(Dataset):
    """Item ``i`` -> (query text, [positive, negative_1..n] texts, teacher scores (1 + n) or None)."""

    def __init__(self, ex: TrainingExamples, negatives: int, seed: int, distill: bool) -> None:
        self.ex, self.n, self.distill = ex, negatives, distill
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.ex.pairs)

    def __getitem__(self, i: int) -> tuple[str, list[str], torch.Tensor | None]:
        q, pos = self.ex.pairs[i]
        pool = [d for d in self.ex.negatives.get(q, []) if d != pos]
        if self.n and not pool:  # no BM25 negative left: fall back to random documents
            pool = self.rng.sample(list(self.ex.doc_text), k=min(self.n * 4, len(self.ex.doc_text)))
            pool = [d for d in pool if d != pos]
        negs = self.rng.sample(pool, k=min(self.n, len(pool))) if self.n else []
        while len(negs) < self.n:  # a query with fewer negatives than asked: repeat (keeps the batch layout)
            negs.append(negs[-1] if negs else pool[0])
        docs = [pos, *negs]
        teacher = None
        if self.distill:
            b = self.ex.bm25.get(q, {})
            floor = min(b.values()) if b else 0.0
            bm = torch.tensor([b.get(d, floor) for d in docs], dtype=torch.float32)
            teacher = ensemble_teacher(bm.unsqueeze(0), self.ex.dense(q, docs).float().unsqueeze(0))[0]
        return self.ex.queries[q], [self.ex.doc_text[d] for d in docs], teacher


class Collator:
    def __init__(self, model: SparseModel) -> None:
        self.tok = model.tokenizer
        self.cfg = model.config

    def __call__(self, items: list[tuple[str, list[str], torch.Tensor | None]]) -> dict[str, torch.Tensor]:
        qs = [it[0] for it in items]
        n1 = len(items[0][1])
        # layout: all positives first, then each query's negatives in query order (see losses module doc)
        docs = [it[1][0] for it in items] + [d for it in items for d in it[1][1:]]
        qt = self.tok(qs, padding=True, truncation=True, max_length=self.cfg.query_max_length, return_tensors="pt")
        dt = self.tok(docs, padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt")
        batch = {"q_ids": qt["input_ids"], "q_mask": qt["attention_mask"], "d_ids": dt["input_ids"],
                 "d_mask": dt["attention_mask"], "n_docs_per_query": torch.tensor(n1)}
        if items[0][2] is not None:
            batch["teacher"] = torch.stack([it[2] for it in items])
        return batch


def make_loss(cfg: TrainConfig, idf: torch.Tensor) -> SpladeLoss:
    rank: torch.nn.Module = InfoNCELoss(cfg.temperature)
    if cfg.distill:
        rank = SumLoss({"infonce": rank, "distill": DistillationLoss()}, {"infonce": 1.0, "distill": cfg.distill_weight})
    doc_reg = {"flops": FlopsRegularizer(), "idf-flops": IdfFlopsRegularizer(idf), "none": None}[cfg.reg]
    # The inference-free query side is an IDF table, not model output: no query regulariser.
    q_reg = FlopsRegularizer() if cfg.variant == "splade" and cfg.reg != "none" else None
    return SpladeLoss(rank, document_regularizer=doc_reg, lambda_doc=cfg.lambda_doc, query_regularizer=q_reg,
                      lambda_query=cfg.lambda_query if q_reg is not None else 0.0, warmup_steps=cfg.reg_warmup_steps)


def _step_logger(every: int):  # noqa: ANN202
    """A callback printing one plain line every ``every`` steps (readable in log files, where a live bar is not)."""
    import sys

    import lightning as L

    class StepLogger(L.Callback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, *_: Any) -> None:  # noqa: ANN001
            s = trainer.global_step
            if s % every == 0 or s == trainer.max_steps:
                m = {k: f"{float(v):.3f}" for k, v in trainer.callback_metrics.items()}
                print(f"step {s}/{trainer.max_steps} {time.perf_counter() - self.t0:.0f}s {m}", file=sys.stderr,
                      flush=True)

    return StepLogger()


def _lightning_module(model: SparseModel, loss: SpladeLoss, cfg: TrainConfig):  # noqa: ANN202
    import lightning as L

    class SparseRetrievalModule(L.LightningModule):
        """Lightning wrapper: one step = encode queries and documents, SpladeLoss, AdamW with linear warm-up/decay."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.loss = loss

        def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
            q = self.model.query_encoder(batch["q_ids"], batch["q_mask"])
            d = self.model.doc_encoder(batch["d_ids"], batch["d_mask"])
            extra = {"teacher": batch["teacher"]} if "teacher" in batch else {}
            parts = self.loss(q, d, step=self.global_step, **extra)
            bs = q.shape[0]
            self.log_dict({"loss": parts.total.detach(), "rank": parts.ranking.detach(),
                           "reg_d": parts.reg_doc.detach(), "d_nnz": (d > 0).sum(1).float().mean(),
                           "q_nnz": (q > 0).sum(1).float().mean()}, prog_bar=True, batch_size=bs)
            return parts.total

        def configure_optimizers(self):  # noqa: ANN202
            params = [p for p in self.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

            def sched(step: int) -> float:
                if step < cfg.lr_warmup_steps:
                    return (step + 1) / cfg.lr_warmup_steps
                return max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - cfg.lr_warmup_steps))

            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, sched),
                                                       "interval": "step"}}

    return SparseRetrievalModule()


@dataclass
class TrainResult:
    model: SparseModel
    wall_s: float
    steps: int
    examples: int
    model_dir: Path


def train(dataset: BeirDataset, cfg: TrainConfig, out_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train on ``dataset``'s ``cfg.split`` (default train); saves ``out_dir/model`` (weights_only-loadable) and
    Lightning checkpoints (weights only) under ``out_dir/checkpoints``. Wall time covers the optimisation loop."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.set_num_threads(cfg.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = SparseModel("splade", cfg.encoder)  # tokenizer + vocab size
    idf, _ = corpus_idf(probe.tokenizer, (text_of(t, x) for t, x in zip(dataset.corpus["title"], dataset.corpus["text"])),
                        probe.doc_encoder.vocab_size)
    del probe
    model = SparseModel(cfg.variant, cfg.encoder, idf=idf, train_idf=cfg.train_idf)
    ex = build_examples(dataset, cfg, out_dir)
    data = PairDataset(ex, cfg.negatives, cfg.seed, cfg.distill)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True, collate_fn=Collator(model),
                        num_workers=0)
    module = _lightning_module(model, make_loss(cfg, idf), cfg)
    ckpt = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_weights_only=True,
                           every_n_train_steps=max(1, cfg.max_steps // 3))
    import sys

    callbacks: list[Any] = [ckpt]
    if not sys.stderr.isatty():
        callbacks.append(_step_logger(10))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=cfg.max_steps, logger=False, callbacks=callbacks,
                        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=10,
                        num_sanity_val_steps=0, gradient_clip_val=1.0)
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    wall = time.perf_counter() - t0
    model.eval()
    model.save(out_dir / "model")
    (out_dir / "train_config.json").write_text(json.dumps({**asdict(cfg), "wall_s": round(wall, 2),
                                                           "steps": trainer.global_step,
                                                           "examples": len(data)}, indent=2))
    return TrainResult(model, wall, trainer.global_step, len(data), out_dir / "model")


def load_checkpoint_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of a Lightning checkpoint written by :func:`train` (``weights_only=True``; keys without the
    ``model.`` prefix, ready for ``SparseModel.load_state_dict``)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return {k[len("model."):]: v for k, v in ck["state_dict"].items() if k.startswith("model.")}


def epochs_for(cfg: TrainConfig, examples: int) -> float:
    return cfg.max_steps * cfg.batch_size / max(1, examples)


__all__ = ["TrainConfig", "train", "TrainResult", "build_examples", "make_loss", "load_checkpoint_weights",
           "REGULARIZERS", "math"]
