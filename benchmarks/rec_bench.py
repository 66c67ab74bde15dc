"""Recommender benchmarks -> ``benchmarks/results/rec.json`` (+ ``.md``).

Sections (``--sections``, comma-separated):

* ``train`` — fit + test each ``--configs`` YAML (with ``--set`` overrides for all of them) via
  :func:`recsparse.pipelines.train.run`; one record per config: ``recall20`` (the LightGCN paper's protocol,
  hits / |test items|), ``recall20_capped`` (hits / min(20, |test items|)), ``ndcg20``, rows, bytes, epochs, wall
  time, training examples/s, config file and overrides.
* ``throughput`` — training examples/s over ``--batches`` steps (no evaluation), under the timing lock.
* ``loss`` — one forward + backward of the shared-negative sampled softmax on a real Gowalla LightGCN batch
  (``--configs`` gives the model; ``--negatives`` the sizes): the chunked kernel against the materialised-logits
  graph, median of ``--batches`` repeats, under the timing lock; also checks that both give the same loss.
* ``eval`` — full-ranking evaluation wall time and peak RSS of a trained Gowalla checkpoint in a FRESH process
  (so RSS is the evaluation's own: data + model + score blocks); run it under ``flock /tmp/recsparse-timing.lock``.
* ``audit`` — no measurement: marks rows ``superseded`` whose command no longer runs the configuration they
  measured (their config file, parsed, differs at HEAD from at their ``git_commit``, overrides applied to both).

Rows are recorded only from a clean tree (``--allow-dirty`` for scratch runs, whose rows say ``-dirty``).

Examples::

    python benchmarks/rec_bench.py --sections train --configs configs/gowalla_mf.yaml
    python benchmarks/rec_bench.py --sections eval --checkpoint runs/gowalla_mf/checkpoints/last.ckpt \
        --configs configs/gowalla_mf.yaml
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
sys.path.insert(0, str(ROOT))

KEY = ["section", "name"]


def train_record(config: str, overrides: list[str], tag: str | None) -> dict[str, Any]:
    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.train import run
    from recsparse.results import provenance

    cfg = load_config(config, overrides)
    t0 = time.perf_counter()
    rec = run(cfg)
    wall = time.perf_counter() - t0
    t = rec["test"]
    out = {"section": "train", "name": tag or cfg.name, "dataset": rec["dataset"], "model": rec["model"],
           "mapper": rec["mapper"], "loss": rec["loss"]}
    for k in cfg.eval.ks:
        out[f"recall{k}"] = round(t[f"recall@{k}"], 4)  # hits / |test items| (LightGCN paper)
        out[f"recall{k}_capped"] = round(t[f"recall_capped@{k}"], 4)
        out[f"ndcg{k}"] = round(t[f"ndcg@{k}"], 4)
    out.update({"rows": rec["rows"], "bytes": rec["bytes"], "epochs": rec["epochs"],
                "train_examples_per_s": rec.get("train_examples_per_s"), "eval_s": rec.get("eval_s"),
                "eval_users": t["num_users"], "config": config, "overrides": " ".join(overrides)})
    if rec.get("resumed_from"):
        out["resumed_from"] = rec["resumed_from"]  # wall_s / throughput cover the continuation only
    if "best_val" in rec:
        out["best_val"] = round(rec["best_val"]["value"], 4)
    out.update(provenance(wall))
    return out


def throughput_record(config: str, overrides: list[str], batches: int) -> dict[str, Any]:
    """Training examples/s over ``batches`` steps of one epoch (no evaluation); run under the timing lock."""
    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.train import run
    from recsparse.results import provenance

    cfg = load_config(config, [*overrides, "trainer.max_epochs=1", f"trainer.limit_train_batches={batches}",
                               "trainer.progress_bar=false", f"name={Path(config).stem}_throughput",
                               "trainer.output_dir=/tmp/recsparse-rec-throughput/{name}"])
    t0 = time.perf_counter()
    rec = run(cfg, test=False)
    return {"section": "throughput", "name": f"{cfg.name}", "dataset": rec["dataset"], "model": rec["model"],
            "loss": rec["loss"], "batch_size": cfg.trainer.batch_size, "batches": batches,
            "train_examples_per_s": rec["train_examples_per_s"], "threads": cfg.trainer.num_threads,
            "config": config, **provenance(time.perf_counter() - t0)}


def loss_records(config: str, overrides: list[str], negatives: list[int], repeats: int) -> list[dict[str, Any]]:
    """Time the chunked vs materialised shared-negative softmax (fwd + bwd) on the config's model at init, one real
    training batch (``trainer.batch_size`` pairs from the head of the training stream) and ``M`` uniform negatives."""
    import statistics

    import torch

    from recsparse.kernels.softmax import materialized_shared_negative_softmax_loss, shared_negative_softmax_loss
    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.modules import build_module
    from recsparse.results import provenance

    cfg = load_config(config, overrides)
    torch.set_num_threads(cfg.trainer.num_threads)
    torch.manual_seed(cfg.trainer.seed)
    split = build_split(cfg)
    module = build_module(cfg, split)
    B = cfg.trainer.batch_size
    users = torch.from_numpy(split.train["user_id"].to_numpy()[:B].copy())
    items = torch.from_numpy(split.train["item_id"].to_numpy()[:B].copy())
    out = []
    for M in negatives:
        t0 = time.perf_counter()
        neg_ids = torch.randint(0, split.num_items, (M,))
        v = module.batch_vectors({"user": users, "item": items, "uniform": neg_ids})
        u, p, n = (x.detach() for x in (v["user"], v["item"], v["uniform"]))
        rec: dict[str, Any] = {"section": "loss", "name": f"{Path(config).stem}_softmax_B{B}_M{M}",
                               "batch_size": B, "negatives": M, "dim": u.shape[1], "repeats": repeats}
        for label, fn in (("chunked", shared_negative_softmax_loss),
                          ("materialized", materialized_shared_negative_softmax_loss)):
            times = []
            for _ in range(repeats + 1):  # +1: the first call warms the allocator
                xs = [x.clone().requires_grad_() for x in (u, p, n)]
                s = time.perf_counter()
                loss = fn(*xs, cfg.loss.temperature, None, items, neg_ids)
                loss.backward()
                times.append(time.perf_counter() - s)
            rec[f"{label}_ms"] = round(1000 * statistics.median(times[1:]), 1)
            rec[f"{label}_loss"] = round(loss.item(), 6)
        rec["speedup"] = round(rec["materialized_ms"] / rec["chunked_ms"], 2)
        rec.update(provenance(time.perf_counter() - t0))
        out.append(rec)
    return out


def eval_child(config: str, checkpoint: str, overrides: list[str], backend: str) -> None:
    """Runs in a fresh process: load data + checkpoint, time one full-ranking test evaluation, print JSON."""
    import torch

    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.modules import build_module

    cfg = load_config(config, [*overrides, f"eval.backend={backend}"])
    torch.set_num_threads(cfg.trainer.num_threads)
    split = build_split(cfg)
    module = build_module(cfg, split)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.train_interactions()  # CSR of training items (masking) built outside the timed region
    t0 = time.perf_counter()
    m = module.evaluate("test")
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"eval_s": dt, "peak_rss_mb": rss, "recall20": m["recall@20"], "users": m["num_users"]}))


def eval_record(config: str, checkpoint: str, overrides: list[str], backend: str) -> dict[str, Any]:
    from recsparse.results import provenance

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--eval-child", "--configs", config, "--checkpoint", checkpoint,
                        "--eval-backend", backend, *sum((["--set", o] for o in overrides), [])],
                       capture_output=True, text=True, env=os.environ.copy())
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return {"section": "eval", "name": f"full_ranking_{backend}", "dataset": "gowalla",
            "eval_users": res["users"], "eval_s": round(res["eval_s"], 2), "peak_rss_mb": round(res["peak_rss_mb"], 1),
            "recall20": round(res["recall20"], 4), "config": config, "checkpoint": checkpoint,
            **provenance(time.perf_counter() - t0)}


# trainer fields that say where a run went or how it was shown, not what it measured (``name`` is dropped too)
_NOT_THE_EXPERIMENT = ("output_dir", "progress_bar", "resume", "overwrite", "num_threads")


def _effective(config_text: str, overrides: list[str]) -> dict[str, Any] | None:
    """The validated config a row's command runs, minus output/display fields; None if it no longer loads."""
    import tempfile

    from recsparse.errors import UserError
    from recsparse.pipelines.config import load_config

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(config_text)
        f.flush()
        try:
            d = load_config(f.name, overrides).to_dict()
        except UserError:
            return None
    d.pop("name")
    for k in _NOT_THE_EXPERIMENT:
        d["trainer"].pop(k)
    return d


def audit(path: Path) -> int:
    """Mark rows superseded whose command now runs a different configuration; returns how many were marked."""
    import shlex

    from recsparse.results import write_results

    rows = json.loads(path.read_text())
    marked = 0
    for r in rows:
        if r.get("superseded") or not r.get("config") or not r.get("git_commit"):
            continue
        commit = r["git_commit"].removesuffix("-dirty")
        old = subprocess.run(["git", "show", f"{commit}:{r['config']}"], capture_output=True, text=True, cwd=ROOT)
        cur = ROOT / r["config"]
        overrides = shlex.split(r.get("overrides") or "")
        then = _effective(old.stdout, overrides) if old.returncode == 0 else None
        now = _effective(cur.read_text(), overrides) if cur.is_file() else None
        if now is None:
            r["superseded"] = f"{r['config']} no longer exists or no longer loads with these overrides"
        elif then != now:
            diff = sorted(f"{s}.{k}" for s in now if isinstance(now[s], dict)
                          for k in now[s] if (then or {}).get(s, {}).get(k) != now[s][k])
            r["superseded"] = (f"{r['config']} changed since {commit} ({', '.join(diff) or 'unreadable then'}): "
                               "its command now runs another configuration")
        else:
            continue
        marked += 1
    write_results(path.stem, rows, path.parent)
    return marked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="train")
    p.add_argument("--configs", nargs="+", default=["configs/gowalla_mf.yaml"])
    p.add_argument("--set", action="append", default=[], help="override KEY=VALUE for every config")
    p.add_argument("--tag", default=None, help="record name (one config only)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--eval-backend", default="torch")
    p.add_argument("--eval-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batches", type=int, default=30, help="steps timed by --sections throughput (loss: repeats)")
    p.add_argument("--negatives", type=int, nargs="+", default=[4096, 16384, 40981], help="sizes for --sections loss")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--allow-dirty", action="store_true", help="record rows from a tree with uncommitted changes")
    a = p.parse_args()
    if a.eval_child:
        eval_child(a.configs[0], a.checkpoint, a.set, a.eval_backend)
        return
    from recsparse.results import default_results_dir, print_table, require_clean_tree, save_results

    if a.sections == "audit":
        print(f"marked {audit(default_results_dir() / 'rec.json')} row(s) superseded")
        return
    if not a.no_save:
        require_clean_tree(a.allow_dirty)  # before a long run, not after it

    for section in a.sections.split(","):
        for config in a.configs:
            if section == "train":
                recs = [train_record(config, a.set, a.tag)]
            elif section == "throughput":
                recs = [throughput_record(config, a.set, a.batches)]
            elif section == "loss":
                recs = loss_records(config, a.set, a.negatives, a.batches)
            elif section == "eval":
                if not a.checkpoint:
                    raise SystemExit("--sections eval needs --checkpoint")
                recs = [eval_record(config, a.checkpoint, a.set, a.eval_backend)]
            else:
                raise SystemExit(f"unknown section {section!r} (train, throughput, loss, eval)")
            print_table(recs)
            if not a.no_save:
                save_results("rec", recs, KEY)


if __name__ == "__main__":
    from recsparse.errors import reported_in_one_line

    with reported_in_one_line("rec_bench"):  # a bad config, override or existing run folder, as the CLI reports it
        main()
