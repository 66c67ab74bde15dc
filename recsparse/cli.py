"""The ``recsparse`` command. Each task package adds its sub-app here (data, beir, train, sparse, ...)."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from recsparse.errors import reported_in_one_line

app = typer.Typer(help="recsparse: recommendation and retrieval with sparse embeddings.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)

# (name, module, help). The module exposes either a Typer ``app`` (a command group such as ``recsparse data ...``)
# or a ``command`` function (a single command such as ``recsparse beir --dataset ...``).
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("data", "recsparse.data.cli", "Registered datasets: list, info, verify."),
    ("embeddings", "recsparse.embeddings.cli", "Id-mappers, GraphHash clustering, TBE benchmarks."),
    ("beir", "recsparse.retrieval.cli", "Evaluate retrievers (BM25, dense, sparse, hybrid) on a BEIR-format collection."),
    ("sparse", "recsparse.retrieval.sparse.cli", "Learned sparse retrieval: train, encode, impact-index, evaluate."),
    ("train", "recsparse.pipelines.cli", "Train and evaluate a recommender from a YAML config."),
]


def _register() -> None:
    for name, module, help_ in SUBCOMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # a sub-app whose optional stack is missing should not break the rest
            if e.name and e.name.startswith("recsparse") and not module.startswith(e.name):
                raise
            continue
        if hasattr(mod, "app"):
            app.add_typer(mod.app, name=name, help=help_)
        else:
            app.command(name, help=help_)(mod.command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. A :class:`~recsparse.errors.UserError` anywhere below becomes one line on stderr and exit 2;
    ``--debug`` (anywhere on the command line) or ``RECSPARSE_DEBUG=1`` keeps the traceback instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("RECSPARSE_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    with reported_in_one_line("recsparse", debug):
        app(args=args, prog_name="recsparse", standalone_mode=True)


if __name__ == "__main__":
    main()
