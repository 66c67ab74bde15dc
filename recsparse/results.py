"""The results-file convention shared by every benchmark and CLI job.

Each area (``beir``, ``rec``, ``sparse``, ``embeddings``) owns ``benchmarks/results/<area>.json``: a list of flat
records, each with the identifying fields (``dataset``, ``model``/``retriever``/``mapper`` ...), metric names such as
``ndcg@10``, and provenance (``command``, ``git_commit``, ``machine``, ``wall_s``). Re-running a benchmark replaces the
records with the same identifying fields and keeps the rest. The Markdown table beside it is generated from the JSON.

Where results go: ``$RECSPARSE_RESULTS_DIR`` if set; else ``benchmarks/results`` of the source checkout this package
runs from; else (an installed package) ``./benchmarks/results`` under the current directory. Rows must come from a
clean commit: :func:`require_clean_tree` stops a benchmark before it runs on a tree with uncommitted changes.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from recsparse.io import atomic_write, write_json

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def default_results_dir() -> Path:
    """``$RECSPARSE_RESULTS_DIR``, else the checkout's ``benchmarks/results``, else ``./benchmarks/results``."""
    env = os.environ.get("RECSPARSE_RESULTS_DIR")
    if env:
        return Path(env)
    if (_SOURCE_ROOT / "pyproject.toml").is_file() and (_SOURCE_ROOT / "benchmarks").is_dir():
        return _SOURCE_ROOT / "benchmarks" / "results"
    return Path.cwd() / "benchmarks" / "results"


RESULTS_DIR = default_results_dir()


def _git_dir() -> Path:
    """The repository a measurement belongs to: this package's checkout, else the current directory."""
    return _SOURCE_ROOT if (_SOURCE_ROOT / ".git").exists() else Path.cwd()


def git_commit() -> str:
    """``HEAD``'s short hash, with ``-dirty`` when tracked files have uncommitted changes; ``unknown`` outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=_git_dir())
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=_git_dir()).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def require_clean_tree(allow_dirty: bool = False) -> str:
    """The commit results will be recorded under; raises :class:`~recsparse.errors.UserError` on a dirty tree
    (a row must be reproducible from its ``git_commit``) unless ``allow_dirty`` (then rows say ``-dirty``)."""
    from recsparse.errors import UserError

    commit = git_commit()
    if commit.endswith("-dirty") and not allow_dirty:
        raise UserError(f"the working tree has uncommitted changes (git_commit {commit}): commit them first so the "
                        "results row names a commit that reproduces it, or pass --allow-dirty for a scratch run")
    return commit


def machine() -> str:
    """A short description of where a number was measured (CPU model, cores, accelerator if any)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return desc


def provenance(wall_s: float | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": git_commit(),
        "machine": machine(),
    }
    if wall_s is not None:
        rec["wall_s"] = round(wall_s, 3)
    return rec


def save_results(area: str, records: Sequence[dict[str, Any]], key: Sequence[str],
                 results_dir: str | Path | None = None) -> Path:
    """Merge ``records`` into ``<results_dir>/<area>.json`` (replacing same-key rows) and regenerate the ``.md``."""
    d = Path(results_dir) if results_dir is not None else default_results_dir()
    path = d / f"{area}.json"
    old: list[dict[str, Any]] = []
    if path.exists():
        old = json.loads(path.read_text())
    ident = lambda r: tuple(r.get(k) for k in key)  # noqa: E731
    new_keys = {ident(r) for r in records}
    return write_results(area, [r for r in old if ident(r) not in new_keys] + list(records), d)


def write_results(area: str, records: Sequence[dict[str, Any]], results_dir: str | Path | None = None) -> Path:
    """Write ``<area>.json`` as given (all rows) and regenerate ``<area>.md`` from it."""
    d = Path(results_dir) if results_dir is not None else default_results_dir()
    path = d / f"{area}.json"
    write_json(path, list(records))
    with atomic_write(d / f"{area}.md") as f:
        f.write(f"# {area} results\n\nGenerated from `{area}.json` by `recsparse.results`; do not edit by hand.\n\n")
        f.write(markdown_report(records))
    return path


def _columns(records: Iterable[dict[str, Any]], skip: Sequence[str] = ("command", "git_commit", "machine")) -> list[str]:
    cols: list[str] = []
    for r in records:
        for k in r:
            if k not in cols and k not in skip and not isinstance(r[k], (dict, list)):
                cols.append(k)
    return cols


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    return "" if v is None else str(v)


def markdown_table(records: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    cols = list(columns) if columns else _columns(records)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in records]
    return "\n".join(lines) + "\n"


def markdown_report(records: Sequence[dict[str, Any]], group_by: str = "section") -> str:
    """One table per ``group_by`` value (records of different sections carry different columns), with the commands
    that produced them listed under each table."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r.get(group_by), []).append(r)
    parts = []
    for name, recs in groups.items():
        if name is not None:
            parts.append(f"## {name}\n")
        parts.append(markdown_table(recs, [c for c in _columns(recs) if c != group_by]))
        commands = sorted({str(r["command"]) for r in recs if r.get("command")})
        if commands:
            parts.append("\nProduced by: " + "; ".join(f"`{c}`" for c in commands) + "\n")
    return "\n".join(parts)


def print_table(records: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Print records as a rich table (stdout)."""
    from rich.console import Console
    from rich.table import Table

    cols = list(columns) if columns else _columns(records)
    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="left" if c in ("dataset", "model", "retriever", "mapper", "name") else "right")
    for r in records:
        t.add_row(*(_fmt(r.get(c)) for c in cols))
    # without a terminal rich assumes 80 columns and elides cells; logs and CI want the whole table
    Console(width=None if sys.stdout.isatty() else 200).print(t)
