"""Compression Pareto report: every compression method of the embedding core over a grid of memory budgets, trained
with one recipe on one split, as memory vs Recall@20 with the Pareto frontier marked.

Methods and budgets (:func:`build_grid`):

* ``full`` — the dense, uncompressed tables (the reference);
* each id-mapper (``modulo``, ``universal`` (2 hashes), ``frequency``, ``qr``, ``graphhash``, ``double_graphhash``)
  at a fraction of the full rows per side (GraphHash: the largest Louvain resolution whose tables fit, found by
  bisection; DoubleGraphHash: clusters at half the budget, hashed rows fill the rest);
* ``dsl`` — dynamic sparse learning (:mod:`recsparse.embeddings.dsl`) of the full tables at each density, stored as
  CSR (:mod:`recsparse.embeddings.sparse`, actual bytes);
* ``prune`` — one-shot magnitude pruning of the trained dense model to each density (no retraining), CSR bytes;
* ``int8`` / ``int4`` — post-training FBGEMM row-wise quantisation of the best point of each method, evaluated with
  the rows the quantized lookup kernel returns.

Bytes include the mappers' state (vocabularies, cluster labels). Each trained point is a ``recsparse train`` run
(:func:`recsparse.pipelines.train.run`) in its own folder under ``runs_dir``, named by the point and a digest of its
settings (resumed from ``last.ckpt`` if interrupted); finished points are read back from the results file and skipped when their settings match, so a long
grid resumes where it stopped. Recall@20 is the LightGCN paper's protocol (hits ÷ |test items|).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

MAPPER_METHODS = ("graphhash", "double_graphhash", "modulo", "universal", "frequency", "qr")
QUANT = ("int8", "int4")
AREA = "pareto"
KEY = ["section", "name"]


@dataclass(frozen=True)
class Point:
    """One point of the grid. ``budget``: row fraction (mappers), density (dsl/prune), 1 (full). ``source``: the
    trained point a derived point (prune, int8/int4) is computed from."""

    method: str
    budget: float
    kind: str = "train"  # train | prune | quant
    source: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "quant":
            return f"{self.method}:{self.source}"
        return "full" if self.method == "full" else f"{self.method}@{self.budget:g}"


def frontier(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Pareto frontier of ``(bytes, recall)`` points (fewer bytes and higher recall are better): a point is on it
    when no other point has at most its bytes and at least its recall with one of them strictly better. Exact
    duplicates are both on it."""
    out = []
    for i, (b, r) in enumerate(points):
        dominated = any((b2 <= b and r2 >= r) and (b2 < b or r2 > r) for j, (b2, r2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def build_grid(methods: Sequence[str], budgets: Sequence[float], densities: Sequence[float]) -> list[Point]:
    """Training/pruning points in priority order: the dense reference, DSL and pruning at the first density, every
    mapper at the first budget, then the remaining densities and budgets (so a grid cut short by time still holds
    the headline comparison). Quantized points are added by :class:`ParetoStudy` once their sources exist."""
    pts: list[Point] = [Point("full", 1.0)] if "full" in methods else []
    mappers = [m for m in methods if m in MAPPER_METHODS]
    for i in range(max(len(budgets), len(densities))):
        if i < len(densities):
            if "dsl" in methods:
                pts.append(Point("dsl", densities[i]))
            if "prune" in methods:
                pts.append(Point("prune", densities[i], "prune", "full"))
        if i < len(budgets):
            pts += [Point(m, budgets[i]) for m in mappers]
    return pts


def metric_names(m: dict[str, float], k: int = 20) -> dict[str, float]:
    """The headline ``recall@K`` (hits ÷ |test|, the paper protocol), ``recall_capped@K`` (÷ min(K, |test|)) and
    ``ndcg@K`` from an evaluation dict, whichever names the evaluation module uses for the two recalls."""
    if f"recall_plain@{k}" in m:  # recall@K is the capped variant there
        return {f"recall@{k}": m[f"recall_plain@{k}"], f"recall_capped@{k}": m[f"recall@{k}"],
                f"ndcg@{k}": m[f"ndcg@{k}"]}
    out = {f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"]}
    for name in (f"recall_capped@{k}", f"recall_min@{k}"):
        if name in m:
            out[f"recall_capped@{k}"] = m[name]
    return out


class ParetoStudy:
    """Runs (or reuses) the points of a grid and writes ``pareto.{json,md,png}`` after each one.

    ``config``: the base training config (YAML) of ``model`` on ``dataset``; ``overrides`` apply to every point
    (e.g. ``trainer.max_epochs=10``). ``dsl_interval`` etc. configure the DSL points.
    """

    def __init__(self, config: Path, dataset: str, model: str, epochs: int, runs_dir: Path,
                 results_dir: Path | None = None, overrides: Sequence[str] = (), dsl_interval: int = 50,
                 dsl_ratio: float = 0.5, dsl_ratio_final: float = 0.005, dsl_end: float = 0.75,
                 dsl_scope: str = "table", seed: int = 0,
                 log: Callable[[str], None] = print) -> None:
        from recsparse.pipelines.config import load_config
        from recsparse.results import RESULTS_DIR

        self.config_path, self.dataset, self.model, self.epochs = Path(config), dataset, model, int(epochs)
        self.overrides = [f"data.dataset={dataset}", f"model.family={model}", f"trainer.max_epochs={epochs}",
                          "trainer.progress_bar=false", f"trainer.seed={seed}", *overrides]
        self.base = load_config(self.config_path, self.overrides)  # validates early
        self.runs_dir, self.results_dir = Path(runs_dir), Path(results_dir or RESULTS_DIR)
        self.dsl: dict[str, Any] = dict(interval=dsl_interval, ratio=dsl_ratio, ratio_final=dsl_ratio_final, seed=seed)
        # recorded only when not the default, so rows recorded before these options existed still match
        if dsl_end != 0.75:
            self.dsl["end"] = dsl_end
        if dsl_scope != "table":
            self.dsl["scope"] = dsl_scope
        self.seed, self.log = seed, log
        self._split: Any = None

    # ---- settings: a recorded point is reused only when these match ----------------------------------------------
    def settings(self, p: Point) -> str:
        s = {"config": self.config_path.name, "overrides": self.overrides, "dataset": self.dataset,
             "model": self.model, "epochs": self.epochs}
        if p.method == "dsl":
            s["dsl"] = self.dsl
        if p.source:
            s["source"] = p.source
        return json.dumps(s, sort_keys=True)

    def recorded(self) -> dict[str, dict[str, Any]]:
        path = self.results_dir / f"{AREA}.json"
        if not path.is_file():
            return {}
        rows = json.loads(path.read_text())
        return {r["name"]: r for r in rows if r.get("section") == self.section}

    @property
    def section(self) -> str:
        return f"{Path(self.dataset).name}_{self.model}"

    # ---- the data split (loaded once, shared by every point) -----------------------------------------------------
    def split(self) -> Any:
        if self._split is None:
            from recsparse.pipelines.data import RecDataModule

            dm = RecDataModule(self.base)
            dm.setup()
            self._split = dm.split
        return self._split

    # ---- budgets -> configs ----------------------------------------------------------------------------------------
    def _graph_resolution(self, fraction: float) -> tuple[float, int]:
        """Largest resolution (bisection, 8 steps) whose GraphHash tables (clusters + 1 OOV row per side) fit in
        ``fraction`` of the full rows; returns (resolution, rows)."""
        from recsparse.embeddings.mappers import cluster_bipartite

        s = self.split()
        full = s.num_users + s.num_items

        def rows(res: float) -> int:
            c = cluster_bipartite(s.train, res, self.seed, num_users=s.num_users, num_items=s.num_items)
            return c.num_user_clusters + c.num_item_clusters + 2

        lo, hi = 1.0, 400.0
        if rows(lo) > fraction * full:
            return lo, rows(lo)
        while rows(hi) <= fraction * full and hi < 1e6:
            lo, hi = hi, hi * 2
        for _ in range(8):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if rows(mid) <= fraction * full else (lo, mid)
        return round(lo, 2), rows(lo)

    def point_overrides(self, p: Point) -> list[str]:
        s = self.split()
        out = [f"name=pareto_{self.section}_{p.name.replace('@', '_').replace(':', '_')}",
               f"trainer.output_dir={self.run_dir(p)}", "trainer.resume=last"]
        if p.method == "full":
            return out + ["model.mapper=full"]
        if p.method == "dsl":
            return out + ["model.mapper=full", f"model.dsl.density={p.budget}",
                          *(f"model.dsl.{k}={v}" for k, v in self.dsl.items())]
        ur, ir = max(2, round(p.budget * s.num_users)), max(2, round(p.budget * s.num_items))
        if p.method == "graphhash":
            res, _ = self._graph_resolution(p.budget)
            return out + ["model.mapper=graphhash", f"model.mapper_kwargs={{resolution: {res}}}"]
        if p.method == "double_graphhash":
            res, _ = self._graph_resolution(p.budget / 2)
            return out + ["model.mapper=double_graphhash", f"model.mapper_kwargs={{resolution: {res}}}",
                          f"model.user_rows={ur}", f"model.item_rows={ir}"]
        kw = ["model.mapper_kwargs={num_hashes: 2}"] if p.method == "universal" else []
        return out + [f"model.mapper={p.method}", f"model.user_rows={ur}", f"model.item_rows={ir}", *kw]

    def run_dir(self, p: Point) -> Path:
        """``runs_dir/<name>-<settings digest>``: a point only ever resumes a run of the same settings (a folder
        left by a run with, say, another DSL interval is never picked up as if it were this point's)."""
        digest = hashlib.sha1(self.settings(p).encode()).hexdigest()[:10]
        return self.runs_dir / f"{p.name.replace(':', '_')}-{digest}"

    def point_config(self, p: Point) -> Any:
        from recsparse.pipelines.config import load_config

        return load_config(self.config_path, [*self.overrides, *self.point_overrides(p)])

    # ---- running points ------------------------------------------------------------------------------------------
    def _module(self, cfg: Any) -> Any:
        """The trained module of a finished point (its ``last.ckpt``)."""
        from recsparse.pipelines.modules import build_module

        module = build_module(cfg, self.split())
        ckpt = cfg.output_dir / "checkpoints" / "last.ckpt"
        state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
        module.load_state_dict(state)
        return module.eval()

    def _bytes_extra(self, module: Any) -> int:
        ib = getattr(module, "item_bias", None)  # a learned per-item bias sits outside the id-mapped tables
        return 0 if ib is None else ib.bias.numel() * ib.bias.element_size()

    def train_point(self, p: Point) -> dict[str, Any]:
        from recsparse.pipelines.train import run

        cfg = self.point_config(p)
        rec = run(cfg, self.split())
        out = {"rows": rec["rows"], "bytes": rec["bytes"], "train_s": rec["fit_s"],
               "train_examples_per_s": rec.get("train_examples_per_s"), "epochs": rec["epochs"],
               **metric_names(rec["test"])}
        if cfg.model.mapper_kwargs:
            out["mapper_kwargs"] = json.dumps(cfg.model.mapper_kwargs, sort_keys=True)
        if cfg.model.dsl is not None:  # bytes = the CSR artefact of the trained tables (table_stats)
            out.update(nnz=rec["nnz"], dense_bytes=rec["dense_bytes"],
                       dsl=json.dumps(cfg.model.dsl.to_dict(), sort_keys=True))
        return out

    @torch.no_grad()
    def derived_point(self, p: Point, recorded: dict[str, dict[str, Any]]) -> dict[str, Any]:
        from recsparse.embeddings.dsl import magnitude_masks
        from recsparse.embeddings.sparse import export_sparse

        r = recorded[p.source]
        cfg = self.point_config(Point(r["method"], r["budget"]))
        module = self._module(cfg)
        tables = module.model.tables
        if p.kind == "prune":
            masks = magnitude_masks(tables, p.budget)
            for f in tables.features:
                tables.table_weight(f.name).mul_(masks[f.table_name])
            sp = export_sparse(tables, masks)
            size = {"bytes": sp.num_bytes() + self._bytes_extra(module), "nnz": sp.nnz()}
        else:
            from recsparse.embeddings.quant import dequantized_rows, quantize_tables, table_bytes

            q = quantize_tables(tables, p.method)
            for f in tables.features:
                tables.table_weight(f.name).copy_(dequantized_rows(q, f.name))
            mapper_state = sum(getattr(f.mapper, "num_bytes_state", 0) for f in tables.features)
            size = {"bytes": table_bytes(q) + mapper_state + self._bytes_extra(module)}
        t0 = time.perf_counter()
        m = module.evaluate("test")
        return {**size, "rows": recorded[p.source].get("rows"), "eval_s": round(time.perf_counter() - t0, 2),
                "epochs": recorded[p.source].get("epochs"), **metric_names(m)}

    def run(self, grid: Sequence[Point], quant: Sequence[str] = QUANT, limit: int | None = None,
            quant_only: bool = False) -> list[dict]:
        """Run every point of ``grid`` not yet recorded with the same settings, then the quantized copies of the
        best trained point of each method; returns all records of this section. ``limit``: at most that many new
        points this call. ``quant_only``: skip the grid (quantize what is recorded)."""
        done = 0
        for stage in ("quant",) if quant_only else ("grid", "quant"):
            points = (list(grid) if stage == "grid"
                      else self.quant_points(self.recorded(), quant, {p.method for p in grid if p.kind == "train"}))
            for i, p in enumerate(points, start=1):
                rec = self.recorded()
                tag = f"[{stage} {i}/{len(points)}] {p.name}"
                old = rec.get(p.name)
                if old is not None and old.get("settings") == self.settings(p):
                    self.log(f"{tag}: recorded, skipped (recall@20 {old['recall@20']:.4f})")
                    continue
                if p.source and p.source not in rec:
                    self.log(f"{tag}: needs {p.source} first, skipped")
                    continue
                if limit is not None and done >= limit:
                    self.log(f"{tag}: --limit {limit} reached, stopping (run again to continue)")
                    return list(self.recorded().values())
                self.log(f"{tag}: {'training' if p.kind == 'train' else 'evaluating'} ...")
                self.run_point(p, rec)
                done += 1
        return list(self.recorded().values())

    def run_point(self, p: Point, rec: dict[str, dict[str, Any]]) -> dict[str, Any]:
        from recsparse.results import provenance

        t0 = time.perf_counter()
        body = self.train_point(p) if p.kind == "train" else self.derived_point(p, rec)
        row = {"section": self.section, "name": p.name, "dataset": self.dataset, "model": self.model,
               "method": p.method, "budget": p.budget, "kind": p.kind, "source": p.source, **body,
               "settings": self.settings(p), **provenance(time.perf_counter() - t0)}
        self.save([row])
        self.log(f"  {p.name}: recall@20 {row['recall@20']:.4f}, ndcg@20 {row['ndcg@20']:.4f}, "
                 f"{row['bytes'] / 2**20:.2f} MiB, {time.perf_counter() - t0:.0f} s")
        return row

    def quant_points(self, rec: dict[str, dict[str, Any]], quant: Sequence[str],
                     methods: set[str] | None = None) -> list[Point]:
        """int8/int4 copies of the best recorded trained point of each method (of ``methods``, default all)."""
        best: dict[str, dict[str, Any]] = {}
        for r in rec.values():
            if r.get("kind") != "train" or (methods is not None and r["method"] not in methods):
                continue
            if r["method"] not in best or r["recall@20"] > best[r["method"]]["recall@20"]:
                best[r["method"]] = r
        return [Point(q, 1.0, "quant", r["name"]) for r in best.values() for q in quant]

    # ---- outputs ---------------------------------------------------------------------------------------------------
    def save(self, rows: list[dict[str, Any]]) -> None:
        from recsparse.results import save_results

        path = self.results_dir / f"{AREA}.json"
        old = json.loads(path.read_text()) if path.is_file() else []
        names = {r["name"] for r in rows}
        mine = [r for r in old if r.get("section") == self.section and r["name"] not in names] + rows
        full = next((r for r in mine if r["name"] == "full"), None)
        on = frontier([(r["bytes"], r["recall@20"]) for r in mine])
        for r, f in zip(mine, on):
            r["on_frontier"] = bool(f)
            if full is not None:
                r["bytes_fraction"] = round(r["bytes"] / full["bytes"], 4)
                r["recall_vs_full"] = round(r["recall@20"] / full["recall@20"], 4)
        save_results(AREA, mine, key=KEY, results_dir=self.results_dir)
        plot(mine, self.results_dir / f"{AREA}.png", title=f"{self.dataset} {self.model}: memory vs Recall@20")


MARKERS = {"full": ("*", "black"), "dsl": ("o", "tab:red"), "prune": ("v", "tab:pink"),
           "graphhash": ("s", "tab:green"), "double_graphhash": ("D", "tab:olive"), "modulo": ("^", "tab:blue"),
           "universal": ("<", "tab:cyan"), "frequency": (">", "tab:purple"), "qr": ("P", "tab:brown"),
           "int8": ("x", "tab:gray"), "int4": ("+", "tab:gray")}


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Memory (MiB, log scale) vs Recall@20, one marker per method, the frontier as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recsparse.io import atomic_write

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        marker, color = MARKERS.get(method, ("o", None))
        ax.scatter([r["bytes"] / 2**20 for r in pts], [r["recall@20"] for r in pts], marker=marker, color=color,
                   s=60 if method != "full" else 160, label=method, zorder=3)
    front = sorted((r["bytes"] / 2**20, r["recall@20"]) for r in rows if r.get("on_frontier"))
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="black", lw=1, ls="--", label="Pareto frontier", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("memory: table + mapper bytes (MiB, log)")
    ax.set_ylabel("Recall@20 (hits / |test items|)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


__all__ = ["Point", "ParetoStudy", "build_grid", "frontier", "metric_names", "plot"]
