"""``recsparse train configs/<dataset>_<model>.yaml`` for CTR configs (``task: ctr``): they load as typed sections
of :class:`CTRConfig`, run through the one training pipeline (run folder, checkpoints, resume/overwrite rules), and
bad config values are one-line errors naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recsparse.errors import ConfigError
from recsparse.pipelines.config import CTRConfig, load_config
from tests.conftest import REPO, dataset_path

CONFIGS = sorted((REPO / "configs").glob("*ctr_*.yaml")) + sorted((REPO / "configs").glob("adult_*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_ctr_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, CTRConfig) and cfg.name == path.stem and path.stem.endswith(cfg.model.name)


def test_config_types_are_checked(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task: ctr\ndata: {dataset: adult}\nmodel: {name: deepfm}\ntrainer: {lr: 1e-3}\n")
    cfg = load_config(p)
    assert cfg.trainer.lr == 1e-3  # YAML reads 1e-3 as a string: accepted as a number
    for bad, msg in [("trainer.max_epochs=2.5", "trainer.max_epochs: expected an integer, got 2.5"),
                     ("trainer.max_epochs=true", "trainer.max_epochs: expected an integer, got True"),
                     ("trainer.lr=.inf", "trainer.lr: expected a finite number"),
                     ("trainer.seed=abc", "trainer.seed: expected an integer"),
                     ("model.name=bogus", "model.name must be one of"),
                     ("model.budget=0", "model.budget must be in"),
                     ("trainer.bogus=1", "trainer.bogus: unknown key"),
                     ("model.family=mf", "model.family: unknown key"),
                     ("task=bogus", "task: must be one of 'ranking', 'ctr'"),
                     ("name=../../x", "name must be one folder name")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(p, [bad])
    (tmp_path / "bad.yaml").write_text("task: ctr\nmodel: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: malformed YAML"):
        load_config(tmp_path / "bad.yaml")


def test_recsparse_train_ctr_config_end_to_end(tmp_path):
    dataset_path("adult")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "recsparse", "train", str(REPO / "configs" / "adult_lr.yaml"),
           "trainer.max_epochs=1", f"trainer.output_dir={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "ctr" and m["model"] == "lr" and 0.5 < m["test"]["auc"] <= 1 and m["epochs"] == 1
    assert m["best_val"]["metric"] == "auc" and m["config"]["trainer"]["max_epochs"] == 1
    assert (out / "feature_spec" / "spec.json").is_file()
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt", "epoch0.ckpt"}
    # the same folder again without overwrite or resume: the pipeline's one-line error, exit 2
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 2 and "already exists: continue it with trainer.resume=last" in r.stderr
    assert "Traceback" not in r.stderr
    # resume=last with a larger epoch budget continues from the checkpoint (the same rules as every task)
    r = subprocess.run(cmd[:-2] + ["trainer.max_epochs=2", f"trainer.output_dir={out}", "trainer.resume=last"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 2 and Path(m["resumed_from"]).name == "last.ckpt"
    r = subprocess.run(cmd[:-2] + ["trainer.max_epochs=1.5"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 2 and "trainer.max_epochs: expected an integer, got 1.5" in r.stderr.strip().splitlines()[-1]
