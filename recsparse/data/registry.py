"""The dataset registry: datasets described as data (``registry.toml``), located under a configurable root.

Root: ``$RECSPARSE_DATA`` if set, else the user cache dir (``~/.cache/recsparse/data``). A dataset lives in
``ROOT/NAME/`` with the files listed in the registry. Missing files are downloaded from the upstream source when one
is known (to a temp path, checksum-verified, then renamed); offline or without a source, the error names the
dataset, the root and what to place where.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import tomllib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from recsparse.data.errors import ChecksumError, DatasetNotFoundError
from recsparse.io import write_json

ENV_VAR = "RECSPARSE_DATA"


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry. ``files`` maps relative path -> sha256; ``counts`` are the expected statistics."""

    name: str
    format: str
    description: str
    license: str
    homepage: str
    files: dict[str, str]
    counts: dict[str, int]
    urls: dict[str, str] = field(default_factory=dict)
    archive: str | None = None
    reference: dict[str, float] = field(default_factory=dict)
    # where ``reference`` comes from: a published figure (and whether we reproduced it) or one we measured
    reference_source: str = ""

    def __post_init__(self) -> None:
        if self.format not in ("lightgcn", "recbole", "beir", "ctr"):
            raise ValueError(f"dataset {self.name!r}: unknown format {self.format!r}")
        if self.reference and not self.reference_source:
            raise ValueError(f"dataset {self.name!r}: reference figures need a reference_source (published where, "
                             f"or measured how)")

    @property
    def downloadable(self) -> bool:
        return bool(self.archive) or set(self.urls) >= set(self.files)


def _load_registry() -> dict[str, DatasetSpec]:
    raw = tomllib.loads(resources.files("recsparse.data").joinpath("registry.toml").read_text())
    return {name: DatasetSpec(name=name, **entry) for name, entry in raw["datasets"].items()}


REGISTRY: dict[str, DatasetSpec] = _load_registry()


def data_root() -> Path:
    """The data root: ``$RECSPARSE_DATA`` or ``~/.cache/recsparse/data``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recsparse" / "data"


def get_spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _memo_file() -> Path:
    root = os.environ.get("RECSPARSE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
        "recsparse"
    return Path(root) / "verified-checksums.json"


def _read_memo() -> dict[str, Any]:
    try:
        return dict(json.loads(_memo_file().read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def verify_checksums(spec: DatasetSpec, root: Path | None = None, memo: bool = False) -> None:
    """Raise :class:`ChecksumError` for the first file whose sha256 differs from the registry.

    ``memo``: skip files verified before with the same size and modification time (recorded in the user cache, so
    large datasets are hashed once, not on every load); a changed file is always hashed again.
    """
    d = (root or data_root()) / spec.name
    seen = _read_memo() if memo else {}
    changed = False
    for rel, expected in spec.files.items():
        if not expected:  # no published sha256 (e.g. Criteo behind a licence page): nothing to compare
            continue
        p = d / rel
        st = p.stat()
        key, stamp = str(p.resolve()), [st.st_size, st.st_mtime_ns, expected]
        if seen.get(key) == stamp:
            continue
        actual = sha256_file(p)
        if actual != expected:
            raise ChecksumError(p, expected, actual)
        seen[key], changed = stamp, True
    if memo and changed:
        try:
            write_json(_memo_file(), seen)
        except OSError:  # a read-only cache only costs re-hashing next time
            pass


def missing_files(spec: DatasetSpec, root: Path | None = None) -> list[str]:
    d = (root or data_root()) / spec.name
    return [rel for rel in spec.files if not (d / rel).is_file()]


def dataset_dir(name: str, download: bool = True, verify: bool = True) -> Path:
    """Path of a registered dataset's folder, downloading missing files when possible.

    Raises :class:`DatasetNotFoundError` naming the dataset, root and expected files when it cannot be had, and
    :class:`ChecksumError` when a file differs from the registry (``verify``; files verified before with the same
    size and modification time are not hashed again). A registered name means the registered bytes: to use a
    modified copy, load its folder by path.
    """
    spec = get_spec(name)
    root = data_root()
    missing = missing_files(spec, root)
    if missing:
        if not download or not spec.downloadable:
            raise _not_found(spec, root, missing, reason="no automatic download for this dataset"
                             if not spec.downloadable else "download disabled")
        _download(spec, root, missing)
    if verify:
        verify_checksums(spec, root, memo=True)
    return root / spec.name


def _not_found(spec: DatasetSpec, root: Path, missing: list[str], reason: str) -> DatasetNotFoundError:
    files = "\n".join(f"  {root / spec.name / rel}" for rel in missing)
    return DatasetNotFoundError(
        f"dataset {spec.name!r} is not available under the data root {root} ({reason}).\n"
        f"Missing files:\n{files}\n"
        f"Place them there (source: {spec.homepage}; licence: {spec.license}), or set {ENV_VAR} to a folder that "
        f"holds {spec.name}/.")


def _fetch(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Stream ``url`` to ``dest`` through a temp file (never a half-written ``dest``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(spec: DatasetSpec, root: Path, missing: list[str]) -> None:
    target = root / spec.name
    try:
        if spec.archive:
            with tempfile.TemporaryDirectory(dir=root if root.exists() else None) as tmp:
                zpath = Path(tmp) / "archive.zip"
                _fetch(spec.archive, zpath)
                with zipfile.ZipFile(zpath) as z:
                    z.extractall(Path(tmp) / "x")
                for rel in missing:  # archives nest files one folder down (NAME/...)
                    found = [p for p in (Path(tmp) / "x").rglob(Path(rel).name) if p.as_posix().endswith(rel)]
                    if not found:
                        raise DatasetNotFoundError(f"{spec.archive} does not contain {rel}")
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(found[0]), target / rel)
        else:
            for rel in missing:
                _fetch(spec.urls[rel], target / rel)
    except (urllib.error.URLError, OSError, zipfile.BadZipFile) as e:
        if isinstance(e, DatasetNotFoundError):
            raise
        raise _not_found(spec, root, missing, reason=f"download failed, offline? ({e})") from e
    for rel in missing:
        actual = sha256_file(target / rel)
        if spec.files[rel] and actual != spec.files[rel]:
            bad = target / rel
            bad.unlink()  # never leave an unverified file where a verified one is expected
            raise ChecksumError(bad, spec.files[rel], actual)


def describe(spec: DatasetSpec) -> dict[str, Any]:
    return {"name": spec.name, "format": spec.format, "description": spec.description, "license": spec.license,
            "homepage": spec.homepage, "files": list(spec.files), "counts": spec.counts,
            "download": spec.archive or ("per-file urls" if spec.urls else "none (place files by hand)")}
