"""Atomic writes: readers never see half-written files or directories."""

from __future__ import annotations

import json

import pytest

from recsparse.io import atomic_dir, atomic_write, write_json


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "out.json"
    write_json(p, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f:
            f.write('{"a": 2, "half')
            raise RuntimeError("interrupted")
    assert json.loads(p.read_text()) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["out.json"]  # temp file cleaned up


def test_atomic_dir_swaps_in_and_preserves_old_on_error(tmp_path):
    d = tmp_path / "index"
    with atomic_dir(d) as tmp:
        (tmp / "v").write_text("1")
    assert (d / "v").read_text() == "1"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(d) as tmp:
            (tmp / "v").write_text("2")
            raise KeyboardInterrupt
    assert (d / "v").read_text() == "1"
    with atomic_dir(d) as tmp:
        (tmp / "v").write_text("3")
    assert (d / "v").read_text() == "3"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["index"]


def test_sweep_keeps_live_and_foreign_entries(tmp_path):
    """Only entries of the exact pattern whose pid is dead go; this process's own and other names stay."""
    import os
    import subprocess
    import sys

    from recsparse.io import sweep_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for name in (f".idx.{dead}.abc.tmp", f".idx.{os.getpid()}.abc.tmp", f".idx.5.{dead}.abc.tmp", "idx", ".other"):
        (tmp_path / name).mkdir()
    removed = sweep_stale(tmp_path, r"\.idx\.(\d+)\.[^.]+\.tmp")
    assert [p.name for p in removed] == [f".idx.{dead}.abc.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".idx.{os.getpid()}.abc.tmp", f".idx.5.{dead}.abc.tmp", "idx", ".other"])


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                      (0o002, 0o664, 0o775)])
def test_outputs_respect_the_umask(tmp_path, umask, file_mode, dir_mode):
    """mkstemp/mkdtemp made every output 0600 / 0700 whatever the user's umask."""
    import os

    from recsparse.io import current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        write_json(tmp_path / "m.json", {"a": 1})
        with atomic_dir(tmp_path / "idx") as tmp:
            (tmp / "v").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "idx").stat().st_mode & 0o777 == dir_mode


def test_replacing_a_file_keeps_its_mode(tmp_path):
    p = tmp_path / "m.json"
    write_json(p, {"a": 1})
    p.chmod(0o640)
    write_json(p, {"a": 2})
    assert p.stat().st_mode & 0o777 == 0o640 and json.loads(p.read_text()) == {"a": 2}
