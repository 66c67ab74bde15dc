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
    bad = _cli("data", "info", "nope")
    assert bad.returncode == 2 and "unknown dataset 'nope'" in bad.stderr


def test_data_verify_counts_on_shared_data():
    for name in ("gowalla", "ml-100k", "scifact", "cranfield"):
        dataset_path(name)
    res = runner.invoke(app, ["data", "verify", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["dataset"]: r for r in json.loads(res.output)}
    # large CTR sets (criteo, avazu, BARS) are registered but not in the shared data: "missing", exit 0
    assert all(r["status"] == "ok" or (r["status"] == "missing" and r["dataset"] in ("criteo", "avazu", "frappe_x1",
                                                                                     "criteo_x1"))
               for r in rows.values()), rows
    assert rows["adult"]["status"] == "ok" if "adult" in rows else True
    assert "train_interactions=810,128" in rows["gowalla"]["detail"]
    assert "test_queries=300" in rows["scifact"]["detail"]


def test_data_list():
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0 and "gowalla" in res.output and "beir" in res.output


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "recsparse", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_user_error_is_one_line_exit_2_and_debug_keeps_traceback(tmp_path):
    missing = tmp_path / "nope.yaml"
    out = _cli("train", str(missing))
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 2 and str(missing) in out.stderr and "Traceback" not in out.stderr, out.stderr
    dbg = _cli("--debug", "train", str(missing))
    assert dbg.returncode != 0 and "Traceback" in dbg.stderr


def _one_line_exit_2(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert lines[0].startswith("recsparse: error: ")
    for n in needles:
        assert n in out.stderr, out.stderr


def _gowalla_copy(tmp_path, train_line: str | None = None):
    """A LightGCN folder with Gowalla's first 30 train/test lines; optionally line 4 of train.txt replaced."""
    src = dataset_path("gowalla")
    d = tmp_path / "gow"
    d.mkdir()
    for name in ("train.txt", "test.txt"):
        with open(src / name) as f:
            lines = [next(f) for _ in range(30)]
        if name == "train.txt" and train_line is not None:
            lines[3] = train_line
        (d / name).write_text("".join(lines))
    return d


def test_user_errors_of_every_pipeline_subcommand_are_one_line(tmp_path):
    """Each used to print a traceback (KeyError, ValueError, FileNotFoundError, DataFormatError from deep inside)."""
    bad_data = _gowalla_copy(tmp_path, "3 17 x9 4\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dataset: {bad_data}}}\ntrainer: {{max_epochs: 1, output_dir: {tmp_path}/run}}\n")
    _one_line_exit_2(_cli("train", str(cfg)), f"{bad_data / 'train.txt'}:4: item id 'x9' is not an integer")
    _one_line_exit_2(_cli("train", str(cfg), f"data.dataset={tmp_path / 'none'}"), "is neither a registered dataset")
    _one_line_exit_2(_cli("train", str(cfg), "trainer.resume=/no/such.ckpt"),
                     "trainer.resume: checkpoint /no/such.ckpt not found")
    _one_line_exit_2(_cli("train", str(cfg), "data.dataset=ml-100k", "data.min_rating=3"),
                     "data.split must be 'leave_last_out' for ml-100k")
    _one_line_exit_2(_cli("data", "verify", "nope"), "unknown dataset 'nope'")
    _one_line_exit_2(_cli("embeddings", "graphhash", "--resolution", "-1"), "--resolution must be > 0, got -1")
    _one_line_exit_2(_cli("embeddings", "graphhash", "--dataset", "ml-100k"), "is not an implicit-feedback")
