"""Side by side with the libraries users would pick instead -> ``benchmarks/results/peers.json`` (+ ``.md``).

* **RecBole 1.2.1** on Gowalla (the shared LightGCN split, converted to RecBole atomic files with the SAME train and
  test interactions: ``benchmark_filename`` = train / valid / test, where ``valid`` holds the test interactions so
  that RecBole's evaluation masks exactly the training items; no re-splitting, no filtering).
* **beir 2.2.0** on SciFact and NFCorpus: the same BM25 and dense runs scored by ``beir``'s ``EvaluateRetrieval``
  and by ours, and the end-to-end time of an exact dense BEIR evaluation (``DenseRetrievalExactSearch``) against
  our harness, both on the same cached all-MiniLM-L6-v2 embeddings.

The peers live in their OWN virtual environment (``--venv``, default ``/work/venvs/peers`` or
``$RECSPARSE_PEERS_VENV``), created here on first use with the same Python: torch 2.13.0 first (the local CPU
wheel; an unpinned torch would pull a CUDA build), then :data:`PEER_PINS`. Peer code runs in a subprocess with that
venv's python: ``benchmarks/peers/recbole_driver.py`` and ``benchmarks/peers/beir_driver.py``.

Sections (``--sections``, comma-separated):

* ``rec-train`` — train every ``--rec-models`` entry CONCURRENTLY (same machine, same moment: neither side gets a
  quieter machine), each for at most ``--budget-s`` seconds of training (evaluation excluded), evaluating the test
  set every ``--eval-every`` epochs to trace Recall@20 (÷ |test|, the paper protocol) against training seconds.
  Records: seconds/epoch, examples/s, seconds to Recall@20 ≥ .15 / ≥ .17 (or "not reached in X s (best R at Y s)"), best
  Recall@20 / NDCG@20 within the budget, set-up seconds, peak RSS.
* ``rec-collect`` — the ``rec-train`` rows again from the JSON the training processes wrote (for runs stopped
  early: their curves so far, ``finished=False``).
* ``rec-throughput`` — ``--batches`` training steps of each model in a fresh process, one model at a time:
  examples per CPU second and per wall second (run under the timing lock; epoch start costs included on both sides).
* ``rec-eval`` — full-ranking evaluation of each trained model in a FRESH process (load data + model, one timed
  evaluation of all 29,858 test users): seconds and peak RSS; run under ``flock /tmp/recsparse-timing.lock``.
* ``rec-check`` — the two evaluators on the same vectors: RecBole's final vectors scored by ours, and ours scored
  by RecBole's (loaded into a RecBole ``BPR`` model, score = inner product).
* ``beir`` — see above.

Examples::

    python benchmarks/peers_bench.py --sections setup
    nice -n 10 python benchmarks/peers_bench.py --sections rec-train --rec-models recbole:LightGCN ours:lightgcn_softmax \
        ours:lightgcn_bpr --budget-s 1200
    flock /tmp/recsparse-timing.lock python benchmarks/peers_bench.py --sections rec-eval,rec-check
    python benchmarks/peers_bench.py --sections beir
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after $PYTHONPATH: a child given another package folder (--baseline-rev) imports that

AREA = "peers"
KEY = ["section", "name"]
PEERS_DIR = ROOT / "benchmarks" / "peers"
DEFAULT_VENV = os.environ.get("RECSPARSE_PEERS_VENV", "/work/venvs/peers")
# Pins found to work on our torch 2.13.0 (RecBole 1.2.1 predates numpy 2 / pandas 2.3 / scipy 1.12 and imports
# pkg_resources; pyarrow >= 20 needs numpy 2 and is imported by beir's dense search via `datasets`).
PEER_PINS = ["recbole==1.2.1", "setuptools<81", "numpy<2", "pandas<2.3", "scipy<1.12", "beir==2.2.0", "requests",
             "pyarrow<20"]
THRESHOLDS = (0.15, 0.17)

# Our side of the Gowalla comparison. BPR runs use RecBole's documented defaults (dim 64, Adam lr 0.001, batch 2048,
# one uniform negative; LightGCN: 2 layers, reg 1e-5 on the batch's layer-0 embeddings, exactly RecBole's EmbLoss
# scaling; init N(0, 0.007), the scale of RecBole's xavier initialisation for these table shapes) so seconds/epoch
# compare the engines on the same algorithm; the softmax runs are our shipped recipes.
OURS = {
    "lightgcn_softmax": ("configs/gowalla_lightgcn.yaml", []),
    "lightgcn_softmax_fast": ("configs/gowalla_lightgcn_fast.yaml", []),  # lr 0.01, 4 epochs
    "lightgcn_bpr": ("configs/gowalla_lightgcn.yaml",
                     ["loss.name=bpr", "loss.reg_weight=0.00001",  # (YAML reads 1e-5 as a string)
                      "model.normalize=false", "model.item_bias=false",
                      "model.num_layers=2", "model.init_std=0.007", "trainer.lr=0.001", "trainer.batch_size=2048"]),
    "mf_softmax": ("configs/gowalla_mf.yaml", []),
    "mf_bpr": ("configs/gowalla_mf_bpr.yaml", ["loss.reg_weight=0", "model.init_std=0.007", "trainer.lr=0.001",
                                               "trainer.batch_size=2048"]),
}
RECBOLE = {"LightGCN": "LightGCN", "BPR": "BPR"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------------- peer venv
def peer_python(venv: str | Path) -> Path:
    return Path(venv) / "bin" / "python"


def ensure_venv(venv: str | Path) -> Path:
    """The peers' venv python, creating the venv (same Python as ours) and installing the pins on first use."""
    py = peer_python(venv)
    probe = "import recbole, beir, beir.retrieval.search.dense, torch; print(torch.__version__)"
    if py.is_file() and subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0:
        return py
    base = getattr(sys, "_base_executable", sys.executable)
    print(f"creating the peers' venv {venv} (torch 2.13.0 CPU, then {' '.join(PEER_PINS)}) ...", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # first: an unpinned torch is a multi-GB CUDA build
    subprocess.run([*pip, "torch==2.13.0", *PEER_PINS], check=True)
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the peers' venv {venv} does not import recbole + beir:\n{r.stderr[-2000:]}")
    return py


def peer_versions(py: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('recbole', 'beir', 'torch', 'numpy', 'pandas', 'scipy', 'sentence-transformers')}))")
    return json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1])


def run_json(cmd: list[str], out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{r.stderr[-4000:]}")
    return json.loads(out.read_text())


def child_env(src: Path = ROOT) -> dict[str, str]:
    """The children's environment; ``src``: the folder whose ``recsparse`` package they import (default: ours)."""
    env = os.environ.copy()
    env.update(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               PYTHONPATH=str(src))
    return env


def export_package(rev: str, dest: Path) -> Path:
    """``recsparse/`` as of git revision ``rev`` (``git archive``) under ``dest/<rev>``: a baseline to time against."""
    out = dest / rev
    if not (out / "recsparse").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "recsparse"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(out)], input=tar.stdout, check=True)
    return out


# ------------------------------------------------------------------------------------------------------- Gowalla
def convert_gowalla(folder: Path) -> tuple[Path, dict[str, int]]:
    """The shared Gowalla split as RecBole atomic files ``gowalla/gowalla.{train,valid,test}.inter``
    (``user_id:token item_id:token``); ``valid`` = ``test`` = our test interactions. Returns (data dir, counts)."""
    import polars as pl

    from recsparse.data import load

    ds = load("gowalla")
    d = folder / "gowalla"
    d.mkdir(parents=True, exist_ok=True)
    for part, frame in (("train", ds.train), ("valid", ds.test), ("test", ds.test)):
        path = d / f"gowalla.{part}.inter"
        tmp = path.with_suffix(".tmp")
        frame.select(pl.col("user_id").cast(pl.Utf8).alias("user_id:token"),
                     pl.col("item_id").cast(pl.Utf8).alias("item_id:token")).write_csv(tmp, separator="\t")
        tmp.replace(path)
    return folder, ds.counts()


def ours_throughput_child(name: str, batches: int, threads: int) -> None:
    """Fresh process: ``batches`` training steps of one of :data:`OURS` through the Lightning loop (data loader with
    negatives + step), timed from the first batch's start to the last batch's end; prints JSON."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.train import run

    config, overrides = OURS[name]
    cfg = load_config(config, [*overrides, f"trainer.num_threads={threads}", "trainer.progress_bar=false",
                               "trainer.max_epochs=1", f"trainer.limit_train_batches={batches}",
                               f"name=peers_{name}_throughput", "trainer.output_dir=/tmp/recsparse-peers-throughput/{name}"])
    torch.set_num_threads(threads)
    t: dict[str, float] = {}

    class Clock(Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            t["wall"], t["cpu"], t["n"] = time.perf_counter(), time.process_time(), 0

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, idx: int) -> None:
            t["n"] += int(batch["user"].numel())
            t["wall_end"], t["cpu_end"] = time.perf_counter(), time.process_time()

    run(cfg, extra_callbacks=[Clock()], test=False)
    wall, cpu = t["wall_end"] - t["wall"], t["cpu_end"] - t["cpu"]
    print(json.dumps({"peer": "recsparse", "model": name, "batches": batches, "batch_size": cfg.trainer.batch_size,
                      "examples": int(t["n"]), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                      "examples_per_cpu_s": round(t["n"] / cpu, 1), "examples_per_wall_s": round(t["n"] / wall, 1),
                      "threads": threads}))


def measure(model: str, mode: str, work: Path, threads: int, py: Path, driver_args: list[str],
            child_args: list[str], src: Path = ROOT) -> dict[str, Any]:
    """One fresh-process measurement of ``side:name``: RecBole's driver in ``mode`` (peers' venv) or this script's
    ``--ours-<mode>-child`` (our venv); returns the JSON it reports."""
    side, name = model.split(":", 1)
    data_dir, counts = convert_gowalla(work / "data")
    if side == "recbole":
        out = work / f"recbole_{name}_{mode}.json"
        return run_json([str(py), str(PEERS_DIR / "recbole_driver.py"), mode, "--model", RECBOLE[name],
                         "--data-dir", str(data_dir), "--num-items", str(counts["items"]), "--work", str(work / "recbole"),
                         "--out", str(out), "--threads", str(threads), *driver_args], out, child_env())
    r = subprocess.run([sys.executable, __file__, f"--ours-{mode}-child", name, "--threads", str(threads),
                        *child_args], capture_output=True, text=True, env=child_env(src))
    if r.returncode != 0:
        raise SystemExit(f"{model} {mode} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def rec_throughput(models: list[str], work: Path, batches: int, threads: int, py: Path) -> list[dict[str, Any]]:
    """Training steps per CPU/wall second of each model, one after the other in fresh processes (timing lock)."""
    from recsparse.results import provenance

    rows = []
    for m in models:
        t0 = time.perf_counter()
        res = measure(m, "throughput", work, threads, py, ["--batches", str(batches)], ["--batches", str(batches)])
        rows.append({"section": "rec-throughput", "name": m, "dataset": "gowalla", **res,
                     **provenance(time.perf_counter() - t0)})
    return rows


def ours_child(name: str, work: Path, budget_s: float, eval_every: int, threads: int, budget_clock: str,
               limit_batches: int | None = None) -> None:
    """Runs in its own process: train one of :data:`OURS` with a per-epoch test curve; writes JSON to work/name."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.train import run

    config, overrides = OURS[name]
    extra = [f"trainer.num_threads={threads}", "trainer.progress_bar=false", f"name=peers_{name}",
             f"trainer.output_dir={work}/runs/{{name}}"]
    if "bpr" in name:  # budget-bound: no epoch cap of its own
        extra.append("trainer.max_epochs=1000")
    if limit_batches:  # smoke tests only
        extra.append(f"trainer.limit_train_batches={limit_batches}")
    cfg = load_config(config, [*overrides, *extra])
    out = work / f"ours_{name}.json"
    t0 = time.perf_counter()
    split = build_split(cfg)
    rec: dict[str, Any] = {"peer": "recsparse", "model": name, "config": config, "overrides": " ".join(overrides),
                           "threads": threads, "batch_size": cfg.trainer.batch_size, "lr": cfg.trainer.lr,
                           "curve": [], "epochs": []}

    class Curve(Callback):
        def __init__(self) -> None:
            self.train_s = self.train_cpu_s = 0.0
            self._t = self._last = self._c = self._last_c = 0.0
            self._n = 0

        def on_train_start(self, trainer: Any, module: Any) -> None:
            rec["setup_s"] = round(time.perf_counter() - t0, 2)  # data, graph, module: before the first batch

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self._t = self._last = time.perf_counter()
            self._c = self._last_c = time.process_time()
            self._n = 0

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, idx: int) -> None:
            self._n += int(batch["user"].numel())
            self._last, self._last_c = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            dt, dc = self._last - self._t, self._last_c - self._c
            self.train_s += dt
            self.train_cpu_s += dc
            epoch = len(rec["epochs"]) + 1
            rec["epochs"].append({"epoch": epoch, "seconds": round(dt, 2), "cpu_seconds": round(dc, 2),
                                  "examples": self._n})
            spent = self.train_cpu_s if budget_clock == "cpu" else self.train_s
            last = spent >= budget_s or epoch >= cfg.trainer.max_epochs
            if epoch % eval_every == 0 or last:
                t1 = time.perf_counter()
                m = module.evaluate("test")
                point = {"epoch": epoch, "train_s": round(self.train_s, 2), "train_cpu_s": round(self.train_cpu_s, 2),
                         "recall@20": m["recall@20"], "recall@20_capped": m["recall_capped@20"],
                         "ndcg@20": m["ndcg@20"], "eval_s": round(time.perf_counter() - t1, 2)}
                rec["curve"].append(point)
                print(json.dumps(point), flush=True)
            rec.update(train_s=round(self.train_s, 2), train_cpu_s=round(self.train_cpu_s, 2),
                       peak_rss_mb=round(peak_rss_mb(), 1))
            out.write_text(json.dumps(rec, indent=1))
            if spent >= budget_s:
                trainer.should_stop = True

    curve = Curve()
    result = run(cfg, split, extra_callbacks=[curve], test=False)
    rec.update(train_s=round(curve.train_s, 2), train_cpu_s=round(curve.train_cpu_s, 2), peak_rss_mb=round(peak_rss_mb(), 1),
               checkpoint=str(ours_checkpoint(work, name)), num_items=split.num_items, table_bytes=result.get("bytes"))
    rec["finished"] = True
    out.write_text(json.dumps(rec, indent=1))


def ours_checkpoint(work: Path, name: str) -> Path:
    """The latest epoch's checkpoint of :func:`ours_child` (Lightning writes ``last.ckpt`` after every epoch)."""
    return work / "runs" / f"peers_{name}" / "checkpoints" / "last.ckpt"


def ours_vectors(name: str, work: Path) -> Path:
    """User/item vectors (original id order, item bias folded in) of our checkpoint -> ``.npz``."""
    import numpy as np
    import torch

    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.modules import build_module

    config, overrides = OURS[name]
    cfg = load_config(config, overrides)
    split = build_split(cfg)
    module = build_module(cfg, split)
    module.load_state_dict(torch.load(ours_checkpoint(work, name), map_location="cpu", weights_only=True)["state_dict"])
    module.eval()
    with torch.no_grad():
        user_fn, items = module.eval_vectors()
        users = user_fn(torch.arange(split.num_users))
    path = work / f"ours_{name}_vectors.npz"
    np.savez(path, user=users.numpy(), item=items.detach().numpy())
    return path


def ours_eval_child(name: str, checkpoint: str, threads: int, work: Path) -> None:
    """Fresh process: data + checkpoint, one timed full-ranking evaluation of every test user; prints JSON."""
    import torch

    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.modules import build_module

    config, overrides = OURS[name]
    cfg = load_config(config, [*overrides, f"trainer.num_threads={threads}"])
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    split = build_split(cfg)
    module = build_module(cfg, split)
    trained = Path(checkpoint).is_file()
    if trained:  # else the initial weights: the same amount of work, only the metric values differ
        module.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    module.train_interactions()
    load_s = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    m = module.evaluate("test")
    print(json.dumps({"peer": "recsparse", "model": name, "eval_s": round(time.perf_counter() - t1, 3),
                      "eval_cpu_s": round(time.process_time() - c1, 3),
                      "load_s": round(load_s, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "threads": threads,
                      "weights": checkpoint if trained else "initial (untrained)",
                      "eval_users_per_batch": cfg.eval.chunk_size, "recall@20": m["recall@20"],
                      "package": str(Path(sys.modules["recsparse"].__file__).parent),
                      "ndcg@20": m["ndcg@20"], "users": m["num_users"]}))


def time_to(curve: list[dict[str, Any]], threshold: float, key: str) -> float | None:
    for p in curve:
        if p["recall@20"] >= threshold:
            return p[key]
    return None


def summarize(res: dict[str, Any], budget_s: float, clock: str) -> dict[str, Any]:
    """One results row from a side's training JSON (RecBole's or ours)."""
    curve, epochs = res["curve"], res["epochs"]
    secs = [e["seconds"] for e in epochs]
    cpu = [e["cpu_seconds"] for e in epochs]
    examples = res.get("examples_per_epoch") or (epochs[0].get("examples") if epochs else None)
    best = max(curve, key=lambda p: p["recall@20"]) if curve else {}
    row: dict[str, Any] = {
        "section": "rec-train", "name": f"{res['peer']}:{res['model']}", "peer": res["peer"],
        "model": res["model"], "dataset": "gowalla", "epochs": len(epochs),
        "train_cpu_s": res["train_cpu_s"], "train_wall_s": res["train_s"],
        "cpu_s_per_epoch": round(sum(cpu) / len(cpu), 2) if cpu else None,
        "wall_s_per_epoch": round(sum(secs) / len(secs), 2) if secs else None,
        "examples_per_cpu_s": round(examples * len(cpu) / sum(cpu), 1) if cpu and examples else None,
        "examples_per_wall_s": round(examples * len(secs) / sum(secs), 1) if secs and examples else None,
    }
    # a run stopped before its budget (time limit) is judged on what it spent, and only where it was evaluated; a run
    # that finished its own recipe (its epochs) before the budget ran out is judged on the whole run
    budget_s = res.get("budget_s", budget_s)  # set while training (RecBole's --budget-file): the one in force
    row["budget"] = f"{budget_s:.0f} {clock} s"
    spent = res.get("train_cpu_s" if clock == "cpu" else "train_s", 0.0) or 0.0
    evaluated = max((p["train_cpu_s" if clock == "cpu" else "train_s"] for p in curve), default=0.0)
    for t in THRESHOLDS:
        for key, label in (("train_cpu_s", "cpu_s"), ("train_s", "wall_s")):
            s = time_to(curve, t, key)
            if s is not None:
                row[f"{label}_to_r20_{t:.2f}"] = round(s, 1)
            elif spent >= budget_s or res.get("finished"):  # the whole run on this clock, and where its best point was
                row[f"{label}_to_r20_{t:.2f}"] = (f"not reached in {res[key]:.0f} s (best {best['recall@20']:.4f} at "
                                                  f"{best[key]:.0f} s)" if best else f"not reached in {res[key]:.0f} s")
            elif curve:
                row[f"{label}_to_r20_{t:.2f}"] = f"not reached at {evaluated:.0f} {clock} s (stopped early)"
            else:
                row[f"{label}_to_r20_{t:.2f}"] = f"not evaluated (stopped at {spent:.0f} {clock} s)"
    row.update({"best_recall@20": round(best["recall@20"], 4) if best else None,
                "best_ndcg@20": round(best["ndcg@20"], 4) if best else None, "best_epoch": best.get("epoch"),
                "final_recall@20": round(curve[-1]["recall@20"], 4) if curve else None,
                "setup_s": res.get("setup_s"), "train_peak_rss_mb": res.get("peak_rss_mb"),
                "threads": res.get("threads"), "eval_points": len(curve),
                "curve": [[p["epoch"], p["train_cpu_s"], p["train_s"], round(p["recall@20"], 4),
                           round(p["ndcg@20"], 4)] for p in curve]})
    for k in ("learning_rate", "lr", "train_batch_size", "batch_size", "n_layers", "reg_weight", "config",
              "overrides"):
        if k in res:
            row[k] = res[k]
    return row


def rec_train(models: list[str], work: Path, default_budget: float, budgets: dict[str, float], clock: str,
              eval_every: dict[str, int], threads: int, py: Path, note: str = "") -> list[dict[str, Any]]:
    """Start every model's training process at once, wait for all, summarise."""
    from recsparse.results import provenance

    data_dir, counts = convert_gowalla(work / "data")
    procs: list[tuple[str, subprocess.Popen, Path]] = []
    t0 = time.perf_counter()
    for m in models:
        side, name = m.split(":", 1)
        every = eval_every.get(name, 1)
        budget_s = budgets.get(name, default_budget)
        log = (work / f"{side}_{name}.log").open("w")
        if side == "recbole":
            out = work / f"recbole_{name}.json"
            cmd = [str(py), str(PEERS_DIR / "recbole_driver.py"), "train", "--model", RECBOLE[name],
                   "--data-dir", str(data_dir), "--num-items", str(counts["items"]), "--work", str(work / "recbole"),
                   "--out", str(out), "--budget-s", str(budget_s), "--budget-clock", clock, "--eval-every", str(every),
                   "--threads", str(threads), "--state", str(work / f"recbole_{name}.pt"),
                   "--budget-file", str(work / f"recbole_{name}.budget"),
                   "--export", str(work / f"recbole_{name}_vectors.npz")]
        elif side == "ours":
            if name not in OURS:
                raise SystemExit(f"unknown model {m!r}: ours:{{{','.join(OURS)}}}")
            out = work / f"ours_{name}.json"
            cmd = [sys.executable, __file__, "--ours-child", name, "--work", str(work), "--budget-s", str(budget_s),
                   "--child-every", str(every), "--threads", str(threads), "--budget-clock", clock]
        else:
            raise SystemExit(f"unknown model {m!r} (recbole:NAME or ours:NAME)")
        procs.append((m, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env()), out))
    from recsparse.io import write_json

    write_json(work / "rec_train_manifest.json", {"models": models, "budgets": {m: budgets.get(m.split(":", 1)[1],
               default_budget) for m in models}, "clock": clock, "note": note, **provenance()})
    for m, p, out in procs:
        if p.wait() != 0:
            print(f"{m} exited with {p.returncode}; see {work}/{m.replace(':', '_')}.log", file=sys.stderr)
    return rec_collect(models, work, time.perf_counter() - t0)


def best_within(curve: list[dict[str, Any]], seconds: float, key: str) -> dict[str, Any] | None:
    """The evaluation with the best Recall@20 among those made within ``seconds`` of training (``key``: the clock)."""
    points = [p for p in curve if p[key] <= seconds]
    return max(points, key=lambda p: p["recall@20"]) if points else None


def rec_collect(models: list[str], work: Path, wall_s: float | None = None,
                within_s: float | None = None) -> list[dict[str, Any]]:
    """Rows from the training JSON each side writes after every epoch (a run stopped early, e.g. by the session's
    time limit, gives its curve so far: ``finished`` says which). The manifest names the run's command and commit.
    ``within_s``: also the best Recall@20 (and its NDCG@20) among the evaluations made within that many training
    seconds on the manifest's clock (e.g. the other side's whole run: the same budget for both)."""
    from recsparse.results import provenance

    man = json.loads((work / "rec_train_manifest.json").read_text())
    rows = []
    for m in models:
        side, name = m.split(":", 1)
        out = work / f"{side}_{name}.json"
        if not out.is_file():
            rows.append({"section": "rec-train", "name": m, "error": f"no {out.name} (see {side}_{name}.log)"})
            continue
        res = json.loads(out.read_text())
        row = summarize(res, float(man["budgets"].get(m, 0.0)), man["clock"])
        if within_s is not None:
            key = "train_cpu_s" if man["clock"] == "cpu" else "train_s"
            best = best_within(res["curve"], within_s, key)
            row["within"] = f"{within_s:.0f} {man['clock']} s"
            row["best_recall@20_within"] = round(best["recall@20"], 4) if best else None
            row["best_ndcg@20_within"] = round(best["ndcg@20"], 4) if best else None
            row["best_within_at"] = f"epoch {best['epoch']}, {best[key]:.0f} s" if best else "no evaluation yet"
        row["finished"] = bool(res.get("finished"))
        row["concurrent_with"] = ", ".join(x for x in man["models"] if x != m)
        if man.get("note"):  # e.g. what ran beside it in the machine's other slot
            row["note"] = man["note"]
        row["train_command"], row["train_commit"] = man["command"], man["git_commit"]
        rows.append(row | provenance(wall_s))
    return rows


def rec_eval(models: list[str], work: Path, threads: int, py: Path,
             baseline_rev: str | None = None) -> list[dict[str, Any]]:
    """Each model's full-ranking evaluation in a fresh process; ``baseline_rev``: our models are evaluated a second
    time with the ``recsparse`` package of that git revision (same checkpoint: same metrics, other evaluator code)."""
    from recsparse.results import provenance

    runs = [(m, ROOT, m) for m in models]
    if baseline_rev:
        src = export_package(baseline_rev, work / "baseline")
        runs += [(m, src, f"{m} @{baseline_rev}") for m in models if m.startswith("ours:")]
    rows = []
    for m, src, label in runs:
        side, name = m.split(":", 1)
        t0 = time.perf_counter()
        res = measure(m, "eval", work, threads, py, ["--state", str(work / f"recbole_{name}.pt")],
                      ["--checkpoint", str(ours_checkpoint(work, name)), "--work", str(work)], src)
        rows.append({"section": "rec-eval", "name": label, "peer": res["peer"], "model": name, "dataset": "gowalla",
                     "evaluator": f"recsparse @{baseline_rev}" if src != ROOT else
                     ("recsparse (this commit)" if side == "ours" else "RecBole Trainer.evaluate"),
                     "eval_users": 29858, "eval_s": res["eval_s"], "eval_cpu_s": res["eval_cpu_s"],
                     "peak_rss_mb": res["peak_rss_mb"], "load_s": res["load_s"],
                     "users_per_batch": res["eval_users_per_batch"], "weights": res["weights"], "threads": threads,
                     "recall@20": res["recall@20"], "ndcg@20": res["ndcg@20"],
                     **({"package": res["package"]} if "package" in res else {}),
                     **provenance(time.perf_counter() - t0)})
    peer = next((r for r in rows if r["peer"] == "recbole"), None)
    for r in rows:  # RecBole's seconds / ours, RSS ours / RecBole
        if peer is not None and r is not peer:
            r["cpu_speedup_vs_recbole"] = round(peer["eval_cpu_s"] / r["eval_cpu_s"], 2)
            r["wall_speedup_vs_recbole"] = round(peer["eval_s"] / r["eval_s"], 2)
            r["rss_vs_recbole"] = round(r["peak_rss_mb"] / peer["peak_rss_mb"], 2)
    return rows


def rec_check(models: list[str], work: Path, py: Path) -> list[dict[str, Any]]:
    """Each model's final vectors scored by BOTH evaluators (same vectors, same train mask, same test sets)."""
    import numpy as np
    import torch

    from recsparse.pipelines.data import RecSplit
    from recsparse.pipelines.evaluation import Interactions, full_ranking_metrics
    from recsparse.data import load
    from recsparse.results import provenance

    data_dir, counts = convert_gowalla(work / "data")
    ds = load("gowalla")
    split = RecSplit("gowalla", ds.num_users, ds.num_items, ds.train, None,
                     Interactions.from_pairs(ds.test["user_id"].to_numpy(), ds.test["item_id"].to_numpy(),
                                             ds.num_users, ds.num_items))
    train = split.train_interactions()
    rows = []
    for m in models:
        side, name = m.split(":", 1)
        t0 = time.perf_counter()
        vec = ours_vectors(name, work) if side == "ours" else work / f"{side}_{name}_vectors.npz"
        v = np.load(vec)
        U, I = torch.from_numpy(v["user"]), torch.from_numpy(v["item"])
        ours = full_ranking_metrics(lambda ids: U[ids], I, split.test, train, (20,))
        out = work / f"check_{side}_{name}.json"
        theirs = run_json([str(py), str(PEERS_DIR / "recbole_driver.py"), "score", "--data-dir", str(data_dir),
                           "--num-items", str(counts["items"]), "--work", str(work / "recbole"), "--out", str(out),
                           "--vectors", str(vec)], out, child_env())
        rows.append({"section": "rec-check", "name": f"{m} vectors", "trained_by": side, "model": name,
                     "dataset": "gowalla",
                     "ours_recall@20": round(ours["recall@20"], 6), "recbole_recall@20": round(theirs["recall@20"], 6),
                     "ours_ndcg@20": round(ours["ndcg@20"], 6), "recbole_ndcg@20": round(theirs["ndcg@20"], 6),
                     "abs_diff_recall": abs(ours["recall@20"] - theirs["recall@20"]),
                     "abs_diff_ndcg": abs(ours["ndcg@20"] - theirs["ndcg@20"]),
                     "ours_recall@20_capped": round(ours["recall_capped@20"], 6),
                     **provenance(time.perf_counter() - t0)})
    return rows


# ---------------------------------------------------------------------------------------------------------- beir
def load_beir_dataset(name: str) -> Any:
    """A registered BEIR collection, or its folder under the data root while it is not registered yet."""
    from recsparse.data import REGISTRY, data_root, load

    return load(name) if name in REGISTRY else load(str(Path(data_root()) / name))


def beir_rows(datasets: list[str], work: Path, py: Path, threads: int, retrievers: list[str]) -> list[dict[str, Any]]:
    """Per collection: (1) our ``retrievers``' runs (``bm25``: Lucene via Pyserini; ``dense``: MiniLM + FAISS Flat)
    scored by ours and by beir's ``EvaluateRetrieval``; with ``dense`` also (2) beir's exact dense search end to end
    vs our harness end to end, on the same cached MiniLM corpus vectors and the same threads (its run is scored by
    both evaluators too)."""
    import numpy as np
    import torch

    from recsparse.retrieval.cli import make_retriever
    from recsparse.retrieval.base import safe_name
    from recsparse.retrieval.dense import embed_corpus, model_path
    from recsparse.retrieval.evaluation import evaluate, read_trec_run
    from recsparse.retrieval.harness import evaluate_retrievers
    from recsparse.results import provenance

    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    for name in datasets:
        t0 = time.perf_counter()
        ds = load_beir_dataset(name)
        folder = Path(ds.folder)
        out_dir = work / "beir" / Path(name).name  # a folder given by path: its name (never inside the data)
        out_dir.mkdir(parents=True, exist_ok=True)
        # (1) our harness's runs, each scored by both evaluators
        ours_retrievers = {r: make_retriever(r) for r in retrievers}
        evaluate_retrievers(ds, ours_retrievers, k=100, out_dir=out_dir / "runs_ours", threads=threads)
        qrels = ds.qrels_dict("test")
        run_files = {r: out_dir / "runs_ours" / "runs" / f"{safe_name(r)}.trec" for r in retrievers}
        dres = None
        if "dense" in retrievers:
            # (2) beir's DRES on the harness's cached corpus vectors (filled by the dense run above)
            dense = ours_retrievers["dense"]  # its corpus vectors were cached by the run above: no second encoding
            np.save(out_dir / "corpus.npy", embed_corpus(dense.encoder, ds.corpus, dense.cache_dir))
            (out_dir / "corpus_ids.json").write_text(json.dumps(ds.corpus["_id"].to_list()))
            beir_out = out_dir / "beir_dense.json"
            run_files["beir_dres"] = out_dir / "beir_dres.trec"
            dres = run_json([str(py), str(PEERS_DIR / "beir_driver.py"), "dense", "--folder", str(folder),
                             "--model", str(model_path("all-MiniLM-L6-v2")), "--corpus-emb", str(out_dir / "corpus.npy"),
                             "--corpus-ids", str(out_dir / "corpus_ids.json"), "--run-out", str(run_files["beir_dres"]),
                             "--threads", str(threads), "--out", str(beir_out)], beir_out, child_env())
        score_out = out_dir / "beir_score.json"
        theirs = run_json([str(py), str(PEERS_DIR / "beir_driver.py"), "score", "--folder", str(folder),
                           "--runs", *[f"{k}={v}" for k, v in run_files.items()], "--out", str(score_out)],
                          score_out, child_env())
        for run_name, path in run_files.items():
            run = read_trec_run(path)
            ours, per_query = evaluate(run, qrels, ("ndcg@10", "recall@100"), per_query=True)
            # beir (pytrec_eval's output) averages over the judged queries that retrieved something; we average over
            # every judged query (a query with no hit scores 0, as trec_eval -c): the same mean on beir's denominator
            in_run = [q for q in per_query if run.get(q)]
            ours_rq = {m: sum(per_query[q][m] for q in in_run) / max(1, len(in_run)) for m in ("ndcg@10", "recall@100")}
            b, keep = theirs[run_name]["beir_default"], theirs[run_name]["keep_identical_ids"]
            rows.append({"section": "beir-metrics", "name": f"{name}:{run_name}", "dataset": name,
                         "run": "beir DenseRetrievalExactSearch" if run_name == "beir_dres"
                         else f"recsparse harness {run_name}",
                         "ours_ndcg@10": round(ours["ndcg@10"], 6), "beir_ndcg@10": b["ndcg@10"],
                         "ours_recall@100": round(ours["recall@100"], 6), "beir_recall@100": b["recall@100"],
                         "max_abs_diff": round(max(abs(ours["ndcg@10"] - b["ndcg@10"]),
                                                   abs(ours["recall@100"] - b["recall@100"])), 6),
                         "ours_ndcg@10_on_queries_with_hits": round(ours_rq["ndcg@10"], 6),
                         "ours_recall@100_on_queries_with_hits": round(ours_rq["recall@100"], 6),
                         "max_abs_diff_same_queries": round(max(abs(ours_rq["ndcg@10"] - b["ndcg@10"]),
                                                                abs(ours_rq["recall@100"] - b["recall@100"])), 6),
                         "beir_keep_ids_ndcg@10": keep["ndcg@10"], "beir_keep_ids_recall@100": keep["recall@100"],
                         "queries_in_run": theirs[run_name]["queries_in_run"],
                         "queries_judged": theirs[run_name]["queries_in_qrels"],
                         **provenance(time.perf_counter() - t0)})
        if dres is None:
            continue
        # ... vs our harness end to end: load the collection, build FAISS Flat from the cached vectors, encode the
        # queries, search top 100, evaluate, write run/metrics/report (the model loads before the clock, as for beir)
        dense = make_retriever("dense")
        dense.prepare()
        t1, c1 = time.perf_counter(), time.process_time()
        ds2 = load_beir_dataset(name)
        t2 = time.perf_counter()
        rec = evaluate_retrievers(ds2, {"dense": dense}, k=100, out_dir=out_dir / "timed_ours", threads=threads)[0]
        t3, c3 = time.perf_counter(), time.process_time()
        rows.append({"section": "beir-dense-time", "name": f"{name}:beir DRES", "dataset": name,
                     "side": "beir 2.2.0 DenseRetrievalExactSearch + EvaluateRetrieval",
                     "end_to_end_s": dres["end_to_end_s"], "end_to_end_cpu_s": dres["end_to_end_cpu_s"],
                     "load_s": dres["load_s"], "search_s": dres["search_s"], "evaluate_s": dres["evaluate_s"],
                     "ndcg@10": dres["ndcg@10"], "recall@100": dres["recall@100"], "queries": dres["num_queries"],
                     "threads": threads, **provenance(None)})
        rows.append({"section": "beir-dense-time", "name": f"{name}:recsparse harness", "dataset": name,
                     "side": "recsparse evaluate_retrievers (FAISS Flat + ir_measures)",
                     "end_to_end_s": round(t3 - t1, 3), "end_to_end_cpu_s": round(c3 - c1, 3),
                     "load_s": round(t2 - t1, 3), "search_s": rec["search_s"], "index_s": rec["index_s"],
                     "evaluate_s": round(t3 - t2 - rec["search_s"] - rec["index_s"], 3),
                     "ndcg@10": rec["ndcg@10"], "recall@100": rec["recall@100"], "queries": rec["num_queries"],
                     "threads": threads, **provenance(None)})
    return rows


# ---------------------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="setup")
    p.add_argument("--venv", default=DEFAULT_VENV, help="the peers' virtual environment (created if missing)")
    p.add_argument("--work", default="/tmp/recsparse-peers", help="scratch: atomic files, runs, vectors")
    p.add_argument("--rec-models", nargs="+",
                   default=["recbole:LightGCN", "ours:lightgcn_softmax", "ours:lightgcn_bpr"])
    p.add_argument("--budget-s", type=float, default=1200.0, help="training seconds per model (evaluation excluded)")
    p.add_argument("--budgets", nargs="*", default=[], help="NAME=S: a model's own budget (default --budget-s)")
    p.add_argument("--budget-clock", choices=["cpu", "wall"], default="cpu",
                   help="budget and time-to-threshold in process CPU seconds (default: robust to a shared machine, "
                        "= wall seconds of a quiet one at --threads 1) or wall seconds")
    p.add_argument("--eval-every", nargs="*", default=["BPR=5", "mf_bpr=5"],
                   help="NAME=N: evaluate every N epochs (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on every side")
    p.add_argument("--beir-datasets", nargs="+", default=["scifact", "nfcorpus"])
    p.add_argument("--beir-retrievers", nargs="+", default=["bm25", "dense"], choices=["bm25", "dense"])
    p.add_argument("--note", default="", help="rec-train: a note kept in the manifest and every row (e.g. what "
                   "else ran on the machine at the same time)")
    p.add_argument("--baseline-rev", default=None,
                   help="rec-eval: also evaluate our models with the recsparse package of this git revision")
    p.add_argument("--within-s", type=float, default=None,
                   help="rec-collect: also the best Recall@20/NDCG@20 within this many training seconds (the "
                        "manifest's clock), e.g. the other side's whole run")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--ours-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ours-eval-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ours-throughput-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batches", type=int, default=40, help="training steps timed by rec-throughput")
    p.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-every", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--limit-batches", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.ours_child:
        torch_threads(a.threads)
        ours_child(a.ours_child, work, a.budget_s, a.child_every, a.threads, a.budget_clock, a.limit_batches)
        return
    if a.ours_throughput_child:
        ours_throughput_child(a.ours_throughput_child, a.batches, a.threads)
        return
    if a.ours_eval_child:
        ours_eval_child(a.ours_eval_child, a.checkpoint, a.threads, work)
        return
    from recsparse.results import print_table, save_results

    py = ensure_venv(a.venv)
    every = {k: int(v) for k, v in (x.split("=", 1) for x in a.eval_every)}
    for section in a.sections.split(","):
        if section == "setup":
            print(json.dumps({"venv": a.venv, **peer_versions(py)}))
            continue
        if section == "rec-train":
            budgets = {k: float(v) for k, v in (x.split("=", 1) for x in a.budgets)}
            rows = rec_train(a.rec_models, work, a.budget_s, budgets, a.budget_clock, every, a.threads, py, a.note)
            versions = peer_versions(py)
            for r in rows:
                if r["peer"] == "recbole":
                    r["peer_version"] = f"recbole {versions['recbole']}"
        elif section == "rec-collect":
            rows = rec_collect(a.rec_models, work, within_s=a.within_s)
        elif section == "rec-throughput":  # saved model by model: each row stands alone
            for m in a.rec_models:
                rows = rec_throughput([m], work, a.batches, a.threads, py)
                print_table(rows, [c for c in rows[0] if c not in ("command", "machine")])
                if not a.no_save:
                    save_results(AREA, rows, KEY)
            continue
        elif section == "rec-eval":
            rows = rec_eval(a.rec_models, work, a.threads, py, a.baseline_rev)
        elif section == "rec-check":
            rows = rec_check(a.rec_models, work, py)
        elif section == "beir":
            rows = beir_rows(a.beir_datasets, work, py, a.threads, a.beir_retrievers)
        else:
            raise SystemExit(f"unknown section {section!r} (setup, rec-train, rec-collect, rec-throughput, rec-eval, rec-check, beir)")
        print_table(rows, [c for c in rows[0] if c not in ("curve", "command", "machine")] if rows else None)
        if not a.no_save:
            save_results(AREA, rows, KEY)


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


if __name__ == "__main__":
    main()
