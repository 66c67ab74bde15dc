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


def read_interactions(path: str | Path, num_users: int | None = None, num_items: int | None = None,
                      source: str = "") -> pl.DataFrame:
    """Read one LightGCN interaction file into a long frame ``(user_id: i64, item_id: i64)``.

    Errors (file:line): non-integer, negative or int64-overflowing id, an id ``>= num_users`` / ``num_items`` (the
    declared catalogue; ``source`` says where it was declared), a user on two lines, the same item twice for a
    user, truncation.
    """
    path = Path(path)
    users: list[int] = []
    items: list[int] = []
    seen_users: dict[int, int] = {}
    for n, line in numbered_lines(path):
        tokens = line.split()
        if not tokens:
            raise DataFormatError(path, n, "empty line (expected 'user_id item_id ...')")
        u = parse_int(path, n, tokens[0], "user id", num_users, f"user_list.txt lists {num_users} users")
        if u in seen_users:
            raise DataFormatError(path, n, f"duplicate user id {u} (first on line {seen_users[u]})")
        seen_users[u] = n
        row = [parse_int(path, n, t, "item id", num_items, f"item_list.txt lists {num_items} items")
               for t in tokens[1:]]
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
    if remap and max(remap) >= len(remap):  # remap ids are the dense row ids 0..n-1 of the catalogue
        bad = max(remap)
        raise DataFormatError(path, seen[bad], f"remap_id {bad} but only {len(remap)} ids are listed "
                                               f"(remap ids must be 0..{len(remap) - 1})")
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


# Without user_list/item_list the catalogue is max id + 1; ids are dense remapped ids in this format, so a
# catalogue far larger than the ids seen is a corrupt id (999999999999 would ask for terabytes of table rows).
SPARSE_IDS_FACTOR, SPARSE_IDS_SLACK = 10, 10_000


def load_lightgcn(folder: str | Path, name: str | None = None) -> ImplicitFeedback:
    """Read ``train.txt`` / ``test.txt``; ``user_list.txt`` / ``item_list.txt``, when present, declare the
    catalogue and every id must fall inside it (file:line of the first that does not)."""
    folder = Path(folder)
    declared = {}
    for side in ("user", "item"):
        p = folder / f"{side}_list.txt"
        declared[side] = read_id_list(p).height if p.is_file() else None
    train = read_interactions(folder / "train.txt", declared["user"], declared["item"])
    test = read_interactions(folder / "test.txt", declared["user"], declared["item"])
    n = {}
    for side in ("user", "item"):
        col = f"{side}_id"
        ids = pl.concat([train[col], test[col]])
        n[side] = declared[side] if declared[side] is not None else int(ids.max() or 0) + 1
        if declared[side] is None and n[side] > SPARSE_IDS_FACTOR * ids.n_unique() + SPARSE_IDS_SLACK:
            _reject_sparse_id(folder, side, n[side] - 1, ids.n_unique())
    return ImplicitFeedback(name or folder.name, train, test, n["user"], n["item"])


def _reject_sparse_id(folder: Path, side: str, max_id: int, distinct: int) -> None:
    for fname in ("train.txt", "test.txt"):
        for lineno, line in numbered_lines(folder / fname):
            tokens = line.split()
            if str(max_id) in (tokens[:1] if side == "user" else tokens[1:]):
                raise DataFormatError(folder / fname, lineno,
                                      f"{side} id {max_id} would make a catalogue of {max_id + 1} {side}s for "
                                      f"{distinct} distinct ids; ids must be dense 0-based remapped ids (or "
                                      f"declare the catalogue in {side}_list.txt)")
    raise DataFormatError(folder / "train.txt", None, f"{side} id {max_id} would make a catalogue of {max_id + 1} "
                                                      f"{side}s for {distinct} distinct ids")
