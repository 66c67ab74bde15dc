"""User-facing errors: one contract for every subcommand.

A :class:`UserError` is something the user can fix (a bad config value, a missing or malformed file, a missing
checkpoint). Its message is one line that names the file / field / line and says what to do. The ``recsparse`` CLI
prints it as ``recsparse: error: <message>`` and exits 2, without a traceback (``--debug`` or ``RECSPARSE_DEBUG=1``
shows the traceback). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """Base class of every error the CLI reports as one line with exit status 2."""


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the file and/or the dotted field."""


@contextmanager
def reported_in_one_line(prog: str, debug: bool = False) -> Iterator[None]:
    """Inside the block a :class:`UserError` becomes ``<prog>: error: <message>`` on stderr and exit status 2 (with
    ``debug`` it propagates with its traceback). The ``recsparse`` CLI and the benchmark scripts report through it."""
    try:
        yield
    except UserError as e:
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
