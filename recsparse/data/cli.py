"""``recsparse data ...``: list, describe and verify the registered datasets."""

from __future__ import annotations

import json
import time

import typer

from recsparse.data import REGISTRY, data_root, get_spec, load
from recsparse.data.errors import DataError
from recsparse.data.registry import describe, missing_files, verify_checksums

def _spec(name: str):
    """The registry entry, or a one-line user error naming the known datasets."""
    try:
        return get_spec(name)
    except KeyError as e:
        raise DataError(str(e.args[0])) from None


app = typer.Typer(help="Registered datasets: list, inspect, verify checksums and counts.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """List registered datasets and whether their files are present under the data root."""
    from recsparse.results import print_table

    root = data_root()
    rows = [{"name": s.name, "format": s.format, "present": "yes" if not missing_files(s, root) else "no",
             "description": s.description} for s in REGISTRY.values()]
    print_table(rows, title=f"datasets (root: {root})")


@app.command()
def info(name: str = typer.Argument(..., help="dataset name, e.g. gowalla")) -> None:
    """Show one dataset's description, files, licence, source and expected counts."""
    spec = _spec(name)
    d = describe(spec)
    d["root"] = str(data_root() / spec.name)
    typer.echo(json.dumps(d, indent=2))


@app.command()
def verify(names: list[str] = typer.Argument(None, help="datasets to verify (default: all present)"),
           as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Verify sha256 checksums and expected counts; exit 1 if any dataset fails."""
    from recsparse.results import print_table

    root = data_root()
    rows, failed = [], False
    specs = [_spec(n) for n in names or list(REGISTRY)]  # every name checked before the slow verification
    for spec in specs:
        name = spec.name
        row: dict = {"dataset": name}
        t0 = time.perf_counter()
        if missing_files(spec, root):
            row.update(status="missing", detail=f"not under {root / name}")
            failed |= bool(names)
            rows.append(row)
            continue
        try:
            verify_checksums(spec, root)
            counts = load(name).counts()
            bad = {k: (v, counts.get(k)) for k, v in spec.counts.items() if counts.get(k) != v}
            row["status"] = "ok" if not bad else "COUNT MISMATCH"
            row["detail"] = ", ".join(f"{k}={counts.get(k):,}" for k in spec.counts) + (
                "" if not bad else f" (expected {', '.join(f'{k}={v[0]:,}' for k, v in bad.items())})")
            failed |= bool(bad)
        except DataError as e:
            row.update(status="FAILED", detail=str(e))
            failed = True
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        print_table(rows, columns=["dataset", "status", "detail", "seconds"], title=f"data root: {root}")
    raise typer.Exit(1 if failed else 0)
