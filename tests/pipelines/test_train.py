"""End to end on real slices: Lightning fit + test, kill-and-resume equality, early stopping, two-tower on
MovieLens-100K with side features, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from recsparse.pipelines.config import TrainConfig
from recsparse.pipelines.train import run


def _cfg(folder, out, **over) -> TrainConfig:
    d = {"name": "t", "data": {"dataset": str(folder), "val_fraction": 0.1},
         "model": {"family": "mf", "dim": 16, "normalize": True},
         "loss": {"name": "softmax", "temperature": 0.2, "num_uniform_negatives": 64},
         "trainer": {"max_epochs": 3, "batch_size": 256, "lr": 0.01, "output_dir": str(out), "progress_bar": False,
                     "patience": 10},
         "eval": {"ks": [20]}}
    for k, v in over.items():
        sec, key = k.split("__")
        d[sec][key] = v
    return TrainConfig.from_dict(d)


class Crash(Callback):
    """Simulates a kill in the middle of epoch ``epoch`` (after the previous epoch's checkpoint was written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 2:
            raise RuntimeError("killed")


def _weights(out):
    ck = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    return ck["state_dict"]


@pytest.mark.parametrize("family,loss,schedule", [("mf", "softmax", "constant"), ("mf", "softmax", "cosine"),
                                                  pytest.param("lightgcn", "bpr", "constant", marks=pytest.mark.slow)])
def test_kill_and_resume_is_identical(gowalla_small, tmp_path, family, loss, schedule):
    kw = dict(model__family=family, loss__name=loss, trainer__max_epochs=2, trainer__lr_schedule=schedule)
    a = run(_cfg(gowalla_small, tmp_path / "a", **kw))
    crashed = _cfg(gowalla_small, tmp_path / "b", **kw)
    with pytest.raises(RuntimeError, match="killed"):
        run(crashed, extra_callbacks=[Crash(1)])
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    b = run(_cfg(gowalla_small, tmp_path / "b", trainer__resume="last", **kw))
    assert b["resumed_from"] is not None
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        if isinstance(wa[k], torch.Tensor):
            assert torch.equal(wa[k], wb[k]), k
    assert a["best_val"]["value"] == b["best_val"]["value"], (a["best_val"], b["best_val"])
    assert a["test"] == b["test"]
    assert a["epochs"] == b["epochs"] == 2


def test_cosine_schedule_decays_to_the_final_ratio(gowalla_small, tmp_path):
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.modules import build_module

    cfg = _cfg(gowalla_small, tmp_path, trainer__lr_schedule="cosine", trainer__max_epochs=5,
               trainer__lr_final_ratio=0.1)
    conf = build_module(cfg, build_split(cfg)).configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[2] == pytest.approx(0.001 + 0.009 * 0.5)  # half-way down the cosine


def test_fit_writes_logs_checkpoints_and_learns(gowalla_small, tmp_path):
    rec = run(_cfg(gowalla_small, tmp_path, trainer__max_epochs=2, trainer__lr=0.05))
    out = tmp_path
    assert (out / "metrics.json").is_file() and any((out / "csv").rglob("metrics.csv"))
    assert any((out / "tb").rglob("events.out.tfevents*"))
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert rec["best_val"]["metric"] == "recall@20"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["num_users"] == 150 and saved["train_examples_per_s"] > 0
    # the same model untrained (random tables) is the floor; training must beat it clearly
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.modules import build_module

    cfg = _cfg(gowalla_small, tmp_path / "untrained")
    untrained = build_module(cfg, build_split(cfg)).evaluate("test")["recall@20"]
    assert rec["test"]["recall@20"] > max(2 * untrained, untrained + 0.005)


@pytest.mark.slow
def test_early_stopping_stops(gowalla_small, tmp_path):
    rec = run(_cfg(gowalla_small, tmp_path, trainer__max_epochs=15, trainer__patience=1, trainer__lr=0.2))
    assert rec["epochs"] < 15


@pytest.mark.parametrize("mapper,kw", [("graphhash", {"resolution": 5.0}), ("double_graphhash", {"resolution": 2.0})])
def test_compressed_tables_train(gowalla_small, tmp_path, mapper, kw):
    rec = run(_cfg(gowalla_small, tmp_path, model__mapper=mapper, model__mapper_kwargs=kw,
                   model__budget_resolution=None if mapper == "graphhash" else 5.0, trainer__max_epochs=1))
    assert rec["rows"] < 150 + 5000 and rec["test"]["num_users"] == 150


@pytest.mark.parametrize("backend", ["torch", "torchrec"])
def test_two_tower_ml100k_side_features(ml100k_path, tmp_path, backend):
    d = {"name": "tt", "data": {"dataset": "ml-100k", "split": "leave_last_out"},
         "model": {"family": "two_tower", "dim": 16, "hidden": [32], "out_dim": 16, "init_std": 0.1,
                   "backend": backend},
         "loss": {"name": "softmax", "temperature": 0.1, "logq": True, "num_uniform_negatives": 128},
         "trainer": {"max_epochs": 1, "batch_size": 1024, "lr": 0.005, "output_dir": str(tmp_path),
                     "progress_bar": False, "limit_train_batches": 10},
         "eval": {"ks": [20, 50], "monitor": "recall@50"}}
    rec = run(TrainConfig.from_dict(d))
    assert rec["test"]["num_users"] == 943
    # leave-last-out: 943 validation and 943 test interactions removed from training
    assert 0.0 <= rec["test"]["recall@50"] <= 1.0
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    names = [k for k in ck["state_dict"] if "ebc.bags" in k or "ebc.ebc.embedding_bags" in k]
    assert any("t_genre" in k for k in names) and any("t_occupation" in k for k in names)


def test_cli_train(gowalla_small, tmp_path):
    from typer.testing import CliRunner

    from recsparse.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dataset: {gowalla_small}}}\nmodel: {{dim: 8}}\nloss: {{name: bpr}}\n"
                   f"trainer: {{max_epochs: 1, batch_size: 512, progress_bar: false, output_dir: {tmp_path}/run}}\n")
    r = CliRunner().invoke(app, ["train", str(cfg), "trainer.lr=0.01"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "metrics.json").is_file()
    bad = CliRunner().invoke(app, ["train", str(cfg), "trainer.batch_size=0"])
    assert bad.exit_code == 2 and "trainer.batch_size must be > 0" in bad.output


@pytest.mark.parametrize("family", ["mf", "lightgcn"])
def test_unseen_users_at_evaluation(gowalla_small, tmp_path, family):
    """A user with no training row (id beyond the training users) is scored through the mapper's OOV row and
    counted; its exclusion set is empty."""
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.evaluation import Interactions, full_ranking_metrics
    from recsparse.pipelines.modules import build_module

    cfg = _cfg(gowalla_small, tmp_path, model__family=family)
    split = build_split(cfg)
    module = build_module(cfg, split)
    user_fn, items = module.eval_vectors()
    nu = split.num_users
    ids = torch.tensor([0, nu + 5])
    vec = user_fn(ids)
    assert vec.shape == (2, 16) and torch.isfinite(vec).all()
    oov = module.model.tables.embed("user", torch.tensor([nu + 5]))
    assert torch.allclose(vec[1], torch.nn.functional.normalize(oov, dim=-1)[0])
    truth = Interactions.from_pairs([0, nu + 5], [1, 2], nu + 6, split.num_items)
    m = full_ranking_metrics(user_fn, items, truth, module.train_interactions(), ks=[20])
    assert m["num_users"] == 2


@pytest.mark.parametrize("family", ["mf", "lightgcn"])
def test_item_bias_trains_into_the_checkpoint_and_the_scores(gowalla_small, tmp_path, family):
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.modules import build_module

    cfg = _cfg(gowalla_small, tmp_path, model__family=family, model__item_bias=True, trainer__max_epochs=2)
    rec = run(cfg)
    bias = _weights(tmp_path)["item_bias.bias"]
    assert bias.abs().max() > 0
    # the learned prior follows popularity in the training stream
    split = build_split(cfg)
    pop = torch.bincount(torch.from_numpy(split.train["item_id"].to_numpy().copy()), minlength=split.num_items).float()
    assert torch.corrcoef(torch.stack([bias, pop.log1p()]))[0, 1] > 0.3
    # evaluation ranks by cos + τ·b: the folded vectors give exactly that score
    module = build_module(cfg, split)
    module.load_state_dict(_weights(tmp_path))
    users, items = module.eval_vectors()
    ids = torch.arange(5)
    u = users(ids)
    assert u.shape[1] == items.shape[1] == 16 + 1
    want = u[:, :16] @ items[:, :16].T + cfg.loss.temperature * bias
    torch.testing.assert_close(u @ items.T, want)
    plain = build_module(_cfg(gowalla_small, tmp_path / "plain", model__family=family), split).table_stats()
    assert rec["bytes"] - plain["bytes"] == 4 * split.num_items and rec["rows"] == plain["rows"]
