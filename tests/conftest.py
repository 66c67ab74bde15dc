"""Test configuration: real data from $RECSPARSE_DATA (default: ../shared/data beside the checkout)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("RECSPARSE_DATA", str(REPO.parent / "shared" / "data"))
DATA = Path(os.environ["RECSPARSE_DATA"])


def dataset_path(name: str) -> Path:
    """Folder of a shared dataset; skips the test (with the reason) when the data root lacks it."""
    p = DATA / name
    if not p.is_dir():
        pytest.skip(f"real dataset {name!r} not found under RECSPARSE_DATA={DATA}")
    return p


def load_script(relative: str) -> ModuleType:
    """Import a script that is not a package module (``benchmarks/rec_bench.py``, ...) under its file stem."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod  # before running it: dataclasses in the script look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def data_root() -> Path:
    return DATA
