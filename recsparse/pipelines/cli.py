"""``recsparse train CONFIG.yaml [KEY=VALUE ...]``: fit + test a recommender or a CTR model, write metrics JSON and
checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def command(config: Annotated[Path, typer.Argument(help="YAML config (see configs/).")],
            overrides: Annotated[Optional[list[str]], typer.Argument(
                help="Overrides KEY=VALUE, e.g. trainer.max_epochs=3 model.mapper=modulo.")] = None) -> None:
    """Train and evaluate a recommender (MF, LightGCN, two-tower) or a CTR model (task: ctr) from a YAML config."""
    from recsparse.pipelines.config import load_config

    cfg = load_config(config, overrides or [])  # ConfigError names the field and file:line / override
    from recsparse.pipelines.train import launch_rank, run, summary

    rec = run(cfg)
    if launch_rank() != 0:  # several processes: rank 0 reports
        return
    typer.echo(summary(rec))
    typer.echo(f"metrics: {cfg.output_dir / 'metrics.json'}")
