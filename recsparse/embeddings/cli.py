"""``recsparse embeddings ...``: inspect mappers, cluster a dataset with GraphHash, run the embedding benchmarks."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Embedding core: id-mappers, GraphHash clustering, TBE benchmarks, compression Pareto.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)


@app.command("mappers")
def mappers() -> None:
    """List the registered id-mappers (names usable in configs)."""
    from recsparse.embeddings.mappers import MAPPERS, _CLASSES

    for name in MAPPERS:
        doc = (_CLASSES[name].__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name:18s} {doc}")


@app.command("graphhash")
def graphhash(dataset: str = typer.Option("gowalla", help="Registered implicit-feedback dataset or folder."),
              resolution: list[float] = typer.Option([200.0], help="Louvain resolution(s); repeat the option."),
              seed: int = typer.Option(0, help="Louvain random_state."),
              save: Path | None = typer.Option(None, help="Write user/item mapper states here (torch.save).")) -> None:
    """Cluster the TRAIN user–item graph (Louvain) and report clusters, modularity, time and table size."""
    import torch

    from recsparse.data import ImplicitFeedback, load
    from recsparse.embeddings.mappers import GraphHashMapper, cluster_bipartite
    from recsparse.io import atomic_write
    from recsparse.results import print_table

    from recsparse.errors import ConfigError

    bad = [r for r in resolution if not r > 0]
    if bad:
        raise ConfigError(f"--resolution must be > 0, got {bad[0]:g}")
    ds = load(dataset)
    if not isinstance(ds, ImplicitFeedback):
        raise ConfigError(f"--dataset {dataset!r} is not an implicit-feedback (user, item) dataset")
    full = ds.num_users + ds.num_items
    rows = []
    for res in resolution:
        c = cluster_bipartite(ds.train, res, seed, num_users=ds.num_users, num_items=ds.num_items)
        n = c.num_user_clusters + c.num_item_clusters + 2
        rows.append({"resolution": res, "cluster_s": round(c.seconds, 2), "user_clusters": c.num_user_clusters,
                     "item_clusters": c.num_item_clusters, "modularity": round(c.modularity, 4), "table_rows": n,
                     "row_fraction": round(n / full, 4)})
    print_table(rows, title=f"GraphHash on {ds.name} (full tables: {full:,} rows)")
    if save is not None:
        users, items = GraphHashMapper.fit_bipartite(ds.train, resolution[-1], seed, ds.num_users, ds.num_items)
        with atomic_write(save, "wb") as f:
            torch.save({"user": users.state_dict(), "item": items.state_dict()}, f)
        typer.echo(f"saved mapper states (resolution {resolution[-1]:g}) to {save}")


@app.command("bench")
def bench(sections: str = typer.Option("tbe,graphhash,mappers,quant", help="Comma-separated sections."),
          iters: int = typer.Option(10, help="Timed iterations per TBE variant.")) -> None:
    """Run benchmarks/embeddings_bench.py (repository checkout only); wrap in `flock /tmp/recsparse-timing.lock`."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "embeddings_bench.py"
    if not script.is_file():
        raise typer.BadParameter(f"{script} not found (run from a source checkout)")
    sys.argv = [str(script), "--sections", sections, "--iters", str(iters)]
    runpy.run_path(str(script), run_name="__main__")


def _floats(name: str, raw: str) -> list[float]:
    from recsparse.errors import ConfigError

    try:
        vals = [float(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated numbers, got {raw!r}") from None
    if not vals or any(not 0 < v <= 1 for v in vals):
        raise ConfigError(f"--{name} must be fractions in (0, 1], got {raw!r}")
    return vals


@app.command("pareto")
def pareto(dataset: str = typer.Option("gowalla", help="Registered implicit-feedback dataset."),
           model: str = typer.Option("mf", help="mf | lightgcn (the base config's training recipe)."),
           config: Optional[Path] = typer.Option(None, help="Base YAML config (default: configs/<dataset>_<model>"
                                                            ".yaml of the checkout)."),
           epochs: int = typer.Option(10, min=1, help="Training epochs of every trained point."),
           methods: str = typer.Option("full,dsl,prune,graphhash,double_graphhash,modulo,universal,frequency,qr",
                                       help="Comma-separated methods."),
           budgets: str = typer.Option("0.25,0.1,0.5,0.05", help="Row fractions of the mappers (priority order)."),
           densities: str = typer.Option("0.2,0.5,0.1,0.05", help="DSL / pruning densities (priority order)."),
           quant: str = typer.Option("int8,int4", help="Post-training quantisation of each method's best point "
                                                       "('' for none)."),
           dsl_interval: int = typer.Option(50, min=1, help="DSL mask-update interval (optimizer steps)."),
           dsl_ratio: float = typer.Option(0.5, min=0.0, max=1.0, help="DSL initial update ratio (cosine-decayed)."),
           dsl_ratio_final: float = typer.Option(0.005, min=0.0, max=1.0, help="DSL final update ratio."),
           dsl_end: float = typer.Option(0.75, min=0.01, max=1.0, help="DSL: fraction of the run with mask updates "
                                                                       "(the mask is frozen after it)."),
           dsl_scope: str = typer.Option("table", help="DSL prune/regrow ranking: table (the paper's) | row (every "
                                                       "row keeps its share of the budget)."),
           runs_dir: Path = typer.Option(Path("runs/pareto"), help="Run folders (one per trained point)."),
           results_dir: Optional[Path] = typer.Option(None, help="Where pareto.{json,md,png} go "
                                                                 "(default: benchmarks/results)."),
           limit: Optional[int] = typer.Option(None, min=1, help="Run at most N new points, then stop."),
           quant_only: bool = typer.Option(False, help="Only the quantized copies of the recorded points."),
           overrides: Optional[list[str]] = typer.Option(None, "--set", help="Config override for every point "
                                                                            "(repeatable), e.g. trainer.lr=0.01."),
           ) -> None:
    """Train (or reuse recorded runs of) every compression method over a grid of budgets and write a memory vs
    Recall@20 table and chart with the Pareto frontier (benchmarks/results/pareto.{json,md,png}). Resumable:
    finished points are skipped, an interrupted point resumes from its last checkpoint."""
    from recsparse.embeddings.pareto import MAPPER_METHODS, QUANT, ParetoStudy, build_grid
    from recsparse.errors import ConfigError

    known = ("full", "dsl", "prune", *MAPPER_METHODS)
    ms = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in ms if m not in known]
    if bad:
        raise ConfigError(f"--methods: unknown {bad}; choose from {', '.join(known)}")
    from recsparse.embeddings.dsl import SCOPES

    if dsl_scope not in SCOPES:
        raise ConfigError(f"--dsl-scope must be one of {', '.join(SCOPES)}, got {dsl_scope!r}")
    qs = [q.strip() for q in quant.split(",") if q.strip()]
    if any(q not in QUANT for q in qs):
        raise ConfigError(f"--quant must list {', '.join(QUANT)} (or be empty), got {quant!r}")
    if config is None:
        config = Path(__file__).resolve().parents[2] / "configs" / f"{dataset}_{model}.yaml"
    if not config.is_file():
        raise ConfigError(f"base config {config} not found; pass --config PATH")
    try:
        study = ParetoStudy(config, dataset, model, epochs, runs_dir, results_dir, overrides or [],
                            dsl_interval=dsl_interval, dsl_ratio=dsl_ratio, dsl_ratio_final=dsl_ratio_final,
                            dsl_end=dsl_end, dsl_scope=dsl_scope, log=lambda s: typer.echo(s))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"{config}: {e}") from None
    grid = build_grid(ms, _floats("budgets", budgets), _floats("densities", densities))
    typer.echo(f"pareto grid: {len(grid)} points + quantized copies ({', '.join(qs) or 'none'}), "
               f"{epochs} epochs each; results -> {study.results_dir}/pareto.{{json,md,png}}")
    study.run(grid, qs, limit, quant_only)


if __name__ == "__main__":
    app()
