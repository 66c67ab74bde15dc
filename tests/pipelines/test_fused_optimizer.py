"""The trainer's optimizer settings reach fused FBGEMM tables (``model.backend=fbgemm``): MF trained through the whole
Lightning pipeline on a real Gowalla slice ends with the same table weights on every backend (same seed, same
batches), for SGD and Adagrad under a cosine schedule; what FBGEMM cannot follow is a ConfigError."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from recsparse.errors import ConfigError
from recsparse.pipelines.config import TrainConfig, TrainerConfig
from recsparse.pipelines.optim import fused_learning_rates, lr_at_epoch
from recsparse.pipelines.train import run


def _cfg(folder, out, backend, optimizer="sgd", **trainer) -> TrainConfig:
    return TrainConfig.from_dict({
        "name": "fused", "data": {"dataset": str(folder)},
        "model": {"family": "mf", "dim": 8, "backend": backend, "init_std": 0.1},
        "loss": {"name": "bpr"},
        "trainer": {"max_epochs": 3, "batch_size": 512, "lr": 0.5, "optimizer": optimizer, "lr_schedule": "cosine",
                    "lr_final_ratio": 0.1, "output_dir": str(out), "progress_bar": False, "limit_train_batches": 3,
                    **trainer},
        "eval": {"ks": [20]}})


class Grab(Callback):
    """Table weights at the end of training and the fused lr each epoch trained with."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.lrs.append(fused_learning_rates(pl_module))

    def on_train_end(self, trainer, pl_module):
        t = pl_module.model.tables
        self.weights = {f: t.table_weight(f).detach().clone() for f in ("user", "item")}


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_mf_tables_follow_the_trainer_optimizer_on_every_backend(gowalla_small, tmp_path, optimizer):
    got = {}
    for backend in ("torch", "torchrec", "fbgemm"):
        g = Grab()
        run(_cfg(gowalla_small, tmp_path / backend, backend, optimizer), extra_callbacks=[g], test=False)
        got[backend] = g
    t = _cfg(gowalla_small, tmp_path, "fbgemm", optimizer).trainer
    # the fused kernels trained each epoch at the schedule's lr (0.5, then cosine down to 0.05)
    assert [lr[0] for lr in got["fbgemm"].lrs] == pytest.approx([lr_at_epoch(t, e) for e in range(3)])
    assert got["fbgemm"].lrs[-1][0] == pytest.approx(0.05)
    start = _cfg(gowalla_small, tmp_path, "torch").model.init_std
    for backend in ("torchrec", "fbgemm"):
        for f in ("user", "item"):
            w, ref = got[backend].weights[f], got["torch"].weights[f]
            assert (ref.std() - start) != pytest.approx(0.0, abs=1e-4)  # it trained
            torch.testing.assert_close(w, ref, rtol=1e-4, atol=1e-5, msg=f"{backend} {f}")


def test_lr_at_epoch_is_the_dense_schedulers_lr():
    t = TrainerConfig(lr=0.3, max_epochs=6, lr_schedule="cosine", lr_final_ratio=0.05, optimizer="sgd")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=t.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.max_epochs - 1, eta_min=t.lr * t.lr_final_ratio)
    for e in range(t.max_epochs):
        assert lr_at_epoch(t, e) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert lr_at_epoch(TrainerConfig(lr=0.2), 7) == 0.2


@pytest.mark.parametrize("trainer, match", [({"optimizer": "adam"}, "trainer.optimizer=adam"),
                                            ({"optimizer": "sgd", "weight_decay": 1e-4}, "trainer.weight_decay")])
def test_unsupported_fused_settings_are_config_errors(gowalla_small, tmp_path, trainer, match):
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.modules import build_module

    cfg = _cfg(gowalla_small, tmp_path, "fbgemm", **trainer)
    with pytest.raises(ConfigError, match=match):
        build_module(cfg, build_split(cfg))
