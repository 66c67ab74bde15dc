"""Crash-safe file writing: write beside the target, fsync, then rename over it (POSIX-atomic)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``os.umask`` can only set-and-return,
    which briefly leaves a umask of 0 for other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fix_mode(tmp: str | Path, target: Path, default: int) -> None:
    """``mkstemp``/``mkdtemp`` create 0600/0700; give the output the mode a plain ``open``/``mkdir`` would have
    (``default & ~umask``), or the mode of the file it replaces."""
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = default & ~current_umask()
    os.chmod(tmp, mode)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on success rename it to ``path``, on error remove it.

    Readers see either the old file or the complete new one, never a half-written file. The new file gets the
    replaced file's mode, or ``0666 & ~umask`` (what ``open`` would create).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _fix_mode(tmp, path, 0o666)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temp name, then swap it in for ``path``.

    An interrupted build leaves the previous ``path`` (if any) intact; the old copy is removed only after the new
    one is in place. The folder gets ``0777 & ~umask`` (what ``mkdir`` would create) or the replaced folder's mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        _fix_mode(tmp, path, 0o777)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old.{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# Every recsparse index folder (Lucene BM25 / impact, FAISS) carries this JSON beside the engine's own files:
# kind, config, corpus hash, build seconds ... The engines ignore unknown file names.
INDEX_META = "recsparse.json"


def read_index_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of the index folder ``path``; ``{}`` when it has none."""
    p = Path(path) / INDEX_META
    return dict(json.loads(p.read_text())) if p.is_file() else {}


def write_index_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """Write the metadata of the index folder ``path`` (atomically); the schema is
    :class:`recsparse.retrieval.base.IndexMeta`."""
    write_json(Path(path) / INDEX_META, meta)
