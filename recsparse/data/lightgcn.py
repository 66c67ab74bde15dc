"""LightGCN-format implicit feedback (Gowalla, Yelp2018, Amazon-Book splits of the NGCF/LightGCN authors).

``train.txt`` / ``test.txt``: one line per user, ``user_id item_id item_id ...`` (0-based remapped ids; a user may
have no items on a line). ``user_list.txt`` / ``item_list.txt``: header ``org_id remap_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsparse.data._lines import numbered_lines, parse_int
from recsparse.data.errors import DataFormatError


def read_interactions(path: str | Path) -> pl.DataFrame:
    """Read one LightGCN interaction file into a long frame ``(user_id: i64, item_id: i64)``.

    Errors (file:line): non-integer or negative id, a user on two lines, the same item twice for a user, truncation.
    """
    path = Path(path)
    users: list[int] = []
    items: list[int] = []
    seen_users: dict[int, int] = {}
    for n, line in numbered_lines(path):
        tokens = line.split()
        if not tokens:
            raise DataFormatError(path, n, "empty line (expected 'user_id item_id ...')")
        u = parse_int(path, n, tokens[0], "user id")
        if u in seen_users:
            raise DataFormatError(path, n, f"duplicate user id {u} (first on line {seen_users[u]})")
        seen_users[u] = n
        row = [parse_int(path, n, t, "item id") for t in tokens[1:]]
        if len(set(row)) != len(row):
            dup = next(i for i in row if row.count(i) > 1)
            raise DataFormatError(path, n, f"item id {dup} listed twice for user {u}")
        users.extend([u] * len(row))
        items.extend(row)
    return pl.DataFrame({"user_id": np.asarray(users, dtype=np.int64), "item_id": np.asarray(items, dtype=np.int64)})


def read_id_list(path: str | Path) -> pl.DataFrame:
    """Read ``user_list.txt`` / ``item_list.txt``: header ``org_id remap_id``; remap ids must be unique."""
    path = Path(path)
    org: list[str] = []
    remap: list[int] = []
    seen: dict[int, int] = {}
    for n, line in numbered_lines(path):
        parts = line.split()
        if n == 1:
            if parts != ["org_id", "remap_id"]:
                raise DataFormatError(path, 1, f"header must be 'org_id remap_id', got {line!r}")
            continue
        if len(parts) != 2:
            raise DataFormatError(path, n, f"expected 2 columns (org_id remap_id), got {len(parts)}")
        r = parse_int(path, n, parts[1], "remap_id")
        if r in seen:
            raise DataFormatError(path, n, f"duplicate remap_id {r} (first on line {seen[r]})")
        seen[r] = n
        org.append(parts[0])
        remap.append(r)
    return pl.DataFrame({"org_id": org, "remap_id": np.asarray(remap, dtype=np.int64)})


@dataclass(frozen=True)
class ImplicitFeedback:
    """A user–item implicit-feedback split. Frames are long ``(user_id, item_id)``; ids are dense in [0, n)."""

    name: str
    train: pl.DataFrame
    test: pl.DataFrame
    num_users: int
    num_items: int

    def counts(self) -> dict[str, int]:
        return {"users": self.num_users, "items": self.num_items,
                "train_interactions": self.train.height, "test_interactions": self.test.height}


def load_lightgcn(folder: str | Path, name: str | None = None) -> ImplicitFeedback:
    folder = Path(folder)
    train = read_interactions(folder / "train.txt")
    test = read_interactions(folder / "test.txt")
    n_users = n_items = 0
    if (folder / "user_list.txt").is_file():
        n_users = read_id_list(folder / "user_list.txt").height
    if (folder / "item_list.txt").is_file():
        n_items = read_id_list(folder / "item_list.txt").height
    both = pl.concat([train, test])
    n_users = max(n_users, int(both["user_id"].max() or 0) + 1)
    n_items = max(n_items, int(both["item_id"].max() or 0) + 1)
    return ImplicitFeedback(name or folder.name, train, test, n_users, n_items)
