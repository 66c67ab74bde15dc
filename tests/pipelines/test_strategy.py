"""TorchRecStrategy on 2 CPU processes (gloo, launched by torchrun) against the 1-process pipeline on a real Gowalla
slice: the same per-step losses and test metrics, the plan printed with per-rank bytes, a sharded checkpoint that
loads into a 1-process model with the same metrics; helpers and clear errors in-process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsparse.errors import ConfigError
from recsparse.pipelines.config import TrainConfig
from recsparse.pipelines.strategy import TorchRecStrategy, check_devices, local_batch

WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mf(folder, out, **trainer) -> dict:
    return {"name": "d", "data": {"dataset": str(folder)},
            "model": {"family": "mf", "dim": 16, "backend": "torchrec", "init_std": 0.1},
            "loss": {"name": "bpr"},
            "trainer": {"max_epochs": 2, "batch_size": 256, "lr": 0.1, "optimizer": "adagrad", "output_dir": str(out),
                        "progress_bar": False, "limit_train_batches": 3, **trainer},
            "eval": {"ks": [20]}}


def launch(cfg: dict, plan: str, tmp: Path, nproc: int = 2, timeout: float = 600, env: dict | None = None,
           ok: bool = True) -> dict | int:
    """Run dist_worker.py under torchrun (``plan='none'``: one plain process) and return rank 0's record (``ok``) or
    the job's exit code (``ok=False``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg_path, out = tmp / f"{plan}.json", tmp / f"{plan}-out.json"
    cfg_path.write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]), **(env or {}))
    if plan == "none":
        cmd = [sys.executable, str(WORKER), str(cfg_path), plan, str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={_free_port()}", str(WORKER), str(cfg_path), plan, str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if not ok:
        return p.returncode
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return json.loads(out.read_text())


def test_two_processes_row_wise_equal_one_process_and_checkpoint_loads_into_one(gowalla_small, tmp_path):
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.modules import build_module
    from recsparse.pipelines.strategy import load_sharded_checkpoint

    one = launch(_mf(gowalla_small, tmp_path / "one"), "none", tmp_path)
    two = launch(_mf(gowalla_small, tmp_path / "two"), "row_wise", tmp_path)
    # 2 x 128 examples per step == 1 x 256: the losses of the first steps and the test metrics agree
    assert len(two["step_losses"]) == len(one["step_losses"]) == 6
    assert two["step_losses"] == pytest.approx(one["step_losses"], abs=1e-5)
    assert two["test"] == pytest.approx(one["test"], abs=1e-6)
    # the plan is printed: every table split by rows, each rank holding about half of the table bytes
    assert "t_user: row_wise" in two["plan"] and "t_item: row_wise" in two["plan"]
    b0, b1 = two["table_bytes_per_rank"]
    assert b0 + b1 == 4 * 16 * one["rows"] and abs(b0 - b1) <= 2 * 4 * 16
    assert (two["rows"], two["bytes"]) == (one["rows"], one["bytes"])  # metrics.json counts whole tables
    # the sharded checkpoint (folder) loads into a 1-process model that evaluates to the same metrics
    ck = tmp_path / "two" / "checkpoints" / "last.ckpt"
    assert ck.is_dir() and (ck / "meta.pt").is_file()
    cfg = TrainConfig.from_dict(_mf(gowalla_small, tmp_path / "eval"))
    module = build_module(cfg, build_split(cfg))
    meta = load_sharded_checkpoint(module, ck)
    assert meta["epoch"] == 1
    assert module.evaluate("test") == pytest.approx(two["test"], abs=1e-6)


def _dcn_adult(out, **trainer) -> dict:
    return {"name": "dcn", "task": "ctr", "data": {"dataset": "adult"},
            "model": {"name": "dcn_v2", "dim": 8, "backend": "torchrec", "kwargs": {"hidden": [32], "cross_layers": 2}},
            "trainer": {"max_epochs": 2, "batch_size": 512, "lr": 0.05, "optimizer": "adagrad", "output_dir": str(out),
                        "limit_train_batches": 4, **trainer}}


def test_ctr_dcn_v2_adult_two_processes_equal_one_and_checkpoint_loads_into_one(tmp_path):
    """The CTR task through the same pipeline and strategy: 2 processes x 256 == 1 x 512 on real adult."""
    from recsparse.pipelines.config import CTRConfig
    from recsparse.pipelines.strategy import load_sharded_checkpoint
    from recsparse.pipelines.train import build_task
    from tests.conftest import dataset_path

    dataset_path("adult")
    one = launch(_dcn_adult(tmp_path / "one"), "none", tmp_path)
    two = launch(_dcn_adult(tmp_path / "two"), "row_wise", tmp_path)
    assert len(two["step_losses"]) == len(one["step_losses"]) == 8
    assert two["step_losses"] == pytest.approx(one["step_losses"], abs=1e-5)
    assert two["test"] == pytest.approx(one["test"], abs=1e-5) and two["test"]["auc"] > 0.8
    assert two["best_val"]["value"] == pytest.approx(one["best_val"]["value"], abs=1e-5)
    assert "t_education: row_wise" in two["plan"] and (two["rows"], two["bytes"]) == (one["rows"], one["bytes"])
    # the best sharded checkpoint (folder) loads into a 1-process model with the same test metrics
    ck = Path(two["best_val"]["checkpoint"])
    assert ck.is_dir() and (ck / "meta.pt").is_file() and (tmp_path / "two" / "feature_spec").is_dir()
    dm, module = build_task(CTRConfig.from_dict(_dcn_adult(tmp_path / "eval")))
    load_sharded_checkpoint(module, ck)
    module.eval()
    with torch.no_grad():
        for b in dm.test_dataloader():
            module._eval("test", b)
    module.log = lambda *a, **k: None  # outside a Trainer
    module._eval_end("test")
    assert module.last_metrics["test"] == pytest.approx(two["test"], abs=1e-5)


def _fit_once_rank(rank: int, world: int, init_file: str, folder: str, out: str) -> None:
    """One rank of the GraphHash fit-once test: ranks other than 0 cannot fit (build_cf_mappers raises there)."""
    import torch.distributed as dist

    from recsparse.pipelines import modules
    from recsparse.pipelines.data import build_split

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if rank != 0:
            def no_fit(*a, **k):
                raise AssertionError(f"rank {rank} fitted the id-mappers")
            modules.build_cf_mappers = no_fit
        cfg = TrainConfig.from_dict({**_mf(folder, out), "model": {"family": "mf", "dim": 8, "backend": "torchrec",
                                                                   "mapper": "graphhash"}})
        split = build_split(cfg)
        module = modules.build_module(cfg, split, defer=True)
        assert module.model is None  # nothing fitted before the process group exists
        module.configure_model()
        t = module.model.tables
        torch.save({"rows": t.num_rows(), "user": t.mapper("user")(torch.arange(split.num_users)),
                    "item": t.mapper("item")(torch.arange(split.num_items))}, f"{out}/rank{rank}.pt")
        dist.barrier()  # no rank tears the group down while another is still in a collective
    finally:
        dist.destroy_process_group()


def test_graphhash_is_fitted_on_rank_zero_only_and_broadcast(gowalla_small, tmp_path):
    """Deferred build (trainer.strategy=torchrec): GraphHash clusters the graph on rank 0 only; every rank ends
    with rank 0's mapping (a rank that tried to fit would raise)."""
    import torch.multiprocessing as mp

    mp.spawn(_fit_once_rank, args=(2, str(tmp_path / "init"), str(gowalla_small), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["rows"] == r1["rows"] and r0["rows"]["user"] < 150  # clusters: fewer rows than users
    assert torch.equal(r0["user"], r1["user"]) and torch.equal(r0["item"], r1["item"])


def test_local_batch_slices_examples_and_keeps_shared_negatives():
    b = {"user": torch.arange(8), "item": torch.arange(8) + 100, "uniform": torch.arange(5)}
    parts = [local_batch(b, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p["user"] for p in parts]), b["user"])
    assert all(torch.equal(p["uniform"], b["uniform"]) for p in parts)
    assert local_batch(b, 0, 1)["user"] is b["user"]
    with pytest.raises(ConfigError, match="trainer.batch_size a multiple of trainer.devices"):
        local_batch(b, 0, 3)


def test_strategy_rejects_bad_plan_and_too_many_devices():
    with pytest.raises(ConfigError, match="plan='diagonal'"):
        TorchRecStrategy(plan="diagonal")
    with pytest.raises(ConfigError, match="trainer.devices=64"):
        check_devices(64, "cpu", cores=2)
    with pytest.raises(ConfigError, match="CUDA"):
        check_devices(2, "cuda", cores=2)
    check_devices(2, "cpu", cores=2)


@pytest.mark.slow
def test_killed_rank_fails_the_job_and_resume_matches_the_uninterrupted_run(gowalla_small, tmp_path):
    import time

    full = launch(_mf(gowalla_small, tmp_path / "full", max_epochs=3), "row_wise", tmp_path / "a")
    t0 = time.perf_counter()
    rc = launch(_mf(gowalla_small, tmp_path / "run", max_epochs=3), "row_wise", tmp_path / "b", ok=False,
                env={"DIST_KILL": "1,1,1", "DIST_TIMEOUT": "60"})
    assert rc != 0 and time.perf_counter() - t0 < 300  # fails, does not hang
    res = launch(_mf(gowalla_small, tmp_path / "run", max_epochs=3, resume="last"), "row_wise", tmp_path / "c")
    assert Path(res["resumed_from"]).name == "last.ckpt" and len(res["step_losses"]) == 6  # epochs 1 and 2 again
    assert res["step_losses"] == pytest.approx(full["step_losses"][3:], abs=1e-6)
    assert res["test"] == pytest.approx(full["test"], abs=1e-6)


@pytest.mark.slow
def test_graphhash_mf_two_processes_equal_one(gowalla_small, tmp_path):
    """GraphHash end to end under the strategy: the module is built in configure_model, rank 0 clusters, the
    others receive its mappers; the run equals one process."""
    def cfg(out):
        c = _mf(gowalla_small, out)
        c["model"]["mapper"] = "graphhash"
        return c

    one = launch(cfg(tmp_path / "one"), "none", tmp_path)
    two = launch(cfg(tmp_path / "two"), "row_wise", tmp_path)
    assert two["step_losses"] == pytest.approx(one["step_losses"], abs=1e-5)
    assert two["test"] == pytest.approx(one["test"], abs=1e-6)
    assert (two["rows"], two["bytes"]) == (one["rows"], one["bytes"]) and two["mapper"] == "graphhash"


@pytest.mark.slow
def test_two_tower_ml100k_two_processes_equal_one(ml100k_path, tmp_path):
    def cfg(out):
        return {"name": "tt", "data": {"dataset": "ml-100k", "split": "leave_last_out"},
                "model": {"family": "two_tower", "dim": 16, "hidden": [32], "out_dim": 16, "init_std": 0.1,
                          "backend": "torchrec"},
                "loss": {"name": "softmax", "temperature": 0.1, "logq": True, "num_uniform_negatives": 128},
                "trainer": {"max_epochs": 1, "batch_size": 1024, "lr": 0.05, "optimizer": "adagrad",
                            "output_dir": str(out), "progress_bar": False, "limit_train_batches": 6},
                "eval": {"ks": [20, 50], "monitor": "recall@50"}}

    one = launch(cfg(tmp_path / "one"), "none", tmp_path)
    two = launch(cfg(tmp_path / "two"), "auto", tmp_path)
    assert two["step_losses"] == pytest.approx(one["step_losses"], abs=1e-5)
    assert two["test"] == pytest.approx(one["test"], abs=1e-6)
    assert "t_user_id:" in two["plan"] and "table bytes per rank" in two["plan"]


def test_missing_backend_is_a_clear_error(monkeypatch):
    from recsparse.embeddings import tables
    from recsparse.pipelines.strategy import check_backends

    check_backends("torchrec", "cpu")
    with pytest.raises(ConfigError, match="set model.backend=torchrec"):
        check_backends("torch", "cpu")
    with pytest.raises(ConfigError, match="NCCL"):
        monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
        check_backends("torchrec", "cuda")
    monkeypatch.setattr(tables, "torchrec_available", lambda: False)
    with pytest.raises(ConfigError, match="needs torchrec and fbgemm-gpu"):
        check_backends("torchrec", "cpu")
