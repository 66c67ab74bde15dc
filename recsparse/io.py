"""Crash-safe file writing: write beside the target, fsync, then rename over it (POSIX-atomic)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(parent: str | Path, pattern: str) -> list[Path]:
    """Remove the entries of ``parent`` whose name fully matches ``pattern`` (a regex whose group 1 is the pid of
    the process that made them) when that process no longer runs: what a killed build left behind. Entries of live
    processes (including this one) are kept. Returns what was removed."""
    parent, rx, removed = Path(parent), re.compile(pattern), []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = rx.fullmatch(p.name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


# temp dirs this process is building: removed at interpreter exit if a build never reached its own cleanup
_LIVE_TMP: set[Path] = set()


@atexit.register
def _remove_live_tmp() -> None:
    for p in list(_LIVE_TMP):
        shutil.rmtree(p, ignore_errors=True)


def temp_build_dir(prefix: str, parent: str | Path | None = None, suffix: str = ".tmp") -> Path:
    """A new temp dir ``{prefix}{pid}.{random}{suffix}`` in ``parent`` (default: the system temp dir), after
    sweeping the leftovers of dead processes with the same prefix; removed at exit unless released first."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    sweep_stale(parent, re.escape(prefix) + r"(\d+)\.[^.]+(?:" + re.escape(suffix) + r"|\.old)")
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", suffix=suffix, dir=parent))
    _LIVE_TMP.add(tmp)
    return tmp


def release_build_dir(tmp: Path, remove: bool = True) -> None:
    _LIVE_TMP.discard(tmp)
    if remove:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temp name, then swap it in for ``path``.

    An interrupted build leaves the previous ``path`` (if any) intact; the old copy is removed only after the new
    one is in place. The folder gets ``0777 & ~umask`` (what ``mkdir`` would create) or the replaced folder's mode.
    The temp dir (``.NAME.PID.xxxx.tmp`` beside ``path``) is removed on error and at exit; one left by a killed
    process is removed by the next build of ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_build_dir(f".{path.name}.", path.parent)
    try:
        _fix_mode(tmp, path, 0o777)
        yield tmp
    except BaseException:
        release_build_dir(tmp)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.{tmp.name.rsplit('.', 2)[-2]}.old")
        os.replace(path, old)
    os.replace(tmp, path)
    release_build_dir(tmp, remove=False)
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
