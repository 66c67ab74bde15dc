"""Registry behaviour: root resolution, missing data, offline download, checksum failures, atomic downloads."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import pytest

from recsparse.data import ChecksumError, DatasetNotFoundError, dataset_dir, get_spec, verify_checksums
from recsparse.data import registry
from tests.conftest import dataset_path


def test_registry_entries_are_complete():
    for spec in registry.REGISTRY.values():
        assert spec.files and spec.counts and spec.license and spec.homepage
        # "" = no published sha256 (CTR sets behind a licence page): allowed only there
        assert all(len(h) == 64 or (h == "" and spec.format == "ctr") for h in spec.files.values())


def test_unknown_dataset_lists_known():
    with pytest.raises(KeyError, match="known: .*cranfield, .*gowalla"):
        get_spec("nope")


def test_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSPARSE_DATA", str(tmp_path))
    assert registry.data_root() == tmp_path
    monkeypatch.delenv("RECSPARSE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert registry.data_root() == tmp_path / "cache" / "recsparse" / "data"


def test_missing_without_source_names_dataset_root_and_files(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSPARSE_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as e:
        dataset_dir("cranfield")
    msg = str(e.value)
    assert "'cranfield'" in msg and str(tmp_path) in msg and "corpus.jsonl" in msg and "RECSPARSE_DATA" in msg


def test_offline_download_gives_clear_error_and_writes_nothing(monkeypatch, tmp_path):
    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("RECSPARSE_DATA", str(tmp_path))
    monkeypatch.setattr(registry.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError, match=r"download failed, offline\?"):
        dataset_dir("gowalla")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # no partial files left behind


def test_download_verifies_checksum_and_removes_bad_file(monkeypatch, tmp_path):
    """A download that yields the wrong bytes is rejected and deleted, never left in place."""
    src = dataset_path("gowalla")

    class Resp:
        def __init__(self, path: Path):
            self.f = open(path, "rb")

        def read(self, n=-1):
            return self.f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def fake_urlopen(url, timeout):  # serve the real files, but user_list.txt in place of item_list.txt
        name = url.rsplit("/", 1)[1]
        return Resp(src / ("user_list.txt" if name == "item_list.txt" else name))

    monkeypatch.setenv("RECSPARSE_DATA", str(tmp_path))
    monkeypatch.setattr(registry.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(ChecksumError, match="item_list.txt: sha256 mismatch"):
        dataset_dir("gowalla")
    assert not (tmp_path / "gowalla" / "item_list.txt").exists()
    assert (tmp_path / "gowalla" / "train.txt").exists()  # the good ones were verified and kept


def test_corrupted_copy_fails_verification(tmp_path, monkeypatch):
    src = dataset_path("cranfield")
    dst = tmp_path / "cranfield"
    shutil.copytree(src, dst)
    (dst / "qrels" / "test.tsv").chmod(0o644)
    with open(dst / "qrels" / "test.tsv", "a") as f:
        f.write("1\t1\t1\n")
    monkeypatch.setenv("RECSPARSE_DATA", str(tmp_path))
    with pytest.raises(ChecksumError, match=r"qrels/test.tsv: sha256 mismatch"):
        verify_checksums(get_spec("cranfield"))
    with pytest.raises(ChecksumError):
        dataset_dir("cranfield", verify=True)


def test_loading_a_corrupt_registered_dataset_is_an_error(tmp_path, monkeypatch):
    """Before: ``load("cranfield")`` used a modified copy without a word. Now the registered name means the
    registered bytes (ChecksumError naming the file); the folder itself still loads by path. Verified files are
    remembered by size + mtime, and a file changed afterwards is hashed again."""
    from recsparse.data import load

    dst = tmp_path / "data" / "cranfield"
    shutil.copytree(dataset_path("cranfield"), dst)
    monkeypatch.setenv("RECSPARSE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RECSPARSE_CACHE", str(tmp_path / "cache"))
    assert load("cranfield").corpus.height == 1400
    assert (tmp_path / "cache" / "verified-checksums.json").is_file()
    q = dst / "qrels" / "test.tsv"
    q.chmod(0o644)
    with open(q, "a") as f:
        f.write("1\t1\t1\n")
    with pytest.raises(ChecksumError, match=r"qrels/test.tsv: sha256 mismatch.*load its folder by path"):
        load("cranfield")
    assert load(str(dst)).qrels["test"].height == 1838  # by path: the user's own data, loaded as is
