"""Config validation: every bad field is named in the error; YAML + overrides; shipped configs load."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsparse.errors import ConfigError
from recsparse.pipelines.config import TrainConfig, apply_overrides, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("d,msg", [
    ({"trainer": {"batch_size": 0}}, "trainer.batch_size must be > 0"),
    ({"trainer": {"lr": -1}}, "trainer.lr must be > 0"),
    ({"trainer": {"optimizer": "lbfgs"}}, "trainer.optimizer: must be one of"),
    ({"trainer": {"lr_schedule": "linear"}}, "trainer.lr_schedule: must be one of"),
    ({"trainer": {"lr_final_ratio": 2.0}}, "trainer.lr_final_ratio must be in"),
    ({"model": {"family": "dlrm"}}, "model.family: must be one of"),
    ({"model": {"mapper": "bloom"}}, "model.mapper must be one of"),
    ({"model": {"dim": 0}}, "model.dim must be > 0"),
    ({"model": {"num_layers": -1}}, "model.num_layers must be >= 0"),
    ({"loss": {"name": "hinge"}}, "loss.name: must be one of"),
    ({"loss": {"temperature": 0}}, "loss.temperature must be > 0"),
    ({"loss": {"num_uniform_negatives": -5}}, "loss.num_uniform_negatives"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction must be in"),
    ({"data": {"split": "random"}}, "data.split: must be one of"),
    ({"eval": {"ks": [0]}}, "eval.ks"),
    ({"eval": {"monitor": "recall@50"}}, "eval.monitor"),
    ({"eval": {"backend": "annoy"}}, "eval.backend"),
    ({"trainer": {"epochs": 3}}, "trainer.epochs: unknown key; trainer has .*max_epochs"),
    ({"optim": {}}, "optim: unknown key; the config has data, eval"),
    ({"model": {"family": "two_tower"}, "loss": {"name": "bpr"}}, "loss.name must be 'softmax'"),
    ({"model": {"family": "two_tower", "item_bias": True}, "loss": {"name": "softmax"}}, "model.item_bias is for"),
])
def test_validation_errors_name_the_field(d, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig.from_dict(d)


def test_overrides_are_typed_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {dataset: gowalla}\ntrainer: {max_epochs: 5}\n")
    cfg = load_config(p, ["trainer.max_epochs=2", "eval.ks=[20,50]", "model.mapper=modulo",
                          "model.mapper_kwargs.seed=3", "loss.logq=false"])
    assert cfg.name == "c" and cfg.trainer.max_epochs == 2 and cfg.eval.ks == [20, 50]
    assert cfg.model.mapper == "modulo" and cfg.model.mapper_kwargs == {"seed": 3} and cfg.loss.logq is False
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["trainer.max_epochs"])
    with pytest.raises(ValueError, match="trainer.max_epochs must be > 0"):
        load_config(p, ["trainer.max_epochs=0"])
    with pytest.raises(ConfigError, match="missing.yaml not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_validate():
    # CTR configs (task: ctr) are validated by tests/pipelines/test_ctr_cli.py
    files = [f for f in sorted(CONFIGS.glob("*.yaml")) if "task: ctr" not in f.read_text()]
    assert len(files) >= 4
    for f in files:
        cfg = load_config(f)
        assert cfg.name == f.stem
