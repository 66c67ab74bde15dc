"""``recsparse train CONFIG.yaml [KEY=VALUE ...]``: fit + test a recommender, write metrics JSON and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def _is_ctr(config: Path) -> bool:
    """A CTR config says ``task: ctr`` (read cheaply; a malformed file is left to the loader's error)."""
    import yaml

    try:
        raw = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and raw.get("task") == "ctr"


def command(config: Annotated[Path, typer.Argument(help="YAML config (see configs/).")],
            overrides: Annotated[Optional[list[str]], typer.Argument(
                help="Overrides KEY=VALUE, e.g. trainer.max_epochs=3 model.mapper=modulo.")] = None) -> None:
    """Train and evaluate a recommender (MF, LightGCN, two-tower) or a CTR model (task: ctr) from a YAML config."""
    from recsparse.pipelines.config import load_config

    if _is_ctr(config):
        from recsparse.pipelines.ctr import load_ctr_config, run_ctr

        ctr_cfg, opts = load_ctr_config(config, overrides or [])
        rec = run_ctr(ctr_cfg, **opts)
        typer.echo(json.dumps({k: rec[k] for k in ("test_auc", "test_logloss", "epochs", "fit_s")}))
        typer.echo(f"metrics: {Path(opts['output_dir'].format(name=opts['name'])) / 'metrics.json'}")
        return

    cfg = load_config(config, overrides or [])  # ConfigError names the field and file:line / override
    from recsparse.pipelines.train import run, summary

    rec = run(cfg)
    typer.echo(summary(rec))
    typer.echo(f"metrics: {cfg.output_dir / 'metrics.json'}")
