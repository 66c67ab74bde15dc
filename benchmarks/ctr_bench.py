"""CTR benchmarks -> ``benchmarks/results/ctr.json`` (+ ``.md``).

Sections (``--sections``, comma-separated):

* ``zoo`` — every CTR model on ml-100k-CTR and adult (full vocabulary tables, dim 16, Adam 1e-3, batch 1024,
  early stopping on validation AUC): test AUC / logloss, parameters, table rows/bytes, training examples/s, epochs.
* ``peer`` — the same models in DeepCTR-Torch (its own venv, ``--peer-venv``, created on first use with
  ``torch==2.13.0`` first, then ``deepctr-torch`` + ``requests``), on the identical encoded rows, dim, batch,
  epochs and early stopping, side by side with recsparse in one run.
* ``peer_speed`` — one training epoch per model in each library (throughput only); run under the timing lock.
* ``unified`` — unified embedding at ``--budgets`` of the summed full-vocabulary rows (rows of the model's dim:
  equal parameters) vs per-feature modulo / universal hashing at the same rows vs full tables, ``--ue-models`` ×
  ``--seeds`` on ``--ue-datasets``; unified once per ``--ue-chunks`` c (c salted lookups of dim/c per feature,
  concatenated: Coleman et al.'s multi-probe layout). Then ``unified_mean`` rows (mean ± std over seeds), with
  ``variant=val_selected_chunks``: per run the c with the best validation AUC.
* ``throughput`` — Criteo-like shape (26 sparse features with the Criteo Kaggle cardinalities capped at 10M, dim
  16, batch 4096, Zipf(1.1) ids; synthetic ids, timing only): forward + backward + SGD update examples/s of the
  embedding layer + a linear head, for per-feature tables (FBGEMM TBE, fused SGD), TorchRec
  ``FusedEmbeddingBagCollection``, and ``UnifiedEmbedding`` at ``--tp-ue-fractions`` of the rows with its FBGEMM
  fused update and with a sparse gradient (``--tp-dense-ue``: also the dense gradient).
  Run under the timing lock.
* ``transform`` — rows/s of the feature pipeline on the full ml-100k-CTR frame (100k rows): Polars encode + map
  (``rows_frame``), Polars encode + torch mappers, the KJT batch stream, and a per-row Python loop.

Examples::

    nice -n 10 python benchmarks/ctr_bench.py --sections zoo,peer
    nice -n 10 python benchmarks/ctr_bench.py --sections unified --seeds 0 1 2
    flock /tmp/recsparse-timing.lock python benchmarks/ctr_bench.py --sections throughput,transform,peer_speed
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = ["section", "dataset", "model", "mapper", "budget", "seed", "library", "variant"]
ALL_MODELS = ["lr", "fm", "wide_deep", "deepfm", "dcn_v2", "dlrm", "autoint"]
PEER_MODELS = ["wide_deep", "deepfm", "dcn_v2", "autoint"]
PEER_DIFFERENCES = {
    "wide_deep": "same definition (wide = first-order over all features, deep MLP 256-128)",
    "deepfm": "same definition (first order + FM + MLP 256-128 over shared embeddings)",
    "dcn_v2": "DeepCTR DCN(cross_parameterization='matrix') is PARALLEL cross || deep (128-128) plus a first-order "
              "logit; recsparse DCN-V2 is STACKED cross -> deep (128-128), no first-order term",
    "autoint": "DeepCTR AutoInt attends over sparse fields only (dense features only in its MLP and an added "
               "first-order logit); recsparse AutoInt makes each dense feature a field (x_m v_m, as in the paper) "
               "and has no first-order term; both 3 layers x 2 heads + MLP 256-128",
}
COMMON_DIFFERENCES = ("embedding init: DeepCTR N(0, 1e-4), recsparse U(+-1/sqrt(rows)); DeepCTR's L2 penalties "
                      "set to 0 (recsparse has none)")


def _save(records: list[dict[str, Any]], no_save: bool) -> None:
    """Merge rows into ctr.json under a file lock (several study processes, e.g. one per seed, may save at once)."""
    import fcntl

    from recsparse.results import RESULTS_DIR, save_results

    if records and not no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        with open(RESULTS_DIR / ".ctr.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            save_results("ctr", records, KEY)


def _row(section: str, rec: dict[str, Any], t0: float, **extra: Any) -> dict[str, Any]:
    from recsparse.results import provenance

    out = {"section": section, **{k: v for k, v in rec.items() if k not in ("config",)}, **extra}
    out.update(provenance(time.perf_counter() - t0))
    return out


# ---------------------------------------------------------------------------------------------------------- zoo
def run_zoo(args: argparse.Namespace) -> None:
    from recsparse.data.ctr import load_ctr
    from recsparse.pipelines.config import CTRConfig
    from recsparse.pipelines.ctr import fit_ctr, prepare

    for dsn in args.datasets:
        ds = load_ctr(dsn)
        _, fitted = prepare(CTRConfig.from_dict({"data": {"dataset": dsn}}), ds)
        for m in args.models:
            for seed in args.seeds:
                t0 = time.perf_counter()
                cfg = CTRConfig.from_dict({"data": {"dataset": dsn}, "model": {"name": m, "dim": args.dim},
                                           "trainer": {"max_epochs": args.epochs, "patience": args.patience,
                                                       "batch_size": args.batch_size, "seed": seed}})
                rec = fit_ctr(cfg, ds, fitted)
                row = _row("zoo", rec, t0, library="recsparse", variant="default", max_epochs=args.epochs,
                           patience=args.patience, batch_size=args.batch_size)
                print(json.dumps({k: row[k] for k in ("dataset", "model", "test_auc", "test_logloss", "epochs",
                                                      "train_examples_per_s")}), flush=True)
                _save([row], args.no_save)


# --------------------------------------------------------------------------------------------------------- peer
def ensure_peer_venv(venv: Path) -> Path:
    """The DeepCTR-Torch venv (created on first use): torch==2.13.0 FIRST (never an unpinned torch), then
    deepctr-torch + requests (deepctr-torch needs it and does not declare it)."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import deepctr_torch, requests"],
                                      capture_output=True).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "deepctr-torch", "requests", "scikit-learn", "pandas"], check=True)
    return py


def export_encoded(fitted: Any, ds: Any, path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Write the encoded TABLE ROWS (recsparse's fitted vocabulary mappers) of train/valid/test to ``path`` (npz):
    one int64 column per single-valued feature, ``[N, maxlen]`` 0-padded rows + 1 per multi-hot feature."""
    from recsparse.embeddings.features import MultiHot

    arrays: dict[str, np.ndarray] = {}
    sparse: list[dict[str, Any]] = []
    maxlen = {}
    for part, frame in (("train", ds.train), ("valid", ds.valid), ("test", ds.test)):
        enc = fitted.encode(frame)
        for f in fitted.spec.sparse:
            m = fitted.mappers[f.name]
            rows = m.transform(enc.values[f.name])[:, 0].numpy()
            if isinstance(f, MultiHot):
                off = enc.offsets[f.name].numpy()
                lens = np.diff(off)
                L = maxlen.setdefault(f.name, max(1, int(lens.max())))
                pad = np.zeros((len(lens), L), dtype=np.int64)
                for j in range(L):  # vectorised per position, not per row
                    has = lens > j
                    pad[has, j] = rows[off[:-1][has] + j] + 1
                arrays[f"{part}:{f.name}"] = pad
            else:
                arrays[f"{part}:{f.name}"] = rows.astype(np.int64)
        for j, d in enumerate(fitted.dense_names):
            arrays[f"{part}:{d}"] = enc.dense[:, j].numpy().astype(np.float32)
        arrays[f"{part}:label"] = enc.label.numpy().astype(np.float32)
    for f in fitted.spec.sparse:
        sparse.append({"name": f.name, "rows": fitted.mappers[f.name].num_rows,
                       "maxlen": maxlen.get(f.name, 0) if isinstance(f, MultiHot) else 0})
    np.savez(path, **arrays)
    return sparse, list(fitted.dense_names)


def run_peer_job(py: Path, fitted: Any, ds: Any, models: list[str], args: argparse.Namespace, max_epochs: int,
                 seed: int) -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="recsparse-peer-") as tmp:
        npz = Path(tmp) / "data.npz"
        sparse, dense = export_encoded(fitted, ds, npz)
        job = {"npz": str(npz), "sparse": sparse, "dense": dense, "dim": args.dim, "batch_size": args.batch_size,
               "max_epochs": max_epochs, "patience": args.patience, "seed": seed, "models": models,
               "threads": args.threads}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        out = subprocess.run([str(py), str(ROOT / "benchmarks" / "ctr_bench_deepctr.py"), str(Path(tmp) / "job.json")],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"DeepCTR-Torch peer failed:\n{out.stderr[-3000:]}")
    res = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["model"]: r for r in res}


def run_peer(args: argparse.Namespace, speed_only: bool = False) -> None:
    import torch

    from recsparse.data.ctr import load_ctr
    from recsparse.pipelines.config import CTRConfig
    from recsparse.pipelines.ctr import fit_ctr, prepare

    py = ensure_peer_venv(Path(args.peer_venv))
    version = subprocess.run([str(py), "-c", "import deepctr_torch, torch; print(deepctr_torch.__version__, "
                              "torch.__version__)"], capture_output=True, text=True).stdout.split()
    section = "peer_speed" if speed_only else "peer"
    max_epochs = 1 if speed_only else args.epochs
    models = [m for m in args.models if m in PEER_MODELS]
    for dsn in args.datasets:
        ds = load_ctr(dsn)
        _, fitted = prepare(CTRConfig.from_dict({"data": {"dataset": dsn}}), ds)
        seed = args.seeds[0]
        for m in models:
            t0 = time.perf_counter()
            torch.set_num_threads(args.threads)
            cfg = CTRConfig.from_dict({"data": {"dataset": dsn}, "model": {"name": m, "dim": args.dim},
                                       "trainer": {"max_epochs": max_epochs, "patience": args.patience,
                                                   "batch_size": args.batch_size, "seed": seed,
                                                   "num_threads": args.threads}})
            ours = fit_ctr(cfg, ds, fitted)
            t_ours = time.perf_counter() - t0
            t1 = time.perf_counter()
            theirs = run_peer_job(py, fitted, ds, [m], args, max_epochs, seed)[m]
            rows = [_row(section, ours, t0, library="recsparse", variant="default", threads=args.threads),
                    _row(section, {**{k: ours[k] for k in ("dataset", "model", "mapper", "budget", "seed", "dim")},
                                   **theirs}, t1, library=f"deepctr-torch {version[0] if version else '?'}",
                         variant="default", threads=args.threads, peer_torch=version[1] if len(version) > 1 else "?",
                         definition=PEER_DIFFERENCES[m] + "; " + COMMON_DIFFERENCES)]
            rows[0]["wall_s"] = round(t_ours, 3)
            rows[0]["speedup_vs_peer"] = round(ours["train_examples_per_s"] / theirs["train_examples_per_s"], 2)
            rows[0]["auc_minus_peer"] = round(ours["test_auc"] - theirs["test_auc"], 5)
            for r in rows:
                print(json.dumps({k: r.get(k) for k in ("dataset", "model", "library", "test_auc", "test_logloss",
                                                        "epochs", "train_examples_per_s")}), flush=True)
            _save(rows, args.no_save)


# ------------------------------------------------------------------------------------------------------ unified
def run_unified(args: argparse.Namespace) -> None:
    from recsparse.data.ctr import load_ctr
    from recsparse.pipelines.config import CTRConfig
    from recsparse.pipelines.ctr import budget_spec, fit_ctr

    for dsn in args.ue_datasets:
        ds = load_ctr(dsn)
        full = ds.spec.fit(ds.train)
        full_rows = int(sum(full.table_rows().values()))
        # (mapper, budget, variant) -> fitted spec; unified once per --ue-chunks value c (c salted lookups of
        # dim/c per feature from a table of c·budget·rows rows: the same parameters for every c)
        fitted: dict[tuple[str, float, str], Any] = {("full", 1.0, "default"): full} if "full" in args.ue_mappers else {}
        for b in args.budgets:  # budget by budget, so a cut-short study still has every mapper at the first budgets
            for mapper in [m for m in args.ue_mappers if m != "full"]:
                spec = budget_spec(ds.spec, full.table_rows(), mapper, b)
                if mapper != "unified":
                    fitted[(mapper, b, "default")] = spec.fit(ds.train)
                    continue
                for c in args.ue_chunks:
                    fitted[(mapper, b, f"c{c}")] = budget_spec(ds.spec, full.table_rows(), mapper, b, c).fit(ds.train)
        for model in args.ue_models:
            for seed in args.seeds:
                for (mapper, b, variant), fs in fitted.items():
                    t0 = time.perf_counter()
                    cfg = CTRConfig.from_dict({"data": {"dataset": dsn},
                                               "model": {"name": model, "mapper": mapper, "budget": b, "dim": args.dim},
                                               "trainer": {"max_epochs": args.epochs, "patience": args.patience,
                                                           "batch_size": args.batch_size, "seed": seed}})
                    rec = fit_ctr(cfg, ds, fs)
                    row = _row("unified", rec, t0, library="recsparse", variant=variant, full_rows=full_rows,
                               chunks=fs.spec.unified_chunks if mapper == "unified" else None,
                               max_epochs=args.epochs, patience=args.patience)
                    print(json.dumps({k: row[k] for k in ("model", "mapper", "variant", "budget", "seed", "test_auc",
                                                          "val_auc", "table_bytes", "epochs")}), flush=True)
                    _save([row], args.no_save)
    summarise_unified(args.no_save)


def summarise_unified(no_save: bool) -> None:
    """``unified_mean`` rows: mean ± std of test AUC / logloss over the seeds in ctr.json, and the gap to full."""
    from recsparse.results import RESULTS_DIR, provenance

    path = RESULTS_DIR / "ctr.json"
    if not path.exists():
        return
    rows = [r for r in json.loads(path.read_text()) if r.get("section") == "unified"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["model"], r["mapper"], r["budget"], r["variant"]), []).append(r)
    # "unified" proper: per (dataset, model, budget, seed) the chunk count c with the best VALIDATION AUC
    picked: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r["mapper"] == "unified" and r["variant"].startswith("c"):
            k = (r["dataset"], r["model"], r["budget"], r["seed"])
            if k not in picked or r["val_auc"] > picked[k]["val_auc"]:
                picked[k] = r
    for (d, m, b, _), r in picked.items():
        groups.setdefault((d, m, "unified", b, "val_selected_chunks"), []).append(r)
    full = {(d, m): statistics.mean(x["test_auc"] for x in g) for (d, m, mp, b, _), g in groups.items()
            if mp == "full"}
    out = []
    for (d, m, mp, b, v), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][3], kv[0][2],
                                                                      kv[0][4])):
        aucs = [x["test_auc"] for x in g]
        mean = statistics.mean(aucs)
        out.append({"section": "unified_mean", "dataset": d, "model": m, "mapper": mp, "budget": b, "seed": None,
                    "library": "recsparse", "variant": v, "seeds": len(g),
                    "chunks": sorted({x.get("chunks") for x in g if x.get("chunks") is not None}) or None,
                    "test_auc_mean": round(mean, 5), "test_auc_std": round(statistics.pstdev(aucs), 5),
                    "test_logloss_mean": round(statistics.mean(x["test_logloss"] for x in g), 5),
                    "auc_minus_full": round(mean - full[(d, m)], 5) if (d, m) in full else None,
                    "table_rows": g[0]["table_rows"], "table_bytes": g[0]["table_bytes"],
                    "epochs_mean": round(statistics.mean(x["epochs"] for x in g), 2),
                    **provenance(None)})
        print(json.dumps({k: out[-1][k] for k in ("dataset", "model", "mapper", "variant", "budget", "seeds",
                                                  "test_auc_mean", "test_auc_std", "auc_minus_full")}), flush=True)
    _save(out, no_save)


# --------------------------------------------------------------------------------------------------- throughput
# Criteo Kaggle (display advertising) cardinalities of C1..C26, capped at 10M rows
CRITEO_CARDINALITIES = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                        5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def run_throughput(args: argparse.Namespace) -> None:
    import torch
    from torchrec import KeyedJaggedTensor

    from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection
    from recsparse.embeddings.unified import UnifiedEmbedding
    from recsparse.kernels.tbe import TBEConfig

    torch.set_num_threads(args.threads)
    cards = [min(c, args.tp_cap) for c in CRITEO_CARDINALITIES]
    B, D, lr = args.tp_batch, 16, 0.01
    rng = np.random.default_rng(0)
    names = [f"C{i + 1}" for i in range(len(cards))]

    def zipf_batch() -> Any:
        vals = [torch.from_numpy((rng.zipf(1.1, B) - 1) % c) for c in cards]
        return KeyedJaggedTensor(keys=names, values=torch.cat(vals), lengths=torch.ones(B * len(cards),
                                                                                          dtype=torch.long))

    batches = [zipf_batch() for _ in range(args.tp_steps + 2)]
    labels = torch.from_numpy(rng.integers(0, 2, B).astype(np.float32))
    total_rows = int(sum(cards))

    def feats() -> list[FeatureConfig]:
        return [FeatureConfig(n, c, D, mapper="full") for n, c in zip(names, cards)]

    def timed(name: str, emb: torch.nn.Module, fused: bool, rows: int) -> None:
        head = torch.nn.Linear(len(cards) * D, 1)
        params = list(head.parameters()) if fused else list(emb.parameters()) + list(head.parameters())
        opt = torch.optim.SGD(params, lr=lr)

        def step(kjt: Any) -> None:
            out = emb(kjt)
            x = out.values() if hasattr(out, "values") and not isinstance(out, torch.Tensor) else out
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x).squeeze(-1), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for kjt in batches[:2]:
            step(kjt)
        t = time.perf_counter()
        for kjt in batches[2:]:
            step(kjt)
        dt = time.perf_counter() - t
        sparse_grad = name.endswith("sparse_grad")
        if name.startswith("unified"):
            assert any(p.grad.is_sparse for p in emb.parameters() if p.grad is not None) == sparse_grad
        rec = {"section": "throughput", "dataset": "synthetic-criteo-shape", "model": "embeddings+linear",
               "mapper": name, "budget": round(rows / total_rows, 4), "seed": 0, "library": "recsparse",
               "variant": name, "examples_per_s": round(args.tp_steps * B / dt, 1), "batch_size": B, "dim": D,
               "features": len(cards), "table_rows": rows, "threads": args.threads, "steps": args.tp_steps,
               "rows_cap": args.tp_cap,
               "update": "fused SGD in backward (FBGEMM)" if fused else
               ("sparse-gradient SGD (torch.optim)" if sparse_grad else "dense-gradient SGD (torch.optim)")}
        from recsparse.results import provenance

        rec.update(provenance(dt))
        print(json.dumps({k: rec[k] for k in ("mapper", "examples_per_s", "table_rows", "update")}), flush=True)
        _save([rec], args.no_save)

    import gc

    emb = MappedEmbeddingBagCollection(feats(), backend="fbgemm", tbe_config=TBEConfig(learning_rate=lr))
    timed("per_feature_fbgemm_tbe", emb, True, sum(emb.num_rows().values()))
    del emb
    gc.collect()
    from torchrec import EmbeddingBagConfig
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

    try:
        febc = FusedEmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name=f"t_{n}", embedding_dim=D, num_embeddings=c + 1, feature_names=[n])
                    for n, c in zip(names, cards)],
            optimizer_type=torch.optim.SGD, optimizer_kwargs={"lr": lr}, device=torch.device("cpu"))
        timed("torchrec_fused_ebc", febc, True, int(sum(c + 1 for c in cards)))
        del febc
    except Exception as e:  # noqa: BLE001 - record why TorchRec's fused EBC could not run here
        print(f"torchrec FusedEmbeddingBagCollection unavailable: {e}", flush=True)
    gc.collect()
    for frac in args.tp_ue_fractions:
        rows = max(1, math.ceil(frac * total_rows))
        pct = int(round(frac * 100))
        # the three update paths of UnifiedEmbedding's shared table (same salted hashes, same rows)
        ue = UnifiedEmbedding(feats(), rows, D, backend="fbgemm", tbe_config=TBEConfig(learning_rate=lr))
        timed(f"unified_{pct}pct_fbgemm_fused", ue, True, rows)
        del ue
        gc.collect()
        ue = UnifiedEmbedding(feats(), rows, D, backend="torch", sparse=True)
        timed(f"unified_{pct}pct_torch_sparse_grad", ue, False, rows)
        del ue
        gc.collect()
        if args.tp_dense_ue:
            ue = UnifiedEmbedding(feats(), rows, D, backend="torch")
            timed(f"unified_{pct}pct_torch", ue, False, rows)
            del ue
            gc.collect()


# ---------------------------------------------------------------------------------------------------- transform
def run_transform(args: argparse.Namespace) -> None:
    import bisect

    import torch

    from recsparse.data.ctr import load_ctr
    from recsparse.embeddings.features import Bucketized, MultiHot
    from recsparse.results import provenance

    torch.set_num_threads(args.threads)
    ds = load_ctr("ml-100k-ctr")
    import polars as pl

    frame = pl.concat([ds.train, ds.valid, ds.test])
    fitted = ds.spec.fit(ds.train)
    n = frame.height

    def best_of(fn: Any, repeats: int = 3) -> float:
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    def polars_rows() -> None:
        fitted.rows_frame(frame).collect()

    def torch_rows() -> None:
        enc = fitted.encode(frame, with_label=False)
        for k in fitted.sparse_names:
            fitted.mappers[k].transform(enc.values[k])

    def kjt_batches() -> None:
        for _ in fitted.batches(frame, batch_size=4096):
            pass

    vocab: dict[str, dict[Any, int]] = {}
    for f in fitted.spec.sparse:
        if "vocab" in fitted.states.get(f.name, {}):  # string vocabulary -> row
            vocab[f.name] = {v: i for i, v in enumerate(fitted.states[f.name]["vocab"])}
        elif not isinstance(f, Bucketized):  # integer ids: the full mapper's fitted id vocabulary -> row
            vocab[f.name] = {int(v): i for i, v in enumerate(fitted.mappers[f.name].vocab.tolist())}
    oov = {k: fitted.mappers[k].num_rows - 1 for k in fitted.sparse_names}

    def python_loop() -> None:
        out = []
        for row in frame.iter_rows(named=True):
            r = {}
            for f in fitted.spec.sparse:
                v = row[f.column or f.name]
                if isinstance(f, Bucketized):
                    r[f.name] = (bisect.bisect_right(fitted.numeric[f.name]["boundaries"], v) if v is not None
                                 else len(fitted.numeric[f.name]["boundaries"]) + 1)
                elif isinstance(f, MultiHot):
                    r[f.name] = [vocab[f.name].get(x, oov[f.name]) for x in (v or [])]
                else:
                    r[f.name] = vocab[f.name].get(v, oov[f.name])
            out.append(r)

    results = {"polars_rows_frame": best_of(polars_rows), "polars_encode+torch_mappers": best_of(torch_rows),
               "kjt_batch_stream_4096": best_of(kjt_batches), "python_per_row_loop": best_of(python_loop, 1)}
    recs = []
    for name, secs in results.items():
        rec = {"section": "transform", "dataset": "ml-100k-ctr", "model": None, "mapper": "full", "budget": 1.0,
               "seed": 0, "library": "recsparse", "variant": name, "rows": n, "seconds": round(secs, 4),
               "rows_per_s": round(n / secs, 1), "threads": args.threads,
               "speedup_vs_python_loop": round(results["python_per_row_loop"] / secs, 1), **provenance(secs)}
        recs.append(rec)
        print(json.dumps({k: rec[k] for k in ("variant", "rows_per_s", "speedup_vs_python_loop")}), flush=True)
    _save(recs, args.no_save)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="zoo")
    p.add_argument("--datasets", nargs="+", default=["ml-100k-ctr", "adult"])
    p.add_argument("--models", nargs="+", default=ALL_MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=10, help="max epochs (early stopping on validation AUC)")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budgets", nargs="+", type=float, default=[1.0, 0.5, 0.25, 0.1])
    p.add_argument("--ue-models", nargs="+", default=["dcn_v2", "deepfm"])
    p.add_argument("--ue-datasets", nargs="+", default=["ml-100k-ctr", "adult"])
    p.add_argument("--ue-chunks", nargs="+", type=int, default=[2, 4],
                   help="unified: salted lookups per feature (each a variant; the summary picks c by validation AUC)")
    p.add_argument("--ue-mappers", nargs="+", default=["full", "unified", "modulo", "universal"])
    p.add_argument("--peer-venv", default="/work/venvs/deepctr")
    p.add_argument("--tp-batch", type=int, default=4096)
    p.add_argument("--tp-steps", type=int, default=8)
    p.add_argument("--tp-cap", type=int, default=10_000_000, help="rows cap per table of the Criteo shape")
    p.add_argument("--tp-ue-fractions", nargs="+", type=float, default=[0.25])
    p.add_argument("--tp-dense-ue", action="store_true",
                   help="also time UnifiedEmbedding with a dense gradient (every row, every step: slow)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    known = {"zoo": run_zoo, "peer": run_peer, "peer_speed": lambda a: run_peer(a, speed_only=True),
             "unified": run_unified, "unified_mean": lambda a: summarise_unified(a.no_save),
             "throughput": run_throughput, "transform": run_transform}
    bad = [s for s in sections if s not in known]
    if bad:
        p.error(f"unknown section(s) {bad}; choose from {sorted(known)}")
    for s in sections:
        known[s](args)


if __name__ == "__main__":
    main()
