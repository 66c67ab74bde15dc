"""Full-ranking metrics vs a brute-force per-user reference (Recall as in the LightGCN paper and capped, NDCG), FAISS, chunking,
unseen users."""

from __future__ import annotations

import math

import pytest
import torch

from recsparse.pipelines.evaluation import Interactions, full_ranking_metrics


def _brute(U, V, train, test, users, k):
    out = {"recall": 0.0, "recall_capped": 0.0, "ndcg": 0.0}
    n = 0
    for u in users:
        t = test.get(u, set())
        if not t:
            continue
        n += 1
        scores = (U[u] @ V.T).tolist()
        ranked = sorted((i for i in range(V.shape[0]) if i not in train.get(u, set())), key=lambda i: -scores[i])[:k]
        hits = [1.0 if i in t else 0.0 for i in ranked]
        out["recall"] += sum(hits) / len(t)  # the LightGCN paper's protocol
        out["recall_capped"] += sum(hits) / min(k, len(t))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(t))))
        out["ndcg"] += sum(h / math.log2(r + 2) for r, h in enumerate(hits)) / idcg
    return {m: v / n for m, v in out.items()}, n


def _real_slice(gowalla, nu=120):
    import polars as pl

    tr = gowalla.train.filter(pl.col("user_id") < nu)
    te = gowalla.test.filter(pl.col("user_id") < nu)
    items = sorted(set(tr["item_id"].to_list()) | set(te["item_id"].to_list()))
    remap = {x: i for i, x in enumerate(items)}
    pairs = lambda f: [(u, remap[i]) for u, i in f.iter_rows()]  # noqa: E731
    return pairs(tr), pairs(te), nu, len(items)


@pytest.mark.parametrize("backend,chunk", [("torch", 1000), ("torch", 7), ("faiss", 13)])
def test_metrics_match_brute_force(gowalla, backend, chunk):
    tr, te, nu, ni = _real_slice(gowalla)
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(nu, 16, generator=g), torch.randn(ni, 16, generator=g)
    train = Interactions.from_pairs([u for u, _ in tr], [i for _, i in tr], nu, ni)
    test = Interactions.from_pairs([u for u, _ in te], [i for _, i in te], nu, ni)
    trs, tes = {}, {}
    for u, i in tr:
        trs.setdefault(u, set()).add(i)
    for u, i in te:
        tes.setdefault(u, set()).add(i)
    for k in (5, 20):
        want, n = _brute(U, V, trs, tes, range(nu), k)
        got = full_ranking_metrics(lambda ids: U[ids], V, test, train, ks=[k, 50], chunk_size=chunk, backend=backend)
        assert got["num_users"] == n
        for m in want:
            assert got[f"{m}@{k}"] == pytest.approx(want[m], abs=1e-9), m
        assert got[f"recall_capped@{k}"] >= got[f"recall@{k}"]


def test_training_items_never_ranked(gowalla):
    tr, te, nu, ni = _real_slice(gowalla, 30)
    train = Interactions.from_pairs([u for u, _ in tr], [i for _, i in tr], nu, ni)
    # scores that put each user's training items first: with masking they must not count, so a test set equal
    # to the training set scores zero
    U = torch.eye(nu)
    V = torch.zeros(ni, nu)
    for u, i in tr:
        V[i, u] = 10.0
    m = full_ranking_metrics(lambda ids: U[ids], V, train, train, ks=[20])
    assert m["recall@20"] == 0.0
    m2 = full_ranking_metrics(lambda ids: U[ids], V, train, None, ks=[20])
    assert m2["recall_capped@20"] > 0.9


def test_unseen_users_are_evaluated():
    # users 3 and 4 have no training row at all (exclude covers only users 0..2)
    train = Interactions.from_pairs([0, 1, 2], [0, 1, 2], 3, 6)
    test = Interactions.from_pairs([0, 3, 4], [5, 4, 0], 5, 6)
    U = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    V = torch.tensor([[1.0, 0.0], [0, 0], [0, 0], [0, 0], [0.5, 0.0], [0.0, 1.0]])
    m = full_ranking_metrics(lambda ids: U[ids], V, test, train, ks=[1])
    # user 0 ranks item 5 first (hit); user 3 ranks item 0 first (miss, wants 4); user 4 ranks item 0 first (hit)
    assert m["num_users"] == 3
    assert m["recall@1"] == pytest.approx(2 / 3)


def test_headline_recall_is_the_lightgcn_paper_protocol():
    """recall@K divides by |test items| (LightGCN's reference code); it used to divide by min(K, |T|), which is now
    recall_capped@K. One user, 3 test items, the top-1 item is one of them."""
    train = Interactions.from_pairs([0], [0], 1, 5)
    test = Interactions.from_pairs([0, 0, 0], [1, 2, 3], 1, 5)
    U = torch.tensor([[1.0]])
    V = torch.tensor([[0.0], [0.9], [0.5], [0.4], [0.8]])  # ranking after masking item 0: 1, 4, 2, 3
    m = full_ranking_metrics(lambda ids: U[ids], V, test, train, ks=[1, 2])
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall_capped@1"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(1 / 3) and m["recall_capped@2"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("first_pass", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tile,run", [(2048, 64), (16, 4), (12, 3)])
def test_dense_topk_is_the_total_order_score_desc_item_asc(tile, run, first_pass):
    """The tiled top-K (run maxima -> candidate runs) against a full sort, on integer scores (many exact ties, at
    the K-th place too), masked items, a catalog that is no multiple of the tile, and a chunk larger than the last."""
    from recsparse.pipelines.evaluation import _DenseTopK

    g = torch.Generator().manual_seed(1)
    n, d, k = 103, 3, 7
    items = torch.randint(-2, 3, (n, d), generator=g).float()
    topk = _DenseTopK(items, chunk=9, tile=tile, run=run, first_pass=first_pass)
    for C in (9, 4):
        uv = torch.randint(-2, 3, (C, d), generator=g).float()
        ex_row = torch.randint(0, C, (40,), generator=g)
        ex_item = torch.randint(0, n, (40,), generator=g)
        got = topk(uv, ex_row, ex_item, k)
        scores = uv @ items.T
        scores[ex_row, ex_item] = float("-inf")
        for r in range(C):
            want = sorted(range(n), key=lambda i: (-scores[r, i].item(), i))[:k]
            assert got[r].tolist() == want


@pytest.mark.parametrize("first_pass", [torch.bfloat16, torch.float32])
def test_first_pass_error_bound_holds(first_pass):
    """The bound the candidate threshold rests on: |bf16 GEMM score - float64 score| <= error_bound(u) for every
    item, on vectors of mixed scales and signs (near-cancelling sums included) and several widths."""
    from recsparse.pipelines.evaluation import _DenseTopK

    g = torch.Generator().manual_seed(3)
    for d in (3, 16, 65, 130):
        items = torch.randn(3000, d, generator=g) * torch.exp(2 * torch.randn(3000, 1, generator=g))
        uv = torch.randn(64, d, generator=g) * torch.exp(2 * torch.randn(64, 1, generator=g))
        uv[0] = items[0] + 1e-3 * torch.randn(d, generator=g)  # a large score
        topk = _DenseTopK(items, chunk=64, first_pass=first_pass)
        approx = (uv.to(first_pass) @ topk.low[:3000].T).double()
        exact = uv.double() @ items.double().T
        err = (approx - exact).abs()
        bound = topk.error_bound(uv).unsqueeze(1)
        assert (err <= bound).all()
        if first_pass == torch.bfloat16:  # not vacuous: of the errors' size (float32 errors sit far below its slack)
            assert (err.amax(1) > 0.02 * bound.squeeze(1)).any()


def test_tiled_ranking_equals_a_plain_topk_on_real_gowalla(gowalla):
    """The two-pass top-K (bf16 candidates, float64 re-scoring) against one float64 [users, items] GEMM + mask +
    torch.topk, on the real Gowalla split (2,048 test users x all 40,981 items) with collaborative vectors (one power
    step of the real training matrix from a random start; a little noise breaks exact ties, whose order torch.topk
    leaves unspecified): the same items in the same order, and the same metrics."""
    import numpy as np

    from recsparse.pipelines.evaluation import _DenseTopK, _isin_sorted

    nu, ni = gowalla.num_users, gowalla.num_items
    tr_u, tr_i = np.array(gowalla.train["user_id"].to_numpy()), np.array(gowalla.train["item_id"].to_numpy())
    train = Interactions.from_pairs(tr_u, tr_i, nu, ni)
    test = Interactions.from_pairs(gowalla.test["user_id"].to_numpy(), gowalla.test["item_id"].to_numpy(), nu, ni)
    g = torch.Generator().manual_seed(0)
    A = torch.sparse_coo_tensor(torch.from_numpy(np.stack([tr_u, tr_i])), torch.ones(len(tr_u)), (nu, ni))
    V = torch.sparse.mm(A.t(), torch.randn(nu, 32, generator=g)) + 0.01 * torch.randn(ni, 32, generator=g)
    U = torch.sparse.mm(A, V) / (torch.bincount(torch.from_numpy(tr_u), minlength=nu).unsqueeze(1) + 1.0)
    users = torch.nonzero(test.lengths() > 0).flatten()[:2048]
    got = full_ranking_metrics(lambda ids: U[ids], V, test, train, ks=[20], chunk_size=700, users=users)
    # the plain reference, 256 users at a time (float64: the exact inner products of the float32 vectors)
    r, i = train.rows(users)
    top = []
    for s in range(0, users.numel(), 256):
        scores = U[users[s:s + 256]].double() @ V.double().T
        sel = (r >= s) & (r < s + 256)
        scores[r[sel] - s, i[sel]] = float("-inf")
        top.append(torch.topk(scores, 20, dim=1).indices)
    top = torch.cat(top)
    assert torch.equal(_DenseTopK(V, users.numel())(U[users], r, i, 20), top)  # the same items in the same order
    t_row, t_item = test.rows(users)
    hits = _isin_sorted(torch.arange(users.numel()).unsqueeze(1) * ni + top, torch.sort(t_row * ni + t_item).values)
    n_true = test.lengths(users).double()
    h = hits.double().sum(1)
    assert got["num_users"] == users.numel()
    assert got["recall@20"] == pytest.approx(float((h / n_true).sum()) / users.numel(), rel=1e-12)
    assert got["hit@20"] == float((h > 0).double().sum()) / users.numel()
    assert 0.02 < got["recall@20"] < 1.0  # a real ranking, not chance (~0.0005)
