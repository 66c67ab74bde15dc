"""The ``recsparse`` command. Each task package adds its sub-app here (data, beir, train, sparse, ...)."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="recsparse: recommendation and retrieval with sparse embeddings.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)

# (sub-command name, module with a Typer `app`, help) — imported lazily so `recsparse --help` stays fast.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("data", "recsparse.data.cli", "Registered datasets: list, info, verify."),
    ("embeddings", "recsparse.embeddings.cli", "Id-mappers, GraphHash clustering, TBE benchmarks."),
]


def _register() -> None:
    for name, module, help_ in SUBCOMMANDS:
        try:
            sub = importlib.import_module(module).app
        except ModuleNotFoundError as e:  # a sub-app whose optional stack is missing should not break the rest
            if e.name and e.name.startswith("recsparse"):
                raise
            continue
        app.add_typer(sub, name=name, help=help_)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
