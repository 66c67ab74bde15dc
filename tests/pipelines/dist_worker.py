"""One rank of a multi-process training run, for the 2-process tests: ``torchrun --nproc-per-node N
tests/pipelines/dist_worker.py CONFIG.json PLAN OUT.json`` trains ``CONFIG`` (a ``TrainConfig`` dict) with
:class:`~recsparse.pipelines.strategy.TorchRecStrategy` and rank 0 writes the results record (with the per-step
training losses and the plan) to ``OUT.json``. ``PLAN`` = ``none`` runs the single-process reference instead."""

from __future__ import annotations

import json
import os
import sys

from lightning.pytorch.callbacks import Callback


class StepLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def main(cfg_path: str, plan: str, out_path: str) -> None:
    from recsparse.pipelines.config import TrainConfig
    from recsparse.pipelines.strategy import TorchRecStrategy
    from recsparse.pipelines.train import run

    cfg = TrainConfig.from_dict(json.loads(open(cfg_path).read()))
    strategy = None if plan == "none" else TorchRecStrategy(plan=plan, timeout_s=float(os.environ.get("DIST_TIMEOUT", 120)))
    steps = StepLosses()
    rec = run(cfg, extra_callbacks=[steps], strategy=strategy)
    if int(os.environ.get("RANK", "0")) == 0:
        rec["step_losses"] = steps.losses
        if strategy is not None:
            rec["plan"] = strategy.plan_text
            rec["table_bytes_per_rank"] = strategy.table_bytes_per_rank
        with open(out_path, "w") as f:
            json.dump(rec, f, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:4])
