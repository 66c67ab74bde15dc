"""``recsparse embeddings ...``: inspect mappers, cluster a dataset with GraphHash, run the embedding benchmarks."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import typer

app = typer.Typer(help="Embedding core: id-mappers, GraphHash clustering, TBE benchmarks.", no_args_is_help=True,
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


if __name__ == "__main__":
    app()
