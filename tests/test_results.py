"""The results-file convention: merge by key, provenance fields, generated Markdown."""

from __future__ import annotations

import json

from recsparse.results import markdown_table, provenance, save_results


def test_save_results_merges_by_key_and_writes_markdown(tmp_path):
    save_results("area", [{"dataset": "a", "model": "m", "ndcg@10": 0.5}, {"dataset": "b", "model": "m", "ndcg@10": 0.4}],
                 key=["dataset", "model"], results_dir=tmp_path)
    save_results("area", [{"dataset": "a", "model": "m", "ndcg@10": 0.6}], key=["dataset", "model"], results_dir=tmp_path)
    recs = json.loads((tmp_path / "area.json").read_text())
    assert {(r["dataset"], r["ndcg@10"]) for r in recs} == {("a", 0.6), ("b", 0.4)}
    md = (tmp_path / "area.md").read_text()
    assert "| dataset | model | ndcg@10 |" in md and "0.6000" in md


def test_provenance_fields():
    p = provenance(1.23456)
    assert set(p) == {"command", "git_commit", "machine", "wall_s"} and p["wall_s"] == 1.235
    assert "cores" in p["machine"]


def test_markdown_table_skips_provenance_columns():
    md = markdown_table([{"dataset": "x", "recall@20": 0.1, "command": "c", "machine": "m"}])
    assert md.splitlines()[0] == "| dataset | recall@20 |"


def test_markdown_report_one_table_per_section_with_its_own_columns():
    from recsparse.results import markdown_report

    md = markdown_report([{"section": "tbe", "name": "a", "ms": 1.5, "command": "bench --x"},
                          {"section": "quant", "name": "int8", "bytes": 10}])
    tbe, quant = md.split("## quant")
    assert "## tbe" in tbe and "| name | ms |" in tbe and "bytes" not in tbe and "`bench --x`" in tbe
    assert "| name | bytes |" in quant and "ms" not in quant


def test_results_dir_for_an_installed_package(tmp_path, monkeypatch):
    """RESULTS_DIR was a path relative to the package source: site-packages/benchmarks/results once installed."""
    import recsparse.results as results

    monkeypatch.setenv("RECSPARSE_RESULTS_DIR", str(tmp_path / "env"))
    assert results.default_results_dir() == tmp_path / "env"
    save_results("area", [{"dataset": "a"}], key=["dataset"])
    assert (tmp_path / "env" / "area.json").is_file()
    monkeypatch.delenv("RECSPARSE_RESULTS_DIR")
    monkeypatch.setattr(results, "_SOURCE_ROOT", tmp_path / "site-packages")  # no checkout around the package
    monkeypatch.chdir(tmp_path)
    assert results.default_results_dir() == tmp_path / "benchmarks" / "results"


def test_require_clean_tree(monkeypatch):
    import pytest

    import recsparse.results as results
    from recsparse.errors import UserError

    monkeypatch.setattr(results, "git_commit", lambda: "abc1234-dirty")
    with pytest.raises(UserError, match="uncommitted changes .*abc1234-dirty"):
        results.require_clean_tree()
    assert results.require_clean_tree(allow_dirty=True) == "abc1234-dirty"
    monkeypatch.setattr(results, "git_commit", lambda: "abc1234")
    assert results.require_clean_tree() == "abc1234"


def test_rec_bench_audit_marks_rows_whose_config_changed(tmp_path):
    """Rows measured with an older configs/gowalla_lightgcn.yaml (512 negatives, no item bias) stayed in rec.json as
    if its command still produced them."""
    import subprocess

    import pytest

    from tests.conftest import REPO as root
    from tests.conftest import load_script

    old = "2f99c16"  # the commit of the first LightGCN recipe
    if subprocess.run(["git", "cat-file", "-e", old], cwd=root, capture_output=True).returncode != 0:
        pytest.skip("needs the repository history")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                          text=True).stdout.strip()
    bench = load_script("benchmarks/rec_bench.py")
    rows = [{"section": "train", "name": "then", "config": "configs/gowalla_lightgcn.yaml", "git_commit": old,
             "overrides": "trainer.max_epochs=2"},
            {"section": "train", "name": "now", "config": "configs/gowalla_lightgcn.yaml", "git_commit": head,
             "overrides": "trainer.progress_bar=false name=x"},
            {"section": "train", "name": "gone", "config": "configs/nope.yaml", "git_commit": head}]
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(rows))
    assert bench.audit(path) == 2
    got = {r["name"]: r.get("superseded", "") for r in json.loads(path.read_text())}
    assert "changed since 2f99c16" in got["then"] and "model.item_bias" in got["then"]
    assert got["now"] == "" and "no longer exists" in got["gone"]
    assert (tmp_path / "rec.md").is_file()
