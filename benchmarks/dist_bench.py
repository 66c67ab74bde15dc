"""Sharded training (TorchRecStrategy, gloo, 2 CPU processes) against one process, on real data.

Sections (rows in ``benchmarks/results/dist.json``):

* ``equality`` — per case (Gowalla MF full tables, Gowalla MF GraphHash, ML-100K two-tower, DCN-V2 on adult through
  the CTR task of the same pipeline): 1 process × batch B vs
  2 processes × B/2 (``torchrun``, same seed, same global batches): max |Δ loss| over the first steps, max |Δ| over
  the test metrics, examples/s of each, the plan, table bytes and peak RSS per rank (``table_bytes_1proc``: the
  tables plus the id-mappers' state, as ``metrics.json`` counts it; ``table_bytes_per_rank``: table shards only).
* ``plans`` — Gowalla MF full tables under table-wise / row-wise / column-wise: table bytes and peak RSS per rank.
* ``throughput`` — training examples/s of Gowalla MF on the plain 1-process path and with TorchRecStrategy on 1 and
  2 processes (``--timing`` records ``timing_clean``: run the whole script under ``/work/bin/heavy --timing``, which
  holds both compute slots, so nothing else heavy runs beside it).
* ``resume`` — 2 processes, one rank SIGKILLed mid-epoch: seconds until the job exits (non-zero) and then a resume
  from the last checkpoint against the uninterrupted run (loss of every step after the resume point, test metrics).

Runs are SHORT (fixed step budgets, stated per row: ``epochs``, ``steps_per_epoch``, ``batch_size``) — the point is
equality and memory, not quality; this box has 2 cores shared with other jobs, so examples/s are indicative only
(``timing_clean`` says whether the run held both slots). ``python benchmarks/dist_bench.py [--cases ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsparse.results import print_table, provenance, require_clean_tree, save_results  # noqa: E402

AREA = "dist"
KEY = ("section", "case", "plan")
WORKER = ROOT / "tests" / "pipelines" / "dist_worker.py"
STEPS_COMPARED = 20


def _gowalla_mf(mapper: str, out: str) -> dict[str, Any]:
    return {"name": f"gowalla-mf-{mapper}", "data": {"dataset": "gowalla"},
            "model": {"family": "mf", "dim": 64, "backend": "torchrec", "init_std": 0.1, "mapper": mapper,
                      **({"mapper_kwargs": {"resolution": 380}} if mapper == "graphhash" else {})},
            "loss": {"name": "bpr", "reg_weight": 1e-4},
            "trainer": {"max_epochs": 1, "batch_size": 4096, "lr": 0.05, "optimizer": "adagrad", "output_dir": out,
                        "progress_bar": False, "limit_train_batches": 40, "seed": 0},
            "eval": {"ks": [20]}}


def _ml100k_two_tower(out: str) -> dict[str, Any]:
    return {"name": "ml100k-two-tower", "data": {"dataset": "ml-100k", "split": "leave_last_out"},
            "model": {"family": "two_tower", "dim": 32, "hidden": [64], "out_dim": 32, "init_std": 0.1,
                      "backend": "torchrec"},
            "loss": {"name": "softmax", "temperature": 0.1, "logq": True, "num_uniform_negatives": 256},
            "trainer": {"max_epochs": 2, "batch_size": 1024, "lr": 0.05, "optimizer": "adagrad", "output_dir": out,
                        "progress_bar": False, "seed": 0},
            "eval": {"ks": [20, 50], "monitor": "recall@50"}}


def _adult_dcn_v2(out: str) -> dict[str, Any]:
    return {"name": "adult-dcn-v2", "task": "ctr", "data": {"dataset": "adult"},
            "model": {"name": "dcn_v2", "dim": 16, "backend": "torchrec"},
            "trainer": {"max_epochs": 2, "batch_size": 1024, "lr": 0.05, "optimizer": "adagrad", "output_dir": out,
                        "limit_train_batches": 10, "seed": 0}}


CASES = {"gowalla_mf_full": lambda out: _gowalla_mf("full", out),
         "gowalla_mf_graphhash": lambda out: _gowalla_mf("graphhash", out),
         "ml100k_two_tower": _ml100k_two_tower,
         "adult_dcn_v2": _adult_dcn_v2}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: dict[str, Any], plan: str, work: Path, tag: str, nproc: int = 2, env: dict[str, str] | None = None
           ) -> tuple[int, float, dict[str, Any] | None, list[dict[str, Any]]]:
    """Run one job (``plan='none'``: one plain process, else torchrun × nproc). -> (exit code, wall s, rank-0
    record or None, per-rank RSS records)."""
    work.mkdir(parents=True, exist_ok=True)
    cfg_path, out = work / f"{tag}.json", work / f"{tag}-out.json"
    cfg_path.write_text(json.dumps(cfg))
    for p in work.glob(f"{tag}-out.json*"):
        p.unlink()
    if cfg["trainer"].get("resume") is None:  # a fresh run: its folder must not exist (or it would be resumed)
        shutil.rmtree(cfg["trainer"]["output_dir"], ignore_errors=True)
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env or {}))
    base = [sys.executable, str(WORKER), str(cfg_path), plan, str(out)]
    cmd = base if plan == "none" else [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                                       f"--master-port={_port()}", *base[1:]]
    t0 = time.perf_counter()
    with open(work / f"{tag}.log", "w") as log:
        rc = subprocess.run(cmd, env=e, stdout=log, stderr=subprocess.STDOUT, timeout=3600).returncode
    wall = time.perf_counter() - t0
    rec = json.loads(out.read_text()) if out.exists() else None
    ranks = [json.loads(p.read_text()) for p in sorted(work.glob(f"{tag}-out.json.rank*"))]
    return rc, wall, rec, ranks


def _metric_gap(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) for k in a if k != "num_users")


def _loss_gap(a: list[float], b: list[float], n: int = STEPS_COMPARED) -> float:
    n = min(n, len(a), len(b))
    return max(abs(x - y) for x, y in zip(a[:n], b[:n]))


def _steps(cfg: dict[str, Any]) -> int | str:
    n = cfg["trainer"].get("limit_train_batches", 1.0)
    return "all" if n == 1.0 else n


def equality(case: str, work: Path, plan: str, timing: bool) -> dict[str, Any]:
    one_cfg, two_cfg = CASES[case](str(work / f"{case}-1")), CASES[case](str(work / f"{case}-2"))
    rc1, w1, one, r1 = launch(one_cfg, "none", work, f"{case}-1")
    rc2, w2, two, r2 = launch(two_cfg, plan, work, f"{case}-2")
    if rc1 or rc2 or one is None or two is None:
        raise RuntimeError(f"{case}: a run failed (exit {rc1}, {rc2}); see {work}/{case}-*.log")
    t = one_cfg["trainer"]
    metric = "auc" if one_cfg.get("task") == "ctr" else f"recall@{one_cfg['eval'].get('ks', [20])[0]}"
    return {"section": "equality", "case": case, "plan": plan, "dataset": one["dataset"], "model": one["model"],
            "mapper": one["mapper"], "batch_size": t["batch_size"], "epochs": t["max_epochs"],
            "steps_per_epoch": _steps(one_cfg), "optimizer": t["optimizer"],
            "loss_steps_compared": min(STEPS_COMPARED, len(one["step_losses"])),
            "max_abs_loss_diff": _loss_gap(one["step_losses"], two["step_losses"]),
            "max_abs_metric_diff": _metric_gap(one["test"], two["test"]),
            f"{metric}_1proc": one["test"][metric], f"{metric}_2proc": two["test"][metric],
            "examples_per_s_1proc": one.get("train_examples_per_s"),
            "examples_per_s_2proc": two.get("train_examples_per_s"),
            "table_bytes_1proc": one["bytes"], "table_bytes_per_rank": two["table_bytes_per_rank"],
            "max_rss_mb_1proc": round(r1[0]["max_rss_mb"], 1),
            "max_rss_mb_per_rank": [round(r["max_rss_mb"], 1) for r in r2],
            "plan_text": two["plan"].replace("\n", "; "), "timing_clean": timing, "wall_s_1proc": round(w1, 1),
            "wall_s_2proc": round(w2, 1)}


def plans(work: Path) -> list[dict[str, Any]]:
    rows = []
    for plan in ("table_wise", "row_wise", "column_wise"):
        cfg = _gowalla_mf("full", str(work / f"plan-{plan}"))
        cfg["trainer"]["limit_train_batches"] = 5
        rc, w, rec, ranks = launch(cfg, plan, work, f"plan-{plan}")
        if rc or rec is None:
            raise RuntimeError(f"plan {plan} failed (exit {rc}); see {work}/plan-{plan}.log")
        rows.append({"section": "plans", "case": "gowalla_mf_full", "plan": plan,
                     "table_bytes_total": sum(rec["table_bytes_per_rank"]),
                     "table_bytes_per_rank": rec["table_bytes_per_rank"],
                     "max_rss_mb_per_rank": [round(r["max_rss_mb"], 1) for r in ranks],
                     "plan_text": rec["plan"].replace("\n", "; "),
                     "steps": 5, "wall_s": round(w, 1)})
    return rows


def throughput(work: Path, case: str, plan: str, timing: bool, steps: int = 15) -> list[dict[str, Any]]:
    """Training examples/s of ``case`` (fixed step budget, no evaluation): the plain 1-process path (unsharded TorchRec
    tables: dense gradients + the trainer's torch optimizer over the whole tables), and TorchRecStrategy on 1 and on
    2 processes (fused sparse Adagrad in the TBE backward). Timed from each epoch's start to its last training batch
    (``Throughput``), rank 0's figure; every job's peak RSS per rank."""
    rows = []
    for tag, p, n in (("plain-1proc", "none", 1), ("torchrec-1proc", plan, 1), ("torchrec-2proc", plan, 2)):
        cfg = CASES[case](str(work / f"thr-{case}-{tag}"))
        cfg["trainer"].update(limit_train_batches=steps, max_epochs=1)
        rc, w, rec, ranks = launch(cfg, p, work, f"thr-{case}-{tag}", nproc=n, env={"DIST_NO_TEST": "1"})
        if rc or rec is None:
            raise RuntimeError(f"throughput {case} {tag} failed (exit {rc}); see {work}/thr-{case}-{tag}.log")
        rows.append({"section": "throughput", "case": f"{case}/{tag}", "plan": p if p != "none" else "-",
                     "processes": n, "batch_size": cfg["trainer"]["batch_size"], "steps": steps,
                     "train_examples_per_s": rec.get("train_examples_per_s"),
                     "step_seconds_first": rec["step_seconds"][0],
                     "step_seconds_median_rest": round(statistics.median(rec["step_seconds"][1:]), 4),
                     "table_bytes_per_rank": rec.get("table_bytes_per_rank", [rec["bytes"]]),
                     "max_rss_mb_per_rank": [round(r["max_rss_mb"], 1) for r in ranks],
                     "timing_clean": timing, "wall_s": round(w, 1)})
    return rows


def resume(work: Path, plan: str) -> dict[str, Any]:
    def cfg(out: str, resume: str | None = None) -> dict[str, Any]:
        c = _gowalla_mf("full", out)
        c["trainer"].update(max_epochs=2, limit_train_batches=12, resume=resume)
        return c

    rcf, _, full, _ = launch(cfg(str(work / "uninterrupted")), plan, work, "uninterrupted")
    killed_dir = str(work / "killed")
    stamp = work / "killed.stamp"
    stamp.unlink(missing_ok=True)
    rck, _, _, _ = launch(cfg(killed_dir), plan, work, "killed",
                          env={"DIST_KILL": "1,5,1", "DIST_TIMEOUT": "60", "DIST_KILL_STAMP": str(stamp)})
    exit_after_kill = time.time() - float(stamp.read_text())
    rcr, _, res, _ = launch(cfg(killed_dir, "last"), plan, work, "resumed")
    if rcf or rcr or full is None or res is None:
        raise RuntimeError(f"resume runs failed (exit {rcf}, {rcr}); see {work}/*.log")
    n_after = len(res["step_losses"])
    return {"section": "resume", "case": "gowalla_mf_full", "plan": plan, "epochs": 2, "steps_per_epoch": 12,
            "killed": "rank 1 SIGKILL at epoch 1, batch 5", "killed_exit_code": rck,
            "seconds_from_kill_to_job_exit": round(exit_after_kill, 1), "collective_timeout_s": 60,
            "resumed_from": Path(res["resumed_from"]).name if res["resumed_from"] else None,
            "steps_after_resume": n_after,
            "max_abs_loss_diff_after_resume": _loss_gap(full["step_losses"][-n_after:], res["step_losses"], n_after),
            "max_abs_metric_diff": _metric_gap(full["test"], res["test"]),
            "recall@20_uninterrupted": full["test"]["recall@20"], "recall@20_resumed": res["test"]["recall@20"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--sections", nargs="*", default=["equality", "plans", "resume", "throughput"],
                    choices=["equality", "plans", "resume", "throughput"])
    ap.add_argument("--throughput-cases", nargs="*", default=["gowalla_mf_full", "adult_dcn_v2"], choices=list(CASES))
    ap.add_argument("--steps", type=int, default=15, help="training steps of each throughput job")
    ap.add_argument("--plan", default="row_wise", help="plan of the equality and resume runs")
    ap.add_argument("--timing", action="store_true",
                    help="the script runs under /work/bin/heavy --timing (both slots held): rows say timing_clean")
    ap.add_argument("--work", default="/tmp/recsparse-dist-bench")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--allow-dirty", action="store_true", help="a scratch run from uncommitted code")
    a = ap.parse_args()
    work = Path(a.work)
    # the code that runs is the commit at the start: the rows this script saves dirty the tree (results file) but
    # not the code, so every row names that commit
    commit = require_clean_tree(a.allow_dirty)

    def save(rows: list[dict[str, Any]], t0: float) -> None:  # after every section: a later failure loses nothing
        prov = provenance(time.perf_counter() - t0) | {"git_commit": commit}
        for r in rows:
            r.update(prov)
        print_table([{k: v for k, v in r.items() if k not in ("plan_text", "command", "machine")} for r in rows],
                    title="dist")
        save_results(AREA, rows, KEY, a.results_dir)

    if "equality" in a.sections:
        for case in a.cases:
            t0 = time.perf_counter()
            save([equality(case, work, "auto" if case == "ml100k_two_tower" else a.plan, a.timing)], t0)
    if "plans" in a.sections:
        t0 = time.perf_counter()
        save(plans(work), t0)
    if "resume" in a.sections:
        t0 = time.perf_counter()
        save([resume(work, a.plan)], t0)
    if "throughput" in a.sections:
        t0 = time.perf_counter()
        for case in a.throughput_cases:
            save(throughput(work, case, a.plan, a.timing, a.steps), t0)
            t0 = time.perf_counter()


if __name__ == "__main__":
    main()
