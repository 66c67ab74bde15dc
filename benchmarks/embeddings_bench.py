"""Embedding-core benchmarks -> benchmarks/results/embeddings.json (+ .md), printed as tables.

Sections (``--sections``, default all):

* ``tbe`` — pooled multi-table lookup, 8 tables × 1M rows × dim 64, batch 4096, pooling 20 (uniform random ids),
  forward+backward with the optimizer update included: FBGEMM TBE (fused exact SGD; tuning variants: threads,
  index dtype, optimizer, fp16 weights, mean pooling), recsparse ``MappedEmbeddingBagCollection(backend='fbgemm')``
  end to end (raw-id KJT, Full mapper), one ``nn.EmbeddingBag`` per table (sparse grads + ``torch.optim.SGD``),
  TorchRec ``FusedEmbeddingBagCollection`` and plain ``EmbeddingBagCollection`` (dense grads + SGD). The random-row
  gather ceiling is measured in the same run on the same weights: ``index_select`` of the same rows + sum-pool,
  forward only. Keys: ``tbe_vs_embeddingbag_ratio``, ``tbe_gather_ceiling_fraction`` (TBE forward bytes/s ÷ ceiling).
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
    "tbe": ["name", "threads", "ms_per_step", "examples_per_s", "vs_embeddingbag", "fwd_ms", "fwd_gather_GBps",
            "fwd_ceiling_fraction", "gather_GBps"],
    "graphhash": ["name", "resolution", "cluster_s", "user_clusters", "item_clusters", "modularity", "table_rows",
                  "row_fraction"],
    "mappers": ["mapper", "rows", "rows_per_id", "row_fraction", "bytes", "mapper_state_bytes", "torch_ids_per_s",
                "polars_ids_per_s"],
    "quant": ["dtype", "dim", "table_bytes", "size_ratio", "max_abs_err_weight", "max_abs_err_pooled"],
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

    # --- FBGEMM TBE variants (same weights storage reused for the gather ceiling)
    variants = [("tbe_sgd_int64", dict(), 2), ("tbe_sgd_int32", dict(index_dtype=torch.int32), 2),
                ("tbe_sgd_int64_1thread", dict(), 1),
                ("tbe_sgd_nobounds", dict(bounds_check=False), 2),
                ("tbe_sgd_groups2", dict(table_groups=2), 2),
                ("tbe_sgd_groups2_nobounds", dict(table_groups=2, bounds_check=False), 2),
                ("tbe_rowwise_adagrad", dict(optimizer="rowwise_adagrad"), 2),
                ("tbe_rowwise_adagrad_groups2", dict(optimizer="rowwise_adagrad", table_groups=2), 2),
                ("tbe_sgd_fp16", dict(weights_precision="fp16"), 2),
                ("tbe_sgd_mean", dict(pooling="mean"), 2)]
    ceiling: dict[int, float] = {}
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
        if threads not in ceiling:
            # random-row gather + sum-pool of the same rows from the same weights, forward only, three ways;
            # the ceiling is the fastest
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
            for gname, fn in (("index_select_sum", naive), ("chunked_index_select_sum", chunked),
                              ("embedding_bag_spmdm", spmdm)):
                with torch.no_grad():
                    s = _timeit(fn, iters)
                best = max(best, gathered_bytes / s)
                rec(f"gather_{gname}_{threads}thread", s, threads=threads,
                    gather_GBps=round(gathered_bytes / s / 1e9, 3))
            ceiling[threads] = best
        with torch.no_grad():
            s_fwd = _timeit(lambda i: tbe(idx_c[i % nb], off_c), iters)

        def step(i: int) -> None:
            tbe(idx_c[i % nb], off_c).backward(grad_out)
        s = _timeit(step, iters)
        rec(name, s, threads=threads, fwd_ms=round(1e3 * s_fwd, 2),
            fwd_gather_GBps=round(gathered_bytes / s_fwd / 1e9, 3),
            fwdbwd_gather_GBps=round(gathered_bytes / s / 1e9, 3),
            fwd_ceiling_fraction=round(gathered_bytes / s_fwd / ceiling[threads], 3))
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
        if r["name"] != "embeddingbag_per_table_sparse_sgd" and not r["name"].startswith("gather"):
            r["vs_embeddingbag"] = round(r["examples_per_s"] / eb_ex, 3)
    sgd = [r for r in recs if r["name"].startswith("tbe_sgd") and "fp16" not in r["name"] and "mean" not in r["name"]]
    best = max(sgd, key=lambda r: r["examples_per_s"])
    base = by["tbe_sgd_int64"]
    recs.append({"section": "tbe", "name": "summary", **shape,
                 "tbe_vs_embeddingbag_ratio": best["vs_embeddingbag"],
                 "tbe_best_variant": best["name"],
                 "tbe_plain_vs_embeddingbag_ratio": base["vs_embeddingbag"],
                 "recsparse_path_vs_embeddingbag_ratio": by["recsparse_mapped_ebc_fbgemm_groups2"]["vs_embeddingbag"],
                 "torchrec_fused_vs_embeddingbag_ratio": by["torchrec_fused_ebc"]["vs_embeddingbag"],
                 "tbe_gather_ceiling_fraction": best["fwd_ceiling_fraction"],
                 "tbe_plain_gather_ceiling_fraction": base["fwd_ceiling_fraction"],
                 "tbe_fwdbwd_gather_ceiling_fraction": round(best["fwdbwd_gather_GBps"] * 1e9 / ceiling[2], 3),
                 "gather_ceiling_GBps": round(ceiling[2] / 1e9, 3)})
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default="tbe,graphhash,mappers,quant")
    p.add_argument("--tables", type=int, default=8)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--pooling", type=int, default=20)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    a = p.parse_args()
    os.environ.setdefault("RECSPARSE_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    for section in a.sections.split(","):
        t0 = time.perf_counter()
        print(f"[{section}]", flush=True)
        if section == "tbe":
            recs = bench_tbe(a.tables, a.rows, a.dim, a.batch, a.pooling, a.iters)
        elif section == "graphhash":
            recs = bench_graphhash([1.0, 50.0, 200.0], a.seed)
        elif section == "mappers":
            recs = bench_mappers(a.dim, repeats=3)
        elif section == "quant":
            recs = bench_quant(a.dim)
        else:
            raise SystemExit(f"unknown section {section!r} (tbe, graphhash, mappers, quant)")
        prov = provenance(time.perf_counter() - t0)
        recs = [{**r, **prov} for r in recs]
        save_results(AREA, recs, key=KEY, results_dir=a.results_dir)
        rows = [r for r in recs if "summary" not in r["name"]]
        print_table(rows, columns=COLUMNS[section], title=f"embeddings: {section}")
        for r in recs:
            if "summary" in r["name"]:
                print_table([r], columns=[k for k in r if k not in ("command", "git_commit", "machine", "section")],
                            title=f"embeddings: {section} summary")


if __name__ == "__main__":
    main()
