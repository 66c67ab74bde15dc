"""Embedding-core benchmarks -> benchmarks/results/embeddings.json (+ .md), printed as tables.

Sections (``--sections``, default all):

* ``tbe`` — pooled multi-table lookup, 8 tables × 1M rows × dim 64, batch 4096, pooling 20 (uniform random ids),
  forward+backward with the optimizer update included: FBGEMM TBE (fused exact SGD; tuning variants: threads,
  index dtype, optimizer, fp16 weights, mean pooling), recsparse ``MappedEmbeddingBagCollection(backend='fbgemm')``
  end to end (raw-id KJT, Full mapper), one ``nn.EmbeddingBag`` per table (sparse grads + ``torch.optim.SGD``),
  TorchRec ``FusedEmbeddingBagCollection`` and plain ``EmbeddingBagCollection`` (dense grads + SGD). Plain-torch
  forward gathers of the same rows from the same weights are measured in the same run (``index_select`` + sum-pool,
  chunked ``index_select``, and ``F.embedding_bag`` = ``nn.EmbeddingBag``'s forward, which is the fastest).
  ``fwd_ms``: the FBGEMM kernel's forward (grad enabled: the forward of a training step); ``fwd_nograd_ms``:
  FusedTBE's no-grad forward (ATen ``embedding_bag`` over the kernel's own storage, see recsparse.kernels.tbe). Summary
  keys: ``tbe_plain_vs_embeddingbag_step`` (plain TBE) and ``tbe_tuned_vs_embeddingbag_step`` (best tuned variant,
  named in ``tbe_tuned_variant``) — examples/s of forward+backward+update ÷ ``nn.EmbeddingBag`` + SGD;
  ``tbe_plain_fwd_vs_embeddingbag_fwd`` / ``tbe_tuned_fwd_vs_embeddingbag_fwd`` — TBE forward ÷ ``nn.EmbeddingBag``
  forward (bytes/s of the same gather).
* ``dsl`` — Gowalla MF training examples/s, dense vs dynamic sparse learning (same run, same steps).
* ``forward`` — the recsparse table path vs ``nn.EmbeddingBag`` side by side: forward, forward+backward+update and
  int8 inference, on the shape above and on Gowalla MF's real id stream (see :func:`bench_forward`).
* ``graphhash`` — Louvain on the real Gowalla training graph at resolutions 1, 50, 200 (+ a bisection for the largest
  resolution whose tables are ≤ 25 % of the full rows): cluster time, #user/#item clusters, modularity, row fraction.
* ``mappers`` — every mapper (item side, Gowalla): rows, bytes (dim 64 fp32 table + mapper state), ids/s of the
  torch ``transform`` and of the Polars expression on the 810k-id training stream.
* ``quant`` — int8/int4/int2 inference tables of Gowalla-sized user+item tables: bytes and max abs error vs fp32.

Timing sections must run alone at normal priority::

    flock /tmp/recsparse-timing.lock python benchmarks/embeddings_bench.py --sections tbe
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from typing import Any, Callable

import torch

from recsparse.results import print_table, provenance, save_results

AREA = "embeddings"
COLUMNS = {
    "tbe": ["name", "threads", "ms_per_step", "examples_per_s", "vs_embeddingbag", "fwd_ms", "fwd_nograd_ms",
            "fwd_gather_GBps",
            "fwd_vs_embeddingbag_fwd", "gather_GBps"],
    "graphhash": ["name", "resolution", "cluster_s", "user_clusters", "item_clusters", "modularity", "table_rows",
                  "row_fraction"],
    "mappers": ["mapper", "rows", "rows_per_id", "row_fraction", "bytes", "mapper_state_bytes", "torch_ids_per_s",
                "polars_ids_per_s"],
    "quant": ["dtype", "dim", "table_bytes", "size_ratio", "max_abs_err_weight", "max_abs_err_pooled"],
    "dsl": ["name", "density", "interval", "scope", "batches", "train_examples_per_s", "slowdown_vs_dense"],
    "forward": ["name", "threads", "recsparse", "baseline", "recsparse_ms", "embeddingbag_ms",
                "speedup_vs_embeddingbag", "embeddingbag_fp32_ms", "never_slower"],
}
KEY = ["section", "name"]


def _timeit(step: Callable[[int], Any], iters: int, warmup: int = 2) -> float:
    """Median seconds per call of ``step(i)`` over ``iters`` calls after ``warmup`` (the median resists the
    neighbours' noise on a shared 2-core machine better than the mean)."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved(fns: list[Callable[[int], Any]], iters: int, warmup: int = 2) -> list[float]:
    """Median seconds per call of each ``fns[j](i)``, the calls alternating ``f0, f1, ..., f0, f1, ...`` so that
    both sides of a comparison see the same background load."""
    for i in range(warmup):
        for f in fns:
            f(i)
    times: list[list[float]] = [[] for _ in fns]
    for i in range(iters):
        for j, f in enumerate(fns):
            t0 = time.perf_counter()
            f(i)
            times[j].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


# ---------------------------------------------------------------------------------------------------------------- tbe
def bench_tbe(tables: int, rows: int, dim: int, batch: int, pooling: int, iters: int) -> list[dict[str, Any]]:
    import torch.nn as nn

    from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection
    from recsparse.kernels import FusedTBE, TBEConfig

    g = torch.Generator().manual_seed(0)
    nb = 3  # distinct batches, cycled
    idx = [torch.randint(0, rows, (tables * batch * pooling,), generator=g) for _ in range(nb)]
    offsets = torch.arange(0, tables * batch * pooling + 1, pooling)
    grad_out = torch.randn(batch, tables * dim, generator=g)
    gathered_bytes = tables * batch * pooling * dim * 4  # fp32 rows read per forward
    shape = dict(tables=tables, rows=rows, dim=dim, batch=batch, pooling=pooling, iters=iters)
    recs: list[dict[str, Any]] = []

    def rec(name: str, sec_step: float, **extra: Any) -> dict[str, Any]:
        r = {"section": "tbe", "name": name, **shape, "ms_per_step": round(1e3 * sec_step, 2),
             "examples_per_s": round(batch / sec_step, 1), **extra}
        recs.append(r)
        print(f"  {name}: {1e3 * sec_step:.1f} ms/step, {batch / sec_step:,.0f} ex/s", flush=True)
        return r

    def fill_(w: torch.Tensor) -> None:  # touch every page: untouched zero pages would fake a fast gather
        with torch.no_grad():
            w.uniform_(-0.01, 0.01, generator=torch.Generator().manual_seed(1))

    # --- FBGEMM TBE variants (same weights storage reused for the plain-torch forwards)
    variants = [("tbe_sgd_int64", dict(), 2), ("tbe_sgd_int32", dict(index_dtype=torch.int32), 2),
                ("tbe_sgd_int64_1thread", dict(), 1),
                ("tbe_sgd_nobounds", dict(bounds_check=False), 2),
                ("tbe_sgd_groups2", dict(table_groups=2), 2),
                ("tbe_sgd_groups2_nobounds", dict(table_groups=2, bounds_check=False), 2),
                ("tbe_rowwise_adagrad", dict(optimizer="rowwise_adagrad"), 2),
                ("tbe_rowwise_adagrad_groups2", dict(optimizer="rowwise_adagrad", table_groups=2), 2),
                ("tbe_sgd_fp16", dict(weights_precision="fp16"), 2),
                ("tbe_sgd_mean", dict(pooling="mean"), 2)]
    eb_fwd_bps: dict[int, float] = {}  # threads -> nn.EmbeddingBag forward bytes/s
    offs_bag = torch.arange(0, batch * pooling, pooling)
    for name, kw, threads in variants:
        torch.set_num_threads(threads)
        cfg = TBEConfig(learning_rate=0.01, **kw)
        tbe = FusedTBE([rows] * tables, [dim] * tables, cfg)
        for t in range(tables):
            fill_(tbe.weights(t))
        dt = cfg.index_dtype
        idx_c = [i.to(dt) for i in idx]
        off_c = offsets.to(dt)
        if threads not in eb_fwd_bps:
            # random-row gather + sum-pool of the same rows from the same weights, forward only, three ways
            ws = [tbe.weights(t) for t in range(tables)]
            chunk = 256
            buf = torch.empty(chunk * pooling, dim)
            out = torch.empty(batch, tables * dim)

            def naive(i: int) -> torch.Tensor:
                ids = idx[i % nb].view(tables, batch * pooling)
                return torch.cat([ws[t].index_select(0, ids[t]).view(batch, pooling, dim).sum(1)
                                  for t in range(tables)], dim=1)

            def chunked(i: int) -> torch.Tensor:  # gather into a cache-resident buffer, then pool
                ids = idx[i % nb].view(tables, batch * pooling)
                for t in range(tables):
                    for c in range(0, batch, chunk):
                        torch.index_select(ws[t], 0, ids[t, c * pooling:(c + chunk) * pooling], out=buf)
                        out[c:c + chunk, t * dim:(t + 1) * dim] = buf.view(chunk, pooling, dim).sum(1)
                return out

            def spmdm(i: int) -> torch.Tensor:  # fused gather+pool (FBGEMM EmbeddingSpMDM under F.embedding_bag)
                ids = idx[i % nb].view(tables, batch * pooling)
                return torch.cat([torch.nn.functional.embedding_bag(ids[t], ws[t], offs_bag, mode="sum")
                                  for t in range(tables)], dim=1)
            best = 0.0
            for gname, fn in (("gather_index_select_sum", naive), ("gather_chunked_index_select_sum", chunked),
                              ("embeddingbag_forward", spmdm)):
                with torch.no_grad():
                    s = _timeit(fn, iters)
                if gname == "embeddingbag_forward":
                    best = gathered_bytes / s
                rec(f"{gname}_{threads}thread", s, threads=threads, gather_GBps=round(gathered_bytes / s / 1e9, 3))
            eb_fwd_bps[threads] = best  # nn.EmbeddingBag's forward (F.embedding_bag), the reference of fwd ratios
        s_fwd = _timeit(lambda i: tbe(idx_c[i % nb], off_c), iters)  # grad on: the FBGEMM kernel's forward
        with torch.no_grad():  # FusedTBE's no-grad forward: ATen embedding_bag over the kernel's storage
            s_fwd_ng = _timeit(lambda i: tbe(idx_c[i % nb], off_c), iters)

        def step(i: int) -> None:
            tbe(idx_c[i % nb], off_c).backward(grad_out)
        s = _timeit(step, iters)
        rec(name, s, threads=threads, fwd_ms=round(1e3 * s_fwd, 2), fwd_nograd_ms=round(1e3 * s_fwd_ng, 2),
            fwd_gather_GBps=round(gathered_bytes / s_fwd / 1e9, 3),
            fwdbwd_gather_GBps=round(gathered_bytes / s / 1e9, 3),
            fwd_vs_embeddingbag_fwd=round(gathered_bytes / s_fwd / eb_fwd_bps[threads], 3))
        del tbe, idx_c
        gc.collect()
    torch.set_num_threads(2)

    # --- recsparse MappedEmbeddingBagCollection(fbgemm): raw-id KJT -> Full mapper -> TBE (end to end)
    from torchrec import KeyedJaggedTensor

    feats = [FeatureConfig(f"f{t}", rows, dim, "full") for t in range(tables)]
    m = MappedEmbeddingBagCollection(feats, backend="fbgemm", tbe_config=TBEConfig(
        learning_rate=0.01, table_groups=2, bounds_check=False))  # the tuned settings (see variants above)
    for t in range(tables):
        fill_(m.table_weight(f"f{t}"))
    lengths = torch.full((tables * batch,), pooling, dtype=torch.long)
    kjts = [KeyedJaggedTensor(keys=[f.name for f in feats], values=i, lengths=lengths) for i in idx]
    s = _timeit(lambda i: m(kjts[i % nb]).values().backward(grad_out), iters)
    rec("recsparse_mapped_ebc_fbgemm_groups2", s, threads=2)
    del m
    gc.collect()

    # --- one nn.EmbeddingBag per table, sparse grads + torch.optim.SGD
    bags = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum", sparse=True) for _ in range(tables))
    opt = torch.optim.SGD(bags.parameters(), lr=0.01)
    idx2 = [i.view(tables, batch, pooling) for i in idx]

    def eb_step(i: int) -> None:
        x = idx2[i % nb]
        out = torch.cat([bags[t](x[t]) for t in range(tables)], dim=1)
        out.backward(grad_out)
        opt.step()
        opt.zero_grad(set_to_none=True)
    s = _timeit(eb_step, iters)
    eb = rec("embeddingbag_per_table_sparse_sgd", s, threads=2)
    with torch.no_grad():
        s_fwd = _timeit(lambda i: torch.cat([bags[t](idx2[i % nb][t]) for t in range(tables)], 1), iters)
    eb["fwd_ms"] = round(1e3 * s_fwd, 2)
    del bags, opt
    gc.collect()

    # --- TorchRec: FusedEmbeddingBagCollection (TBE + fused SGD) and plain EBC (dense grads + SGD)
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

    cfgs = [EmbeddingBagConfig(name=f"t{t}", embedding_dim=dim, num_embeddings=rows, feature_names=[f"f{t}"])
            for t in range(tables)]
    fused = FusedEmbeddingBagCollection(cfgs, optimizer_type=torch.optim.SGD, optimizer_kwargs={"lr": 0.01},
                                        device=torch.device("cpu"))
    for p in fused.parameters():
        if p.numel() > 1:
            fill_(p.data)
    s = _timeit(lambda i: fused(kjts[i % nb]).values().backward(grad_out), iters)
    rec("torchrec_fused_ebc", s, threads=2)
    del fused
    gc.collect()
    ebc = EmbeddingBagCollection(cfgs, device=torch.device("cpu"))
    opt = torch.optim.SGD(ebc.parameters(), lr=0.01)

    def ebc_step(i: int) -> None:
        ebc(kjts[i % nb]).values().backward(grad_out)
        opt.step()
        opt.zero_grad(set_to_none=True)
    s = _timeit(ebc_step, max(2, iters // 4), warmup=1)
    rec("torchrec_ebc_dense_sgd", s, threads=2)
    del ebc, opt
    gc.collect()

    # --- summary keys
    by = {r["name"]: r for r in recs}
    eb_ex = by["embeddingbag_per_table_sparse_sgd"]["examples_per_s"]
    for r in recs:
        if not r["name"].startswith(("gather_", "embeddingbag_")):  # the plain-torch gathers and the baseline itself
            r["vs_embeddingbag"] = round(r["examples_per_s"] / eb_ex, 3)
    sgd = [r for r in recs if r["name"].startswith("tbe_sgd") and "fp16" not in r["name"] and "mean" not in r["name"]]
    best = max(sgd, key=lambda r: r["examples_per_s"])
    base = by["tbe_sgd_int64"]
    recs.append({"section": "tbe", "name": "summary", **shape,
                 "tbe_plain_vs_embeddingbag_step": base["vs_embeddingbag"],
                 "tbe_tuned_vs_embeddingbag_step": best["vs_embeddingbag"],
                 "tbe_tuned_variant": best["name"],
                 "recsparse_path_vs_embeddingbag_step": by["recsparse_mapped_ebc_fbgemm_groups2"]["vs_embeddingbag"],
                 "torchrec_fused_vs_embeddingbag_step": by["torchrec_fused_ebc"]["vs_embeddingbag"],
                 "tbe_plain_fwd_vs_embeddingbag_fwd": base["fwd_vs_embeddingbag_fwd"],
                 "tbe_tuned_fwd_vs_embeddingbag_fwd": best["fwd_vs_embeddingbag_fwd"],
                 "tbe_tuned_fwdbwd_vs_embeddingbag_fwd": round(best["fwdbwd_gather_GBps"] * 1e9 / eb_fwd_bps[2], 3),
                 "embeddingbag_fwd_GBps": round(eb_fwd_bps[2] / 1e9, 3)})
    return recs


# ------------------------------------------------------------------------------------------------------------ forward
def bench_forward(tables: int, rows: int, dim: int, batch: int, pooling: int, iters: int,
                  threads: tuple[int, ...] = (2,)) -> list[dict[str, Any]]:
    """The recsparse table path vs ``nn.EmbeddingBag`` in the same run, three modes each: forward (no grad),
    forward + backward + SGD update, inference with int8 tables — on the benchmark shape (random ids) and on Gowalla
    MF's real id stream (its training batches: 4,096 users + their positive items + 512 uniform negative items).

    recsparse = ``MappedEmbeddingBagCollection(backend='fbgemm')`` fed raw ids (its mappers included in the time):
    pooled ``forward(KJT)`` on the benchmark shape, ``embed`` per feature on Gowalla (what MF calls). int8 =
    ``quantize_tables`` (FBGEMM IntN TBE, called directly on the row KJT). ``nn.EmbeddingBag`` gets the row ids
    directly: fp32 tables, ``sparse=True`` + ``torch.optim.SGD`` for the update, and for int8 the same module
    quantised by ``torch.ao`` (``nn.quantized.EmbeddingBag``, FBGEMM's row-wise int8 kernel).

    Each case runs at every intra-op thread count of ``threads`` (rows of the first count are named
    ``<workload>_<mode>``, the others get a ``_<n>thread`` suffix), both sides alternating call by call."""
    import torch.nn as nn
    from torchrec import KeyedJaggedTensor

    from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection
    from recsparse.embeddings.quant import quantize_tables
    from recsparse.kernels import TBEConfig

    torch.set_num_threads(threads[0])
    recs: list[dict[str, Any]] = []
    # the tuned settings of the tbe section: two table groups (forward + fused backward on two threads)
    tuned = TBEConfig(learning_rate=0.01, table_groups=2, bounds_check=False)

    def pair(workload: str, mode: str, shape: dict[str, Any], ours: Callable[[int], Any], base: Callable[[int], Any],
             ours_name: str, base_name: str, n: int, grad: bool = False,
             fp32: Callable[[int], Any] | None = None) -> None:
        for th in threads:
            torch.set_num_threads(th)
            one_pair(workload, mode, shape, ours, base, ours_name, base_name, n, grad, fp32,
                     f"{workload}_{mode}" + ("" if th == threads[0] else f"_{th}thread"), th)
        torch.set_num_threads(threads[0])

    def one_pair(workload: str, mode: str, shape: dict[str, Any], ours: Callable[[int], Any],
                 base: Callable[[int], Any], ours_name: str, base_name: str, n: int, grad: bool,
                 fp32: Callable[[int], Any] | None, name: str, th: int) -> None:
        ctx = torch.enable_grad if grad else torch.no_grad
        fns = [base, ours] + ([fp32] if fp32 is not None else [])
        with ctx():
            times = _interleaved(fns, iters)
        s_base, s_ours = times[0], times[1]
        s_fp32 = times[2] if fp32 is not None else None
        r = {"section": "forward", "name": name, "workload": workload, "mode": mode, **shape, "threads": th,
             "recsparse": ours_name, "baseline": base_name, "recsparse_ms": round(1e3 * s_ours, 3),
             "embeddingbag_ms": round(1e3 * s_base, 3), "recsparse_lookups_per_s": round(n / s_ours),
             "embeddingbag_lookups_per_s": round(n / s_base), "speedup_vs_embeddingbag": round(s_base / s_ours, 3),
             "never_slower": s_ours <= s_base}
        if s_fp32 is not None:  # int8 inference also against the fp32 nn.EmbeddingBag forward a user starts from
            r.update(embeddingbag_fp32_ms=round(1e3 * s_fp32, 3),
                     speedup_vs_embeddingbag_fp32=round(s_fp32 / s_ours, 3), never_slower=s_ours <= min(s_base, s_fp32))
        recs.append(r)
        print(f"  {r['name']}: recsparse {r['recsparse_ms']} ms vs nn.EmbeddingBag {r['embeddingbag_ms']} ms "
              f"(x{r['speedup_vs_embeddingbag']})", flush=True)

    def int8_bags(bags: list[nn.EmbeddingBag]) -> list[nn.Module]:
        from torch.ao.nn.quantized import EmbeddingBag as QEmbeddingBag

        return [QEmbeddingBag.from_float(_qconfig(b)) for b in bags]

    # --- benchmark shape: T tables, random ids, pooled bags
    g = torch.Generator().manual_seed(0)
    nb = 3
    shape = dict(tables=tables, rows=rows, dim=dim, batch=batch, pooling=pooling, iters=iters)
    feats = [FeatureConfig(f"f{t}", rows, dim, "full") for t in range(tables)]
    ids = [torch.randint(0, rows, (tables * batch * pooling,), generator=g) for _ in range(nb)]
    lengths = torch.full((tables * batch,), pooling, dtype=torch.long)
    kjts = [KeyedJaggedTensor(keys=[f.name for f in feats], values=i, lengths=lengths) for i in ids]
    grad_out = torch.randn(batch, tables * dim, generator=g)
    m = MappedEmbeddingBagCollection(feats, backend="fbgemm", tbe_config=tuned, init_std=0.01)
    # the same tables (Full mapper: rows + 1 OOV row), the ids given to nn.EmbeddingBag directly as rows
    bags = nn.ModuleList(nn.EmbeddingBag(rows + 1, dim, mode="sum", sparse=True) for _ in range(tables))
    with torch.no_grad():
        for t, b in enumerate(bags):
            b.weight.copy_(m.table_weight(f"f{t}"))
    opt = torch.optim.SGD(bags.parameters(), lr=0.01)
    x3 = [i.view(tables, batch, pooling) for i in ids]

    def eb_fwd(i: int) -> torch.Tensor:
        return torch.cat([bags[t](x3[i % nb][t]) for t in range(tables)], dim=1)

    def eb_step(i: int) -> None:
        eb_fwd(i).backward(grad_out)
        opt.step()
        opt.zero_grad(set_to_none=True)
    n = tables * batch * pooling
    pair("bench_shape", "forward", shape, lambda i: m(kjts[i % nb]).values(), eb_fwd,
         "mapped_ebc_fbgemm_groups2", "nn.EmbeddingBag", n)
    pair("bench_shape", "fwd_bwd_update", shape, lambda i: m(kjts[i % nb]).values().backward(grad_out), eb_step,
         "mapped_ebc_fbgemm_groups2 (fused SGD)", "nn.EmbeddingBag sparse + SGD", n, grad=True)
    del m, opt
    gc.collect()
    mq = MappedEmbeddingBagCollection(feats, backend="torchrec")
    with torch.no_grad():
        for t, b in enumerate(bags):
            mq.table_weight(f"f{t}").copy_(b.weight)
    q = quantize_tables(mq, "int8")
    del mq
    gc.collect()
    qbags = int8_bags(list(bags))
    pair("bench_shape", "inference_int8", shape, lambda i: q(kjts[i % nb]).values(),
         lambda i: torch.cat([qbags[t](x3[i % nb][t]) for t in range(tables)], dim=1),
         "quantize_tables int8 (FBGEMM IntN TBE)", "nn.quantized.EmbeddingBag int8 (torch.ao)", n, fp32=eb_fwd)
    del q, qbags, bags
    gc.collect()

    # --- Gowalla MF: the training stream's id batches through the user and item tables
    from recsparse.data import load

    ds = load("gowalla")
    tr = ds.train.sample(fraction=1.0, shuffle=True, seed=0)
    B, M = 4096, 512
    users = torch.tensor(tr["user_id"].to_numpy()).split(B)[:nb]
    items = torch.tensor(tr["item_id"].to_numpy()).split(B)[:nb]
    negs = [torch.randint(0, ds.num_items, (M,), generator=g) for _ in range(nb)]
    gshape = dict(dataset="gowalla", users=ds.num_users, items=ds.num_items, dim=dim, batch=B, negatives=M,
                  iters=iters)
    gfeats = [FeatureConfig("user", ds.num_users, dim), FeatureConfig("item", ds.num_items, dim)]
    gm = MappedEmbeddingBagCollection(gfeats, backend="fbgemm", tbe_config=tuned, init_std=0.1)
    ub = nn.EmbeddingBag(ds.num_users + 1, dim, mode="sum", sparse=True)
    ib = nn.EmbeddingBag(ds.num_items + 1, dim, mode="sum", sparse=True)
    with torch.no_grad():
        ub.weight.copy_(gm.table_weight("user"))
        ib.weight.copy_(gm.table_weight("item"))
    gopt = torch.optim.SGD([ub.weight, ib.weight], lr=0.01)
    one = [torch.arange(B), torch.arange(M)]

    def g_ours(i: int) -> tuple[torch.Tensor, ...]:
        k = i % nb
        return gm.embed("user", users[k]), gm.embed("item", items[k]), gm.embed("item", negs[k])

    def g_eb(i: int, u: nn.Module = ub, it: nn.Module = ib) -> tuple[torch.Tensor, ...]:
        k = i % nb
        return u(users[k], one[0]), it(items[k], one[0]), it(negs[k], one[1])

    def g_ours_step(i: int) -> None:
        torch.cat(g_ours(i)).sum().backward()

    def g_eb_step(i: int) -> None:
        torch.cat(g_eb(i)).sum().backward()
        gopt.step()
        gopt.zero_grad(set_to_none=True)
    n = 2 * B + M
    pair("gowalla_mf", "forward", gshape, g_ours, g_eb, "mapped_ebc_fbgemm_groups2 embed", "nn.EmbeddingBag", n)
    pair("gowalla_mf", "fwd_bwd_update", gshape, g_ours_step, g_eb_step,
         "mapped_ebc_fbgemm_groups2 embed (fused SGD)",
         "nn.EmbeddingBag sparse + SGD", n, grad=True)
    gq_src = MappedEmbeddingBagCollection(gfeats, backend="torchrec")
    with torch.no_grad():
        for f in gfeats:
            gq_src.table_weight(f.name).copy_(gm.table_weight(f.name))
    gq = quantize_tables(gq_src, "int8")
    # stride B + M: user bags = B users then M empty bags; item bags = B positives then M negatives, one id each
    glen = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(M, dtype=torch.long),
                      torch.ones(B + M, dtype=torch.long)])
    gkjts = [KeyedJaggedTensor(keys=["user", "item"], values=torch.cat([users[k], items[k], negs[k]]), lengths=glen)
             for k in range(nb)]
    qu, qi = int8_bags([ub, ib])
    pair("gowalla_mf", "inference_int8", gshape, lambda i: gq(gkjts[i % nb]).values(),
         lambda i: g_eb(i, qu, qi), "quantize_tables int8 (FBGEMM IntN TBE)",
         "nn.quantized.EmbeddingBag int8 (torch.ao)", n, fp32=g_eb)
    recs.append({"section": "forward", "name": "summary",
                 "never_slower_all": all(r["never_slower"] for r in recs),
                 "slower_cases": ", ".join(r["name"] for r in recs if not r["never_slower"]) or "none"})
    return recs


def _qconfig(bag: Any) -> Any:
    """An ``nn.EmbeddingBag`` with torch.ao's float-qparams int8 weight qconfig attached (for ``from_float``)."""
    import copy

    from torch.ao.quantization import float_qparams_weight_only_qconfig

    b = copy.deepcopy(bag)
    b.sparse = False
    b.qconfig = float_qparams_weight_only_qconfig
    return b


# ---------------------------------------------------------------------------------------------------------------- dsl
def bench_dsl(batches: int, densities: list[float], interval: int, scope: str = "table") -> list[dict[str, Any]]:
    """Training examples/s of Gowalla MF (configs/gowalla_mf.yaml, ``batches`` steps, no evaluation) dense vs dynamic
    sparse learning at each density, the same run; the DSL runs update their masks every ``interval`` steps."""
    from pathlib import Path

    from recsparse.pipelines.config import load_config
    import shutil

    from recsparse.pipelines.train import run

    config = Path(__file__).resolve().parents[1] / "configs" / "gowalla_mf.yaml"
    recs: list[dict[str, Any]] = []
    for density in [None, *densities]:
        name = "gowalla_mf_dense" if density is None else f"gowalla_mf_dsl{density:g}"
        dsl = [] if density is None else [f"model.dsl.density={density}", f"model.dsl.interval={interval}",
                                          f"model.dsl.scope={scope}"]
        cfg = load_config(config, ["trainer.max_epochs=1", f"trainer.limit_train_batches={batches}",
                                   "trainer.progress_bar=false", f"name={name}", "trainer.num_threads=2",
                                   "trainer.output_dir=/tmp/recsparse-dsl-throughput/{name}", *dsl])
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
        rec = run(cfg, test=False)
        recs.append({"section": "dsl", "name": name, "dataset": "gowalla", "model": "mf", "density": density or 1.0,
                     "interval": interval if density else None, "scope": scope if density else None,
                     "batches": batches,
                     "batch_size": cfg.trainer.batch_size, "threads": cfg.trainer.num_threads,
                     "train_examples_per_s": rec["train_examples_per_s"]})
        print(f"  {name}: {rec['train_examples_per_s']:,.0f} examples/s", flush=True)
    dense = recs[0]["train_examples_per_s"]
    for r in recs[1:]:
        r["slowdown_vs_dense"] = round(dense / r["train_examples_per_s"], 3)
    return recs


# ---------------------------------------------------------------------------------------------------------- graphhash
def bench_graphhash(resolutions: list[float], seed: int) -> list[dict[str, Any]]:
    from recsparse.data import load
    from recsparse.embeddings.mappers import cluster_bipartite

    ds = load("gowalla")
    full_rows = ds.num_users + ds.num_items
    recs = []

    def run(res: float, record: bool = True) -> dict[str, Any]:
        c = cluster_bipartite(ds.train, res, seed, num_users=ds.num_users, num_items=ds.num_items, cache=False)
        rows = c.num_user_clusters + c.num_item_clusters + 2  # + one OOV row per side
        r = {"section": "graphhash", "name": f"gowalla_res{res:g}", "dataset": "gowalla", "resolution": res,
             "seed": seed, "cluster_s": round(c.seconds, 3), "user_clusters": c.num_user_clusters,
             "item_clusters": c.num_item_clusters, "modularity": round(c.modularity, 4), "table_rows": rows,
             "full_rows": full_rows, "row_fraction": round(rows / full_rows, 4)}
        print(f"  resolution {res:g}: {c.seconds:.2f}s, {c.num_user_clusters} user / {c.num_item_clusters} item "
              f"clusters, Q={c.modularity:.4f}, rows {rows / full_rows:.1%}", flush=True)
        if record:
            recs.append(r)
        return r

    for res in resolutions:
        run(res)
    # largest resolution (most rows) that still leaves <= 25% of the full rows: bracket then bisect
    lo, hi = 200.0, 400.0
    while run(hi, record=False)["row_fraction"] <= 0.25:
        lo, hi = hi, hi * 2
    for _ in range(6):
        mid = round((lo + hi) / 2)
        if run(mid, record=False)["row_fraction"] <= 0.25:
            lo = mid
        else:
            hi = mid
    best = run(lo)
    recs.append({"section": "graphhash", "name": "gowalla_summary", "dataset": "gowalla",
                 "resolution_at_25pct": lo, "row_fraction_at_25pct": best["row_fraction"],
                 "resolution_200_row_fraction": next((r["row_fraction"] for r in recs if r["resolution"] == 200), None)})
    return recs


# ------------------------------------------------------------------------------------------------------------ mappers
def bench_mappers(dim: int, repeats: int) -> list[dict[str, Any]]:
    import polars as pl

    from recsparse.data import load
    from recsparse.embeddings.mappers import MAPPERS, build_mapper

    ds = load("gowalla")
    stream = torch.tensor(ds.train["item_id"].to_numpy())
    frame = pl.DataFrame({"item_id": ds.train["item_id"]})
    n = ds.num_items
    recs = []
    for name in MAPPERS:
        kw: dict[str, Any] = {}
        if name in ("graphhash", "double_graphhash"):
            m = build_mapper(name, n, side="item", resolution=200.0).fit(ds.train, num_users=ds.num_users)
        else:
            if name == "universal":
                kw["num_hashes"] = 2
            m = build_mapper(name, n, None, **kw)
            m = m.fit(stream) if name in ("full", "frequency") else m.fit(None)
        t_torch = min(_timeit(lambda i: m.transform(stream), 1, warmup=1) for _ in range(repeats))
        expr = m.polars_expr("item_id")
        t_pl = min(_timeit(lambda i: frame.select(expr), 1, warmup=1) for _ in range(repeats))
        table = m.num_rows * dim * 4
        r = {"section": "mappers", "name": f"gowalla_item_{name}", "dataset": "gowalla", "mapper": name,
             "num_ids": n, "rows": m.num_rows, "rows_per_id": m.rows_per_id, "row_fraction": round(m.num_rows / n, 4),
             "table_bytes": table, "mapper_state_bytes": m.num_bytes_state, "bytes": table + m.num_bytes_state,
             "ids": stream.numel(), "torch_ids_per_s": round(stream.numel() / t_torch),
             "polars_ids_per_s": round(stream.numel() / t_pl)}
        print(f"  {name}: {m.num_rows} rows, torch {r['torch_ids_per_s']:,} ids/s, polars {r['polars_ids_per_s']:,}"
              " ids/s", flush=True)
        recs.append(r)
    return recs


# -------------------------------------------------------------------------------------------------------------- quant
def bench_quant(dim: int) -> list[dict[str, Any]]:
    import polars as pl
    from torchrec import KeyedJaggedTensor

    from recsparse.data import load
    from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection
    from recsparse.embeddings.quant import quantization_error, quantize_tables, table_bytes

    ds = load("gowalla")
    m = MappedEmbeddingBagCollection([FeatureConfig("user", ds.num_users, dim, "full"),
                                      FeatureConfig("item", ds.num_items, dim, "full")],
                                     backend="torchrec", init_std=0.1, seed=0)
    tr = ds.train.sample(4096, seed=0)
    kjt = KeyedJaggedTensor(keys=["user", "item"],
                            values=torch.tensor(pl.concat([tr["user_id"], tr["item_id"]]).to_numpy()),
                            lengths=torch.ones(2 * 4096, dtype=torch.long))
    base = table_bytes(m)
    recs = [{"section": "quant", "name": "gowalla_fp32", "dataset": "gowalla", "dtype": "fp32", "dim": dim,
             "table_bytes": base, "size_ratio": 1.0, "max_abs_err_weight": 0.0, "max_abs_err_pooled": 0.0,
             "weight_abs_max": round(float(max(m.table_weight(n).detach().abs().max() for n in m.feature_names)), 4)}]
    for dt in ("int8", "int4", "int2"):
        q = quantize_tables(m, dt)
        err = quantization_error(m, q, kjt)
        recs.append({"section": "quant", "name": f"gowalla_{dt}", "dataset": "gowalla", "dtype": dt, "dim": dim,
                     "table_bytes": table_bytes(q), "size_ratio": round(table_bytes(q) / base, 4),
                     **{k: round(v, 6) for k, v in err.items()}})
        print(f"  {dt}: {table_bytes(q):,} B ({table_bytes(q) / base:.3f} of fp32), errors {err}", flush=True)
    return recs


def _drop_section(section: str, results_dir: str | None) -> None:
    import json
    from pathlib import Path

    from recsparse.io import write_json
    from recsparse.results import RESULTS_DIR

    path = Path(results_dir or RESULTS_DIR) / f"{AREA}.json"
    if path.is_file():
        write_json(path, [r for r in json.loads(path.read_text()) if r.get("section") != section])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default="tbe,forward,dsl,graphhash,mappers,quant")
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--pooling", type=int, default=20)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dsl-batches", type=int, default=60, help="dsl section: timed training steps per run")
    p.add_argument("--dsl-interval", type=int, default=25, help="dsl section: mask-update interval")
    p.add_argument("--dsl-scope", default="table", help="dsl section: table | row")
    p.add_argument("--forward-threads", default="2",
                   help="forward section: intra-op thread counts, e.g. 2,1 (rows of the first carry no suffix)")
    p.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    a = p.parse_args()
    os.environ.setdefault("RECSPARSE_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    for section in a.sections.split(","):
        t0 = time.perf_counter()
        print(f"[{section}]", flush=True)
        if section == "tbe":
            recs = bench_tbe(a.tables, a.rows, a.dim, a.batch, a.pooling, a.iters)
        elif section == "forward":
            recs = bench_forward(a.tables, a.rows, a.dim, a.batch, a.pooling, a.iters,
                                 tuple(int(x) for x in a.forward_threads.split(",")))
        elif section == "dsl":
            recs = bench_dsl(a.dsl_batches, [0.5, 0.2, 0.05], a.dsl_interval, a.dsl_scope)
        elif section == "graphhash":
            recs = bench_graphhash([1.0, 50.0, 200.0], a.seed)
        elif section == "mappers":
            recs = bench_mappers(a.dim, repeats=3)
        elif section == "quant":
            recs = bench_quant(a.dim)
        else:
            raise SystemExit(f"unknown section {section!r} (tbe, forward, dsl, graphhash, mappers, quant)")
        prov = provenance(time.perf_counter() - t0)
        recs = [{**r, **prov} for r in recs]
        _drop_section(section, a.results_dir)  # a re-run section replaces all its rows (renamed rows go too)
        save_results(AREA, recs, key=KEY, results_dir=a.results_dir)
        rows = [r for r in recs if "summary" not in r["name"]]
        print_table(rows, columns=COLUMNS[section], title=f"embeddings: {section}")
        for r in recs:
            if "summary" in r["name"]:
                print_table([r], columns=[k for k in r if k not in ("command", "git_commit", "machine", "section")],
                            title=f"embeddings: {section} summary")


if __name__ == "__main__":
    main()
