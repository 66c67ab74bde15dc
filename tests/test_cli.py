"""The `recsparse` command: help, data list/info/verify on the shared data."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from recsparse.cli import app
from tests.conftest import dataset_path

runner = CliRunner()


def test_help_lists_subcommands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "data" in res.output


def test_entry_point_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "recsparse", "data", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "verify" in out.stdout


def test_data_info_and_unknown():
    res = runner.invoke(app, ["data", "info", "scifact"])
    assert res.exit_code == 0
    info = json.loads(res.output)
    assert info["counts"]["documents"] == 5183 and info["license"].startswith("CC BY-NC")
    bad = runner.invoke(app, ["data", "info", "nope"])
    assert bad.exit_code != 0 and "unknown dataset 'nope'" in bad.output


def test_data_verify_counts_on_shared_data():
    for name in ("gowalla", "ml-100k", "scifact", "cranfield"):
        dataset_path(name)
    res = runner.invoke(app, ["data", "verify", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["dataset"]: r for r in json.loads(res.output)}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert "train_interactions=810,128" in rows["gowalla"]["detail"]
    assert "test_queries=300" in rows["scifact"]["detail"]


def test_data_list():
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0 and "gowalla" in res.output and "beir" in res.output
