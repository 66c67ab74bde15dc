"""``trainer.strategy`` / ``devices`` / ``plan`` in a TrainConfig: rejected before anything launches, one line on the
CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsparse.errors import ConfigError
from recsparse.pipelines.config import TrainConfig
from recsparse.pipelines.strategy import TorchRecStrategy
from tests.pipelines.test_strategy import _mf


@pytest.mark.parametrize("over, match", [
    ({"strategy": "torchrec", "devices": 4096}, "trainer.devices=4096 exceeds"),
    ({"strategy": "torchrec", "devices": 2, "batch_size": 255}, "trainer.batch_size=255 does not split"),
    ({"strategy": "torchrec", "devices": 2, "optimizer": "adam"}, "trainer.optimizer=adam"),
    ({"strategy": "auto", "devices": 2}, "needs trainer.strategy=torchrec"),
])
def test_strategy_from_config_rejects_before_launching(gowalla_small, tmp_path, over, match):
    from recsparse.pipelines.strategy import strategy_from_config

    d = _mf(gowalla_small, tmp_path, **over)
    with pytest.raises(ConfigError, match=match):
        strategy_from_config(TrainConfig.from_dict(d))
    d["trainer"].update(strategy="torchrec", devices=2, batch_size=256, optimizer="adagrad")
    d["model"]["backend"] = "torch"
    with pytest.raises(ConfigError, match="set model.backend=torchrec"):
        strategy_from_config(TrainConfig.from_dict(d))
    d["model"]["backend"] = "torchrec"
    s = strategy_from_config(TrainConfig.from_dict(d | {"trainer": d["trainer"] | {"plan": "row_wise"}}))
    assert isinstance(s, TorchRecStrategy) and s.plan == "row_wise"


def test_cli_too_many_devices_is_one_line(gowalla_small, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(_mf(gowalla_small, tmp_path / "run")))
    p = subprocess.run([sys.executable, "-m", "recsparse", "train", str(cfg), "trainer.strategy=torchrec",
                        "trainer.devices=4096"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])))
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("recsparse: error: trainer.devices=4096 exceeds")


def test_strategy_rejects_ctr_settings_and_dsl(gowalla_small, tmp_path):
    """The CTR task takes the same trainer.strategy checks; DSL (whole-table masks) is refused under sharding."""
    from recsparse.pipelines.config import CTRConfig
    from recsparse.pipelines.strategy import strategy_from_config

    ctr = {"task": "ctr", "data": {"dataset": "adult"}, "model": {"name": "dcn_v2", "backend": "torchrec"},
           "trainer": {"strategy": "torchrec", "devices": 2, "optimizer": "adam"}}
    with pytest.raises(ConfigError, match="trainer.optimizer=adam"):
        strategy_from_config(CTRConfig.from_dict(ctr))
    ctr["model"]["backend"] = "torch"
    ctr["trainer"]["optimizer"] = "adagrad"
    with pytest.raises(ConfigError, match="set model.backend=torchrec"):
        strategy_from_config(CTRConfig.from_dict(ctr))
    d = _mf(gowalla_small, tmp_path, strategy="torchrec", devices=2)
    d["model"]["dsl"] = {"density": 0.5}
    with pytest.raises(ConfigError, match="model.dsl does not run under trainer.strategy=torchrec"):
        TrainConfig.from_dict(d)
