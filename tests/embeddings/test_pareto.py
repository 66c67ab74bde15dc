"""Compression Pareto report: the frontier on hand-made points, the grid's priority order, and a tiny end-to-end
grid on a real Gowalla slice (trained, DSL, pruned and int8 points; json/md/png written; a rerun skips them)."""

from __future__ import annotations

import json
from pathlib import Path

from recsparse.embeddings.pareto import ParetoStudy, Point, build_grid, frontier
from tests.pipelines.conftest import gowalla_small  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def test_frontier_on_hand_made_points():
    pts = [(100, 0.10), (50, 0.09), (50, 0.05), (200, 0.10), (10, 0.02), (300, 0.15), (10, 0.02), (5, 0.01),
           (60, 0.09)]
    # (50,.05) and (60,.09) are dominated by (50,.09); (200,.10) by (100,.10); the duplicate (10,.02) stays twice
    assert frontier(pts) == [True, True, False, False, True, True, True, True, False]
    assert frontier([]) == [] and frontier([(1, 0.0)]) == [True]


def test_grid_priority_order():
    g = build_grid(["full", "dsl", "prune", "modulo", "qr"], [0.25, 0.1], [0.2, 0.5, 0.05])
    assert [p.name for p in g] == ["full", "dsl@0.2", "prune@0.2", "modulo@0.25", "qr@0.25", "dsl@0.5",
                                   "prune@0.5", "modulo@0.1", "qr@0.1", "dsl@0.05", "prune@0.05"]
    assert Point("int8", 1.0, "quant", "dsl@0.2").name == "int8:dsl@0.2"
    assert [p.name for p in build_grid(["qr"], [0.5], [0.1])] == ["qr@0.5"]  # a partial grid (another process)


def test_tiny_grid_end_to_end(gowalla_small, tmp_path):  # noqa: F811
    logs: list[str] = []
    study = ParetoStudy(REPO / "configs" / "gowalla_mf.yaml", str(gowalla_small), "mf", 1, tmp_path / "runs",
                        tmp_path / "results", ["model.dim=8", "trainer.batch_size=256",
                                               "loss.num_uniform_negatives=32"], dsl_interval=2, log=logs.append)
    grid = build_grid(["full", "dsl", "prune", "modulo"], [0.25], [0.2])
    rows = {r["name"]: r for r in study.run(grid, ["int8"])}
    assert set(rows) == {"full", "dsl@0.2", "prune@0.2", "modulo@0.25", "int8:full", "int8:dsl@0.2",
                         "int8:modulo@0.25"}
    full, dsl, prune = rows["full"], rows["dsl@0.2"], rows["prune@0.2"]
    assert dsl["nnz"] <= round(0.2 * (full["rows"] * 8))
    # CSR: 4 B value + 1 B column per non-zero, a 4 B row pointer per row (+1 per table); identity mappers: no state
    assert dsl["bytes"] == dsl["nnz"] * 5 + 4 * (full["rows"] + 2) < 0.4 * full["bytes"]
    assert prune["nnz"] == sum(round(0.2 * r * 8) for r in (151, study.split().num_items + 1))
    assert rows["modulo@0.25"]["rows"] <= 0.26 * full["rows"] + 2
    assert rows["int8:full"]["bytes"] < 0.4 * full["bytes"]
    for r in rows.values():
        assert 0 <= r["recall@20"] <= 1 and "on_frontier" in r and r["settings"]
    assert any(r["on_frontier"] for r in rows.values())
    res = tmp_path / "results"
    assert (res / "pareto.png").stat().st_size > 10_000 and "dsl@0.2" in (res / "pareto.md").read_text()
    assert len(json.loads((res / "pareto.json").read_text())) == len(rows)
    logs.clear()
    study.run(grid, ["int8"])  # resumable: everything recorded is skipped
    assert sum("recorded, skipped" in line for line in logs) == len(rows)
    logs.clear()
    study.run(build_grid(["full", "modulo"], [0.1], [0.2]), ["int8"], quant_only=True)  # no training at all
    assert not any("training" in line for line in logs) and all("skipped" in line for line in logs)
    # every trained point ran in its own settings-named folder; a study with other DSL settings gets other folders
    dirs = {p.name: study.run_dir(p) for p in grid if p.kind == "train"}
    assert all((d / "checkpoints" / "last.ckpt").is_file() for d in dirs.values())
    other = ParetoStudy(REPO / "configs" / "gowalla_mf.yaml", str(gowalla_small), "mf", 1, tmp_path / "runs",
                        tmp_path / "results", ["model.dim=8", "trainer.batch_size=256",
                                               "loss.num_uniform_negatives=32"], dsl_interval=3, log=logs.append)
    assert other.run_dir(Point("dsl", 0.2)) != dirs["dsl@0.2"] and other.run_dir(Point("full", 1.0)) == dirs["full"]
