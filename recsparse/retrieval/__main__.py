"""``python -m recsparse.retrieval`` = ``recsparse beir``."""

import typer

from recsparse.retrieval.cli import command

typer.run(command)
