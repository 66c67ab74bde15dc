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

Memory is bounded: the dense path keeps one bf16 ``[chunk, num_items]`` score block (``chunk × I × 2`` bytes; 1024 ×
40,981 ≈ 84 MB on Gowalla), allocated once per call and reused by every chunk, plus a float64 and a bf16 copy of the
item vectors. ``backend='faiss'`` searches an exact ``IndexFlatIP`` instead (for catalogs too big for a dense score
block), over-fetching ``K + max masked items`` per chunk and filtering masked items.

**Ties** are broken by the lower item id (the ranking is a total order, so the metrics do not depend on the kernel).
The dense path ranks by the exact inner product of the float32 vectors (:class:`_DenseTopK`: a bf16 first pass with
a proven error bound picks the candidates that can reach the top K, which are scored again in float64).
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
    """Exact masked top-K of ``users @ items.T`` per user: score descending, ties -> lower item id.

    ``items [I, d]`` float32. ``__call__(uv [C, d], ex_row [n], ex_item [n], k) -> [C, k]`` item ids, best first;
    (``ex_row``, ``ex_item``) are the (local row, item) pairs removed from the ranking. The ranking is by the inner
    product of the float32 vectors computed in float64 (every product exact, the sum to ~1e-16), so it does not
    depend on a float32 GEMM kernel's summation order.

    Two passes, because the ``[C, I]`` GEMM is most of the cost and only ~K items per user matter:

    1. **bf16 first pass.** ``uv`` and the items rounded to bfloat16, one bf16 GEMM per ``[C, tile]`` item tile (about
       twice as fast as float32 on a CPU with native bf16, fp32 accumulation), training items set to -inf, and the
       maximum of every run of ``run`` items taken while the tile is hot (on a float32 copy: a bf16 max reduction is
       slower than copy + max). The bf16 scores are kept in one ``[tiles, C, tile]`` buffer (half the float32 block),
       reused by every call. ``first_pass``: the GEMM's dtype (default: bf16 where the CPU has native bf16, else
       float32 -- the same result, only the speed differs).
    2. **Exact re-scoring of the candidates.** With ``err`` a bound on ``|bf16 score - exact score|`` (see
       :meth:`error_bound`) and ``t`` the K-th largest run maximum, K items score >= ``t - err`` exactly, so every
       item of the top K has an approximate score >= ``t - 2 err``; only those are scored again exactly and
       ordered. Items below the threshold cannot reach (or tie with) the K-th exact score.
    """

    max_pairs = 1 << 17  # (user, item) pairs re-scored at once: bounds the float64 scratch (2 x 68 MB at d = 65)

    def __init__(self, items: torch.Tensor, chunk: int, tile: int = 512, run: int = 32,
                 first_pass: torch.dtype | None = None) -> None:
        n, d = items.shape
        self.low_dtype = first_pass or (torch.bfloat16 if _native_bf16() else torch.float32)
        self.n, self.d, self.run = n, d, run
        self.tile = min(tile, -(-n // run) * run)  # a multiple of ``run``
        self.tiles = -(-n // self.tile)
        self.pad = self.tiles * self.tile - n  # zero item rows at the end, scored -inf
        exact = items.double()
        self.exact = torch.cat([exact, exact.new_zeros(self.pad, d)]) if self.pad else exact  # [I + pad, d]
        low = items.to(self.low_dtype)
        self.low = torch.cat([low, low.new_zeros(self.pad, d)]) if self.pad else low  # [I + pad, d]
        self.item_norm = float(exact.norm(dim=1).max()) if n else 0.0
        self.buf = torch.empty(self.tiles, max(chunk, 1), self.tile, dtype=self.low_dtype)
        self.tile_f32 = torch.empty(max(chunk, 1), self.tile)
        self._a, self._b = torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64)

    def error_bound(self, uv: torch.Tensor) -> torch.Tensor:
        """``[C]`` float64: a bound on ``|first-pass score - exact score|`` for every item of each user.

        With ``P = Σ_j |u_j i_j| <= ||u|| ||i||`` and ``r`` the first pass's unit roundoff (2^-8 for bf16: 8
        significant bits, so round-to-nearest is off by up to half of 2^-7; 0 for float32 inputs): rounding both inputs
        moves each product by <= (2r + r^2) of its size (the product of two bf16 values is exact in fp32), the fp32
        accumulation moves the sum by <= d 2^-24 (1 + r)^2 P, rounding the output by <= r of the (slightly larger)
        sum. In all <= (3r + 3r^2 + r^3 + d 2^-24 (1 + r)^3) P; 4r^2 and d 2^-23 cover the higher-order terms, 2^-16
        the float64 arithmetic of the exact score and of this bound (normal, not subnormal, values)."""
        r = 2.0 ** -8 if self.low_dtype == torch.bfloat16 else 0.0
        rel = 3 * r + 4 * r * r + 2.0 ** -16 + self.d * 2.0 ** -23
        return uv.double().norm(dim=1) * (self.item_norm * rel)

    def __call__(self, uv: torch.Tensor, ex_row: torch.Tensor, ex_item: torch.Tensor, k: int) -> torch.Tensor:
        C, tile, run = uv.shape[0], self.tile, self.run
        runs = tile // run  # runs per tile
        if C > self.buf.shape[1]:
            self.buf = torch.empty(self.tiles, C, tile, dtype=self.low_dtype)
            self.tile_f32 = torch.empty(C, tile)
        # pass 1: bf16 scores tile by tile, masks applied per tile (exclusions sorted by item), run maxima
        order = torch.argsort(ex_item)
        er, ei = ex_row[order], ex_item[order]
        bounds = torch.searchsorted(ei, torch.arange(0, self.tiles + 1) * tile).tolist()
        low = uv.to(self.low_dtype)
        run_max = torch.empty(C, self.tiles * runs)  # [C, R]
        f32 = self.tile_f32[:C]
        for t in range(self.tiles):
            s = self.buf[t, :C]  # [C, tile], contiguous
            torch.mm(low, self.low[t * tile:(t + 1) * tile].T, out=s)
            a, b = bounds[t], bounds[t + 1]
            if b > a:
                s[er[a:b], ei[a:b] - t * tile] = float("-inf")
            if t == self.tiles - 1 and self.pad:
                s[:, tile - self.pad:] = float("-inf")
            f32.copy_(s)
            torch.amax(f32.view(C, runs, run), dim=2, out=run_max[:, t * runs:(t + 1) * runs])
        # candidates: approximate score >= (K-th largest run maximum) - 2 err; with fewer runs than K, everything
        uv64 = uv.double()
        if k <= run_max.shape[1]:
            thr = torch.topk(run_max, k, dim=1).values[:, -1].double() - 2 * self.error_bound(uv)  # [C]
        else:
            thr = torch.full((C,), float("-inf"), dtype=torch.float64)
        c_row, c_run = torch.nonzero(run_max >= thr.unsqueeze(1), as_tuple=True)  # [P] runs, row-major
        block = ((c_run // runs) * self.buf.shape[1] + c_row) * runs + c_run % runs  # row of buf.view(-1, run)
        vals = self.buf.view(-1, run).index_select(0, block).float()  # [P, run] approximate scores
        keep = torch.nonzero((vals >= thr.index_select(0, c_row).unsqueeze(1)).view(-1)).squeeze(1)
        p = keep // run
        rows = c_row.index_select(0, p)  # [S], ascending; items ascending within a row
        item = c_run.index_select(0, p) * run + keep % run  # [S]
        # pass 2: exact scores of the candidates (masked and padding items stay -inf)
        score = torch.empty(rows.numel(), dtype=torch.float64)
        for a in range(0, rows.numel(), self.max_pairs):
            b = min(a + self.max_pairs, rows.numel())
            x = torch.index_select(uv64, 0, rows[a:b], out=self._a.resize_(0))
            y = torch.index_select(self.exact, 0, item[a:b], out=self._b.resize_(0))
            torch.sum(x.mul_(y), dim=1, out=score[a:b])
        score.masked_fill_(vals.view(-1).index_select(0, keep) == float("-inf"), float("-inf"))
        # (row, score desc, item asc) by two stable sorts; every row holds >= k candidates (K runs reach t)
        o = torch.sort(score, descending=True, stable=True).indices
        o = o.index_select(0, torch.sort(rows.index_select(0, o), stable=True).indices)
        start = torch.cumsum(torch.bincount(rows, minlength=C), 0)
        start = torch.cat([start.new_zeros(1), start[:-1]])
        pick = (start.unsqueeze(1) + torch.arange(k)).view(-1)
        return item.index_select(0, o.index_select(0, pick)).view(C, k)


def _native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): elsewhere a bf16 GEMM is slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private torch API: absent in some builds
        return False


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
