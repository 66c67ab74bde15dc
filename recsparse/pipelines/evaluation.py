"""Full-ranking evaluation: score every item for every test user, mask known items, stream top-k in user chunks.

**Protocol** (LightGCN, He et al. 2020; GraphHash, Wu et al. 2024; BARS, Zhu et al. 2022): for each user with at
least one held-out item, all catalog items are ranked by score, the user's *training* items (and any other split
that is not the one evaluated) are removed from the ranking, and the top ``K`` are compared with the held-out set
``T``. Metrics, averaged over users:

* ``recall@K`` — hits / ``|T|``: the LightGCN paper's protocol (its reference code divides by the number of test
  items), the figure to compare with published Gowalla numbers.
* ``recall_capped@K`` — hits / ``min(K, |T|)``: a user with more than K test items can still reach 1 (never lower
  than ``recall@K``; not comparable with the paper).
* ``ndcg@K`` — DCG with binary gains ``Σ 1/log2(rank+2)`` over hits, divided by the ideal DCG of ``min(K, |T|)``
  hits. ``precision@K`` = hits / K, ``hit@K`` = 1 if any hit.

Memory is bounded: only a ``[chunk, num_items]`` score block exists at a time (``chunk × I × 4`` bytes; 1024 ×
40,981 ≈ 168 MB on Gowalla), allocated once per call and reused by every chunk. ``backend='faiss'`` searches an
exact ``IndexFlatIP`` instead (for catalogs too big for a dense score block), over-fetching ``K + max masked items``
per chunk and filtering masked items.

**Ties** are broken by the lower item id (the ranking is a total order, so the metrics do not depend on the kernel).

How the dense top-K is found (exact, ties included): the score block is written item-tile by item-tile (``[chunk,
2048]`` GEMMs whose output stays in cache run ~2× faster than one ``[chunk, I]`` GEMM on a 64-wide inner dimension),
and the maximum of every run of 64 items is taken while the tile is hot. Every item outside the item runs whose
maximum reaches the K-th largest run maximum ``t`` scores below ``t``, and ``t`` is at most the K-th best score (K
runs each hold a score ≥ ``t``), so the top K lie in those runs: only ``≈ K × 64`` scores per user are ranked,
instead of a top-K over all ``I``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from recsparse.types import check_choice, check_positive


@dataclass
class Interactions:
    """User -> items in CSR form. ``indptr [U+1]``, ``indices [nnz]`` (items of user u: ``indices[indptr[u]:
    indptr[u+1]]``, sorted). Users ``>= num_users`` (unseen) have no items."""

    indptr: torch.Tensor
    indices: torch.Tensor
    num_items: int

    @classmethod
    def from_pairs(cls, users: torch.Tensor | np.ndarray, items: torch.Tensor | np.ndarray, num_users: int,
                   num_items: int) -> "Interactions":
        u = torch.from_numpy(np.array(users, dtype=np.int64))
        i = torch.from_numpy(np.array(items, dtype=np.int64))
        if u.numel() and (int(u.min()) < 0 or int(u.max()) >= num_users):
            raise ValueError(f"user ids must be in [0, {num_users})")
        if i.numel() and (int(i.min()) < 0 or int(i.max()) >= num_items):
            raise ValueError(f"item ids must be in [0, {num_items})")
        key = torch.unique(u * num_items + i)  # sorted, deduplicated
        u, i = key // num_items, key % num_items
        indptr = torch.zeros(num_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(torch.bincount(u, minlength=num_users), 0)
        return cls(indptr, i.contiguous(), int(num_items))

    @property
    def num_users(self) -> int:
        return self.indptr.numel() - 1

    def lengths(self, users: torch.Tensor | None = None) -> torch.Tensor:
        n = self.indptr[1:] - self.indptr[:-1]
        if users is None:
            return n
        inside = (users >= 0) & (users < self.num_users)
        return torch.where(inside, n[users.clamp(0, max(self.num_users - 1, 0))], torch.zeros_like(users))

    def rows(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``users [C]``: (local row index ``[n]``, item ``[n]``) of all their items (unseen users: none)."""
        lens = self.lengths(users)
        local = torch.repeat_interleave(torch.arange(users.numel()), lens)
        if local.numel() == 0:
            return local, torch.empty(0, dtype=torch.long)
        starts = self.indptr[users.clamp(0, max(self.num_users - 1, 0))]
        offs = torch.arange(local.numel()) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        return local, self.indices[starts[local] + offs]

    def restrict(self, item_mask: torch.Tensor) -> "Interactions":
        """Only the interactions whose item has ``item_mask[item]`` (``[num_items]`` bool); same users."""
        keep = item_mask[self.indices]
        u = torch.repeat_interleave(torch.arange(self.num_users), self.lengths())
        indptr = torch.zeros_like(self.indptr)
        indptr[1:] = torch.cumsum(torch.bincount(u[keep], minlength=self.num_users), 0)
        return Interactions(indptr, self.indices[keep], self.num_items)

    def union(self, other: "Interactions") -> "Interactions":
        n = max(self.num_users, other.num_users)
        u1 = torch.repeat_interleave(torch.arange(self.num_users), self.lengths())
        u2 = torch.repeat_interleave(torch.arange(other.num_users), other.lengths())
        return Interactions.from_pairs(torch.cat([u1, u2]), torch.cat([self.indices, other.indices]), n,
                                       max(self.num_items, other.num_items))


def _rank_discounts(k: int) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2.0)


def full_ranking_metrics(user_vectors: Callable[[torch.Tensor], torch.Tensor], item_vectors: torch.Tensor,
                         truth: Interactions, exclude: Interactions | None = None, ks: Sequence[int] = (20,),
                         chunk_size: int = 1024, backend: str = "torch",
                         users: torch.Tensor | None = None) -> dict[str, float]:
    """Mean Recall/NDCG/precision/hit @K over users with ≥ 1 item in ``truth`` (or the given ``users``).

    ``user_vectors(user_ids [C]) -> [C, d]``; ``item_vectors [I, d]``; score = inner product. ``exclude``: items
    removed from each user's ranking (training items). Returns ``{"recall@20": ..., "recall_capped@20": ...,
    "ndcg@20": ..., "precision@20": ..., "hit@20": ..., "num_users": n}``.
    """
    check_choice("backend", backend, ("torch", "faiss"))
    check_positive("chunk_size", chunk_size)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] <= 0:
        raise ValueError(f"ks must be positive integers, got {ks}")
    num_items = item_vectors.shape[0]
    kmax = min(ks[-1], num_items)
    if users is None:
        users = torch.nonzero(truth.lengths() > 0).flatten()
    users = users.to(torch.long)
    disc = _rank_discounts(kmax)
    cum_disc = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(disc, 0)])
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "recall_capped", "ndcg", "precision", "hit")}
    items = item_vectors.detach().float().contiguous()
    index = dense = None
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatIP(items.shape[1])
        index.add(items.numpy())
    n_eval = 0
    for start in range(0, users.numel(), chunk_size):
        cu = users[start:start + chunk_size]
        with torch.no_grad():
            uv = user_vectors(cu).detach().float()
        if exclude is not None:
            ex_row, ex_item = exclude.rows(cu)
        else:
            ex_row = ex_item = torch.empty(0, dtype=torch.long)
        if index is None:
            if dense is None:
                dense = _DenseTopK(items, min(chunk_size, users.numel()))
            top = dense(uv, ex_row, ex_item, kmax)  # [C, kmax]
        else:
            extra = int(exclude.lengths(cu).max()) if exclude is not None and cu.numel() else 0
            kq = min(kmax + extra, num_items)
            _, cand = index.search(uv.numpy(), kq)
            cand = torch.from_numpy(cand).long()
            ex_keys = torch.sort(ex_row * num_items + ex_item).values
            keys = torch.arange(cu.numel()).unsqueeze(1) * num_items + cand
            masked = _isin_sorted(keys, ex_keys) | (cand < 0)
            order = torch.argsort(masked.long() * kq + torch.arange(kq), dim=1)[:, :kmax]
            top = torch.gather(cand, 1, order)
        t_row, t_item = truth.rows(cu)
        t_keys = torch.sort(t_row * num_items + t_item).values
        hits = _isin_sorted(torch.arange(cu.numel()).unsqueeze(1) * num_items + top, t_keys).double()  # [C, kmax]
        n_true = truth.lengths(cu).double()
        keep = n_true > 0
        n_eval += int(keep.sum())
        for k in ks:
            kk = min(k, kmax)
            h = hits[:, :kk].sum(1)
            cap = torch.clamp(n_true, max=kk)
            dcg = (hits[:, :kk] * disc[:kk]).sum(1)
            idcg = cum_disc[cap.long()]
            sums[f"recall@{k}"] += float((h / n_true.clamp(min=1))[keep].sum())
            sums[f"recall_capped@{k}"] += float((h / cap.clamp(min=1))[keep].sum())
            sums[f"ndcg@{k}"] += float((dcg / idcg.clamp(min=1e-12))[keep].sum())
            sums[f"precision@{k}"] += float((h / k)[keep].sum())
            sums[f"hit@{k}"] += float((h > 0).double()[keep].sum())
    out = {m: (v / n_eval if n_eval else math.nan) for m, v in sums.items()}
    out["num_users"] = n_eval
    return out


class _DenseTopK:
    """Exact masked top-K of ``users @ items.T`` per user, ties -> lower item id (see the module docstring).

    ``items [I, d]``; holds one ``[tiles, chunk, tile]`` float32 score buffer (≈ ``chunk × I × 4`` bytes), reused
    by every call. ``__call__(uv [C, d], ex_row [n], ex_item [n], k) -> [C, k]`` item ids, best first, where
    (``ex_row``, ``ex_item``) are the (local row, item) pairs removed from the ranking."""

    def __init__(self, items: torch.Tensor, chunk: int, tile: int = 2048, run: int = 64) -> None:
        n, d = items.shape
        self.n, self.run = n, run
        self.tile = min(tile, -(-n // run) * run)  # a multiple of ``run``
        self.tiles = -(-n // self.tile)
        self.pad = self.tiles * self.tile - n  # zero item rows at the end, scored -inf
        self.items = torch.cat([items, items.new_zeros(self.pad, d)]) if self.pad else items
        self.buf = torch.empty(self.tiles, max(chunk, 1), self.tile)

    def __call__(self, uv: torch.Tensor, ex_row: torch.Tensor, ex_item: torch.Tensor, k: int) -> torch.Tensor:
        C, tile, runs = uv.shape[0], self.tile, self.tile // self.run
        if C > self.buf.shape[1]:
            self.buf = torch.empty(self.tiles, C, tile)
        # scores, masked, and each run's maximum (tile by tile while it is in cache); masks are applied per tile
        order = torch.argsort(ex_item)
        er, ei = ex_row[order], ex_item[order]
        bounds = torch.searchsorted(ei, torch.arange(0, self.tiles + 1) * tile).tolist()
        run_max = torch.empty(C, self.tiles * runs)
        for t in range(self.tiles):
            s = self.buf[t, :C]  # [C, tile], contiguous
            torch.mm(uv, self.items[t * tile:(t + 1) * tile].T, out=s)
            a, b = bounds[t], bounds[t + 1]
            if b > a:
                s[er[a:b], ei[a:b] - t * tile] = float("-inf")
            if t == self.tiles - 1 and self.pad:
                s[:, tile - self.pad:] = float("-inf")
            torch.amax(s.view(C, runs, self.run), dim=2, out=run_max[:, t * runs:(t + 1) * runs])
        # the runs whose maximum reaches the K-th largest run maximum (all of them when maxima tie)
        kr = min(k, run_max.shape[1])
        top_runs = torch.topk(run_max, kr, dim=1)
        m = int((run_max >= top_runs.values[:, -1:]).sum(1).max())
        sel = top_runs.indices if m == kr else torch.topk(run_max, m, dim=1).indices  # [C, m] run ids
        cols = ((sel % runs) * self.run).unsqueeze(2) + torch.arange(self.run)  # [C, m, run] column in its tile
        tid = (sel // runs).unsqueeze(2)
        flat = (tid * self.buf.shape[1] + torch.arange(C).view(C, 1, 1)) * tile + cols
        vals = self.buf.view(-1)[flat.view(-1)].view(C, -1)  # [C, m·run] candidate scores
        item = (tid * tile + cols).view(C, -1)
        # top K by score, then the total order (score desc, item asc): exact unless a score equal to the K-th is
        # left out, which only a full-key top-K over that user's candidates settles
        v, j = torch.topk(vals, k, dim=1)
        top = _decode_item(torch.sort(_rank_key(v, item.gather(1, j)), dim=1, descending=True).values)
        tied = torch.nonzero((vals >= v[:, -1:]).sum(1) > k).flatten()
        if tied.numel():
            top[tied] = _decode_item(torch.topk(_rank_key(vals[tied], item[tied]), k, dim=1).values)
        return top


def _rank_key(scores: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like (score descending, item ascending): a total order for ``topk`` (float32 scores,
    item ids < 2**32; -0.0 counts as 0.0, as in a float comparison)."""
    bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0: -0.0 -> 0.0
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).long()  # monotone in the float value
    return (ordered << 32) | (0xFFFFFFFF - item)


def _decode_item(keys: torch.Tensor) -> torch.Tensor:
    return 0xFFFFFFFF - (keys & 0xFFFFFFFF)


def _isin_sorted(x: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    """Elementwise ``x ∈ sorted_keys`` (both int64) by binary search."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(x, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, x).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == x


def popularity_head(train: Interactions, head_fraction: float = 0.2) -> torch.Tensor:
    """``[num_items]`` bool: the training popularity head — the ``⌈head_fraction · I⌉`` items with the most training
    interactions (ties -> lower item id first); every other item is the tail."""
    if not 0.0 < head_fraction < 1.0:
        raise ValueError(f"head_fraction must be in (0, 1), got {head_fraction}")
    counts = torch.bincount(train.indices, minlength=train.num_items)
    order = torch.argsort(-counts, stable=True)
    head = torch.zeros(train.num_items, dtype=torch.bool)
    head[order[:math.ceil(head_fraction * train.num_items)]] = True
    return head


def head_tail_metrics(user_vectors: Callable[[torch.Tensor], torch.Tensor], item_vectors: torch.Tensor,
                      truth: Interactions, head: torch.Tensor, exclude: Interactions | None = None,
                      ks: Sequence[int] = (20,), chunk_size: int = 1024, backend: str = "torch") -> dict[str, float]:
    """:func:`full_ranking_metrics` on the held-out interactions whose item is in the popularity ``head``
    (``[num_items]`` bool, :func:`popularity_head`) and on the rest: ``head_recall@K``, ``tail_ndcg@K``,
    ``head_num_users`` ... Each part ranks the full catalogue (same exclusions); a user counts in a part when it has
    a held-out item there."""
    out: dict[str, float] = {}
    for part, keep in (("head", head), ("tail", ~head)):
        m = full_ranking_metrics(user_vectors, item_vectors, truth.restrict(keep), exclude, ks, chunk_size, backend)
        out.update({f"{part}_{k}": v for k, v in m.items()})
    return out
