"""Errors raised by the data layer; each names the file (and line, where there is one)."""

from __future__ import annotations

from pathlib import Path

from recsparse.errors import UserError


class DataError(UserError):
    """Base class of recsparse data errors."""


class DataFormatError(DataError, ValueError):
    """Malformed input: the message starts with ``file:line:`` so editors and humans can jump to it."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ChecksumError(DataError):
    def __init__(self, path: str | Path, expected: str, actual: str):
        self.path = str(path)
        super().__init__(f"{path}: sha256 mismatch (expected {expected}, got {actual}); the file is corrupt, "
                         f"truncated or a different version — delete it and fetch it again (to use a modified "
                         f"copy on purpose, load its folder by path instead of the registered name)")


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset's files are missing and could not be downloaded."""
