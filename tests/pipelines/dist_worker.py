"""One rank of a multi-process training run, for the 2-process tests: ``torchrun --nproc-per-node N
tests/pipelines/dist_worker.py CONFIG.json PLAN OUT.json`` trains ``CONFIG`` (a ``TrainConfig`` or, with
``task: ctr``, a ``CTRConfig`` dict) with
:class:`~recsparse.pipelines.strategy.TorchRecStrategy` and rank 0 writes the results record (with the per-step
training losses and the plan) to ``OUT.json``, every rank its peak RSS to ``OUT.json.rank<R>``;
``DIST_KILL=EPOCH,BATCH,RANK`` SIGKILLs that rank there, ``DIST_TIMEOUT`` (s) bounds every collective,
``DIST_NO_TEST=1`` skips the test evaluation (throughput runs). ``PLAN`` = ``none`` runs the single-process reference instead."""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

from lightning.pytorch.callbacks import Callback


class StepLosses(Callback):
    """The loss of every training step, and its wall time (from the previous step's end; the first from the
    epoch's start)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self._t = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        now = time.perf_counter()
        self.seconds.append(now - self._t)
        self._t = now


class KillRank(Callback):
    """``DIST_KILL=EPOCH,BATCH,RANK``: that rank SIGKILLs itself at that batch (a dead machine, mid-epoch)."""

    def __init__(self, spec: str) -> None:
        self.epoch, self.batch, self.rank = map(int, spec.split(","))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx, trainer.global_rank) == (self.epoch, self.batch, self.rank):
            with open(os.environ.get("DIST_KILL_STAMP", os.devnull), "w") as f:  # when it died (wall clock)
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)


def main(cfg_path: str, plan: str, out_path: str) -> None:
    from recsparse.pipelines.config import config_class
    from recsparse.pipelines.strategy import TorchRecStrategy
    from recsparse.pipelines.train import run

    raw = json.loads(open(cfg_path).read())
    cfg = config_class(raw.get("task")).from_dict(raw)
    strategy = None if plan == "none" else TorchRecStrategy(plan=plan, timeout_s=float(os.environ.get("DIST_TIMEOUT", 120)))
    steps = StepLosses()
    kill = [KillRank(os.environ["DIST_KILL"])] if os.environ.get("DIST_KILL") else []
    rec = run(cfg, extra_callbacks=[steps, *kill], strategy=strategy, test=not os.environ.get("DIST_NO_TEST"))
    rank = int(os.environ.get("RANK", "0"))
    with open(f"{out_path}.rank{rank}", "w") as f:  # peak resident memory of this rank's process
        json.dump({"rank": rank, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)
    if rank == 0:
        rec["step_losses"] = steps.losses
        rec["step_seconds"] = [round(x, 4) for x in steps.seconds]
        if strategy is not None:
            rec["plan"] = strategy.plan_text
            rec["table_bytes_per_rank"] = strategy.table_bytes_per_rank
        with open(out_path, "w") as f:
            json.dump(rec, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:4])
