"""Line reading shared by the text-format loaders: numbered lines, a truncation check, clear errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

from recsparse.data.errors import DataFormatError


def numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line_without_newline)`` (1-based) for a UTF-8 text file.

    A non-empty file whose last line lacks its newline is treated as truncated (every file of these formats is
    written line by line), and so is undecodable UTF-8; both raise :class:`DataFormatError` with the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "file not found")
    with open(path, "rb") as f:
        n = 0
        for n, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                raise DataFormatError(path, n, "last line has no newline: the file looks truncated")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(path, n, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            yield n, line.rstrip("\r\n")


INT64_MAX = 2**63 - 1


def parse_int(path: Path, lineno: int, token: str, what: str, limit: int | None = None,
              limit_source: str = "") -> int:
    """A non-negative integer that fits int64 and, given ``limit``, is below it (``limit_source`` says where the
    limit was declared, e.g. ``"item_list.txt lists 40981 items"``)."""
    try:
        v = int(token)
    except ValueError:
        raise DataFormatError(path, lineno, f"{what} {token!r} is not an integer") from None
    if v < 0:
        raise DataFormatError(path, lineno, f"{what} {v} is negative")
    if v > INT64_MAX:
        raise DataFormatError(path, lineno, f"{what} {token} does not fit in a 64-bit integer")
    if limit is not None and v >= limit:
        raise DataFormatError(path, lineno, f"{what} {v} is beyond the catalogue ({limit_source}: ids 0..{limit - 1})")
    return v


def parse_float(path: Path, lineno: int, token: str, what: str) -> float:
    """A finite float (NaN / inf ratings or features poison every mean they enter)."""
    try:
        v = float(token)
    except ValueError:
        raise DataFormatError(path, lineno, f"{what}: {token!r} is not a float") from None
    if not math.isfinite(v):
        raise DataFormatError(path, lineno, f"{what}: {token!r} is not a finite number")
    return v
