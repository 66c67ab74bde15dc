"""Test configuration: real data from $RECSPARSE_DATA (default: ../shared/data beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def data_root() -> Path:
    return DATA
